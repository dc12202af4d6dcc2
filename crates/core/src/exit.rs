//! Process exit codes, sysexits-style where one fits. Every verb and `run` use these.

/// Success.
pub const OK: u8 = 0;
/// A runtime failure, including "the instance is not running".
pub const FAILURE: u8 = 1;
/// Bad usage or an invalid config (`EX_USAGE`).
pub const USAGE: u8 = 64;
/// No service manager was found (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: u8 = 69;
/// Missing rights, e.g. a system install as a normal user (`EX_NOPERM`).
pub const NOPERM: u8 = 77;
