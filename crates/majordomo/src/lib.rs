//! majordomo: one small binary that gives any application its background-service layer.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of these modules.
#![deny(unsafe_code)]

pub mod bus;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod hub;
pub mod lifecycle;
pub mod lock;
pub mod logging;
pub mod monitor;
pub mod paths;
pub mod pipeline;
#[allow(unsafe_code)]
pub mod platform;
pub mod service;
pub mod supervisor;
pub mod watch;
