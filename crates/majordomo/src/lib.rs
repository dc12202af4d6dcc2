//! majordomo: one small binary that gives any application its background-service layer.
//!
//! This crate is the application: it composes the subsystem crates (`app`), runs the main loop
//! (`daemon`) and the command line (`cli`). See `ARCHITECTURE.md` at the repository root.
#![deny(unsafe_code)]

pub mod app;
pub mod cli;
pub mod daemon;
pub mod logging;
pub mod watch;
