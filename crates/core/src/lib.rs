//! majordomo's core: what every subsystem shares and nothing more.
//!
//! Config units and the spanned loader (generic over the application's top-level config), the
//! instance layout and lock, the lifecycle that starts, reloads and stops subsystems, the hub of
//! internal events and the registry of socket commands. It never names a subsystem: the
//! application composes them (see `ARCHITECTURE.md`).
#![deny(unsafe_code)]

pub mod backoff;
pub mod commands;
pub mod exit;
pub mod gauges;
pub mod hub;
pub mod jsonl;
pub mod layout;
pub mod lifecycle;
pub mod load;
pub mod lock;
pub mod procs;
pub mod units;

pub use commands::{Commands, ConnScope, Who};
pub use hub::Hub;
pub use layout::{Layout, Mode, PathsConfig};
pub use lifecycle::{BoxFuture, Change, Ctx, DaemonHandle, Registry, Request, Subsystem};
pub use load::{Loaded, Origin, Override, Problem, Problems, Root, Section, Source};
pub use units::{Dur, Secret, Size};
