//! The black-box suite: one test binary, one shared harness (`common`), one module per area.
//! Every test spawns the real `majordomo` binary in a temporary `--home` and talks to it through
//! its real socket, files and CLI.
#[cfg(unix)]
mod common;

#[cfg(unix)]
mod bus;
#[cfg(unix)]
mod discovery;
#[cfg(unix)]
mod foundation;
#[cfg(target_os = "linux")]
mod guest;
#[cfg(target_os = "linux")]
mod guest_vm;
#[cfg(unix)]
mod hostile;
#[cfg(unix)]
mod http;
#[cfg(unix)]
mod integration;
mod layering;
#[cfg(unix)]
mod monitor;
#[cfg(unix)]
mod nats;
#[cfg(unix)]
mod pipeline;
#[cfg(unix)]
mod scheduler;
#[cfg(unix)]
mod service;
#[cfg(unix)]
mod supervisor;
