//! Wire types and codecs of majordomo's local socket.
//!
//! This crate performs no I/O. It defines what travels over the instance socket (a Unix domain
//! socket, or a named pipe on Windows): newline-delimited JSON requests and replies, the line
//! framing codec, and the compatibility aliases accepted from older clients.
//!
//! Every line a client sends is one JSON object. Requests carry an optional `id` (any JSON
//! scalar, echoed in the reply) and a `cmd`:
//!
//! ```json
//! {"id":1,"cmd":"status"}
//! {"id":1,"ok":{"pid":4242,"instance":"default",...}}
//! {"id":2,"cmd":"nope"}
//! {"id":2,"error":{"code":"unknown_command","message":"..."}}
//! ```
#![forbid(unsafe_code)]

pub mod bus;
pub mod codec;
pub mod contract;
pub mod control;
pub mod discovery;
pub mod event;
pub mod guest;
pub mod http;
pub mod metric;
pub mod monitor;
pub mod nats;
pub mod pipeline;
pub mod scheduler;
pub mod schema;
pub mod supervisor;

pub use codec::{FrameError, LineCodec};
pub use contract::{Cmd, CommandDoc, Kind, NoArgs};
pub use control::*;
pub use event::Event;

/// The protocol version a daemon speaks; bumped on incompatible changes to the wire format.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default limit on one line (one frame), in bytes, newline excluded.
pub const DEFAULT_MAX_LINE: usize = 1024 * 1024;
