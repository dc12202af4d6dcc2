//! The systemd notify protocol (READY=1, RELOADING=1, STOPPING=1, STATUS=, WATCHDOG=1).
//!
//! [`take_service_env`] reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID once, at the very
//! start of `main` while the process is still single-threaded, and removes them from the
//! environment, so that no child process the daemon ever starts inherits them and talks to
//! systemd in the daemon's name.

use std::time::Duration;

/// The service manager's channel, if the daemon was started with one.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<String>,
    watchdog: Option<Duration>,
}

/// Takes the notify variables out of the environment. Call before any thread is started.
pub fn take_service_env() -> Notifier {
    let socket = std::env::var("NOTIFY_SOCKET").ok();
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid_ok = match std::env::var("WATCHDOG_PID") {
        Ok(pid) => pid.trim() == std::process::id().to_string(),
        Err(_) => true,
    };
    let watchdog = usec
        .and_then(|u| u.trim().parse::<u64>().ok())
        .filter(|u| *u > 0 && pid_ok)
        .map(Duration::from_micros);
    imp::remove_vars();
    Notifier { socket, watchdog }
}

impl Notifier {
    pub fn is_active(&self) -> bool {
        self.socket.is_some()
    }

    /// Half the watchdog timeout, as systemd recommends, when a watchdog is armed.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
            .filter(|_| self.socket.is_some())
            .map(|w| w / 2)
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
        #[cfg(windows)]
        super::winsvc::report_running();
    }

    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            imp::monotonic_usec()
        ));
    }

    pub fn stopping(&self) {
        self.stopping_within(Duration::from_secs(30));
    }

    /// Stopping, done within `grace` (the Windows SCM is told to wait that long, plus a margin).
    pub fn stopping_within(&self, grace: Duration) {
        self.send("STOPPING=1\nSTATUS=stopping");
        #[cfg(windows)]
        super::winsvc::report_stop_pending(grace + Duration::from_secs(5));
        #[cfg(not(windows))]
        let _ = grace;
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, msg: &str) {
        if let Some(socket) = &self.socket
            && let Err(e) = imp::send(socket, msg)
        {
            tracing::warn!(error = %e, socket, "cannot notify the service manager");
        }
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    pub fn remove_vars() {
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            // SAFETY: called from `main` before the async runtime or any other thread starts
            // (see `take_service_env`), so nothing can read the environment concurrently.
            unsafe { std::env::remove_var(var) };
        }
    }

    pub fn send(socket: &str, msg: &str) -> std::io::Result<()> {
        let addr = match socket.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
            None => SocketAddr::from_pathname(socket)?,
        };
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
        Ok(())
    }

    pub fn monotonic_usec() -> u128 {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u128 * 1_000_000 + t.tv_nsec() as u128 / 1_000)
            .unwrap_or(0)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub fn remove_vars() {}

    pub fn send(_socket: &str, _msg: &str) -> std::io::Result<()> {
        Ok(())
    }

    pub fn monotonic_usec() -> u128 {
        0
    }
}
