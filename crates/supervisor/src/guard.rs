//! The guard helper process now lives in core (`majordomo_core::procs::guard`), shared by
//! every subsystem that starts processes.

pub use majordomo_core::procs::guard::main;
