//! Every process the supervisor starts goes through core's [`Procs`] (shared with the pipeline's
//! converters): see `majordomo_core::procs`.

pub use majordomo_core::procs::{Procs, Spawned, find_executable};
