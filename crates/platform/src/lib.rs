//! Operating-system specifics: signals, the service manager's notify protocol, and the
//! environment the daemon must not pass on. Each behind one function, with `#[cfg] mod imp`.

pub mod cgroup;
pub mod desktop;
mod disk;
#[cfg(windows)]
pub mod eventlog;
#[cfg(windows)]
pub mod folders;
pub mod fsops;
#[cfg(unix)]
pub mod guest;
mod limits;
pub mod memory;
mod notify;
pub mod process;
mod signals;
#[cfg(windows)]
pub mod winreg;
#[cfg(windows)]
pub mod winscm;
#[cfg(windows)]
pub mod winsvc;

pub use disk::disk_space;
pub use limits::raise_nofile;
pub use notify::{Notifier, take_service_env};
pub use signals::{Signal, Signals};

/// This machine's host name as the OS reports it ("" when it cannot be read).
pub fn host_name() -> String {
    #[cfg(unix)]
    {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    }
    #[cfg(not(unix))]
    {
        std::env::var("COMPUTERNAME").unwrap_or_default()
    }
}

/// Gives the heap's free pages back to the OS. glibc keeps what a large parse freed resident
/// (a config of 10,000 `[[job]]`s leaves about 70 MB behind); the daemon calls this after
/// loading a config. A no-op where the allocator is not glibc's.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's arenas to the kernel.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Caps glibc's malloc arenas at `n` (`M_ARENA_MAX`). glibc gives threads arenas of their
/// own (up to 8 per core), each keeping its own free pages resident; a daemon that runs on one
/// thread (`[daemon] threads = 1`) needs one. Call it before other threads start. A no-op
/// where the allocator is not glibc's.
pub fn limit_malloc_arenas(n: u32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of the allocator; before other threads
    // exist there is no allocation in flight to race with.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, n.clamp(1, i32::MAX as u32) as i32);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}

/// Whether stderr is connected to the systemd journal (JOURNAL_STREAM names its device:inode).
#[cfg(target_os = "linux")]
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    let Ok(var) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = var.split_once(':') else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}
