//! Named cross-process locks: `<state>/locks/<name>.lock`, held with the OS file lock
//! (`flock` on Unix, `LockFileEx` on Windows, through std's `File::lock`). The lock is the open
//! file: it is released when the holder closes it or dies, so a crashed holder never leaves a
//! stale lock. The same locks serve `majordomo lock`, jobs' `lock`, the socket's `lock.acquire`
//! and the run claims of jobs (`job.<name>`), with or without the daemon running.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::valid_name;

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct NamedLock {
    file: File,
    name: String,
}

impl NamedLock {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NamedLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

pub fn lock_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("locks")
}

fn open(state_dir: &Path, name: &str) -> io::Result<File> {
    if !valid_name(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid lock name; use 1-64 of a-z, A-Z, 0-9, '_', '-', '.'"),
        ));
    }
    let dir = lock_dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create the lock folder {}: {e}", dir.display()),
        )
    })?;
    let path = dir.join(format!("{name}.lock"));
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))
}

fn held(mut file: File, name: &str) -> NamedLock {
    // Who holds it, for people looking at the file; the lock itself is what counts.
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    NamedLock {
        file,
        name: name.to_string(),
    }
}

/// Takes the lock if it is free; `None` when someone holds it.
pub fn try_acquire(state_dir: &Path, name: &str) -> io::Result<Option<NamedLock>> {
    let file = open(state_dir, name)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(held(file, name))),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Takes the lock, waiting until it is free (`wait` = `None`) or at most `wait`; `None` when
/// it was still held at the end. Blocks the thread.
pub fn acquire(
    state_dir: &Path,
    name: &str,
    wait: Option<Duration>,
) -> io::Result<Option<NamedLock>> {
    let Some(wait) = wait else {
        let file = open(state_dir, name)?;
        file.lock()?;
        return Ok(Some(held(file, name)));
    };
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(l) = try_acquire(state_dir, name)? {
            return Ok(Some(l));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// [`acquire`] for async code: polls without blocking a runtime thread; cancellable by dropping.
pub async fn acquire_async(
    state_dir: &Path,
    name: &str,
    wait: Option<Duration>,
) -> io::Result<Option<NamedLock>> {
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(l) = try_acquire(state_dir, name)? {
            return Ok(Some(l));
        }
        let now = tokio::time::Instant::now();
        if let Some(d) = deadline {
            if now >= d {
                return Ok(None);
            }
            pause = pause.min(d - now);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_excludes_others_until_dropped() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = try_acquire(dir.path(), "x").expect("io").expect("free");
        assert!(try_acquire(dir.path(), "x").expect("io").is_none());
        assert!(
            acquire(dir.path(), "x", Some(Duration::from_millis(30)))
                .expect("io")
                .is_none()
        );
        assert!(try_acquire(dir.path(), "y").expect("io").is_some());
        drop(a);
        assert!(try_acquire(dir.path(), "x").expect("io").is_some());
        assert!(try_acquire(dir.path(), "../evil").is_err());
    }
}
