//! The scheduler: `[[job]]` (cron, `every`, `at`, in the job's time zone), run exactly once per
//! occurrence by the daemon or by the OS backup task (`majordomo check`), the shared state
//! store and the named cross-process locks programs use. Its jobs' notifications go to the hub
//! as notices, which the monitor's notifiers deliver.
//!
//! `plan` is the pure scheduling core (property-tested, injected clock). `locks` and `store`
//! work without the daemon: the CLI uses them directly. `record` is the durable run record that,
//! with the job's named lock, decides who runs an occurrence. `offline` is the catch-up that the
//! binary wires into `majordomo check`.
#![deny(unsafe_code)]

pub mod config;
pub mod history;
pub mod locks;
pub mod offline;
pub mod plan;
pub mod record;
pub mod runner;
pub mod store;
mod subsystem;

pub use config::{JobConfig, SchedulerConfig, SchedulerSection, SharedJob, validate};
pub use subsystem::Scheduler;
