//! The `pipeline` subsystem: drop folders whose files are taken when complete, converted,
//! queued on disk and uploaded, with nothing lost and nothing sent under two keys.
//!
//! Per `[[pipeline]]` three stages run, linked by bounded channels and by the work folder:
//! - **intake** (`intake.rs`) watches (or polls) the folders, waits until a file has kept its
//!   size, mtime and file id for `settle`, and claims it by a durable rename into the work folder,
//!   where it gets its ULID;
//! - **convert** (`convert.rs`) runs the converter (`concurrency` at once) and queues the output
//!   durably, then applies the input's `post_action`;
//! - **upload** (`schedule.rs`) sends queued items through their `[[uploader]]` (`upload.rs`),
//!   retries transient failures with capped exponential backoff and full jitter, and
//!   dead-letters permanent ones.
//!
//! Every state is a file name (`item.rs`); every change is one rename (`store.rs`). At start-up
//! the work folder is read back (`recover.rs`): items left `processing` return to `queued`,
//! half-written conversions are redone, inputs whose item is already queued get their post
//! action. `pipe.rs` opens one pipeline and starts its stages, `subsystem.rs` runs them all
//! under the lifecycle, `commands.rs` answers the `queue.*` socket commands and `events.rs`
//! logs what the pipeline tells the hub.
#![forbid(unsafe_code)]

mod commands;
pub mod config;
mod convert;
mod events;
mod intake;
pub mod item;
mod pipe;
mod recover;
mod schedule;
pub mod store;
mod subsystem;
pub mod upload;

pub use config::{PipelineConfig, PipelineSection, UploaderConfig, validate};
pub use pipe::is_temp_name;
pub use subsystem::Pipeline;
