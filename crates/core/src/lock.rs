//! The instance lock: one running daemon per instance.
//!
//! An exclusive OS file lock (flock on Unix, LockFileEx on Windows) on `<instance>.lock`. The OS
//! drops it when the process dies, however it dies, so a lock left by a dead process is simply
//! taken over. The PID is written to a separate `<instance>.pid` file, because Windows forbids
//! reading a file another process holds locked.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "instance '{instance}' is already running (pid {pid}); stop it with `majordomo shutdown{flag}` or use another --instance"
    )]
    Held {
        instance: String,
        pid: String,
        flag: String,
    },
    #[error("cannot create the lock file {}: {source}; check that its folder is writable", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held for the daemon's lifetime; released on drop or process death.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    pid_file: PathBuf,
}

impl InstanceLock {
    pub fn acquire(instance: &str, lock_file: &Path, pid_file: &Path) -> Result<Self, LockError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, source }
        };
        if let Some(dir) = lock_file.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_file)
            .map_err(io(lock_file))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(pid_file)
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "unknown".into());
                return Err(LockError::Held {
                    instance: instance.to_string(),
                    pid,
                    flag: if instance == crate::layout::DEFAULT_INSTANCE {
                        String::new()
                    } else {
                        format!(" --instance {instance}")
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(lock_file)(e)),
        }
        // We own the instance now: whatever pid file is there is stale.
        let mut pf = File::create(pid_file).map_err(io(pid_file))?;
        writeln!(pf, "{}", std::process::id()).map_err(io(pid_file))?;
        Ok(Self {
            _file: file,
            pid_file: pid_file.to_path_buf(),
        })
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}
