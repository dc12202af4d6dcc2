//! Resource limits of the daemon process.

/// Raises the soft limit on open files to the hard limit, so that the bus can hold its
/// `[control] max_connections` (10,000 by default) where the soft limit is 1024. Returns the
/// limit in force afterwards, or `None` where there is no such limit (Windows).
#[cfg(unix)]
pub fn raise_nofile() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!(soft, hard, error = %e, "could not raise the open-file limit");
            return Some(soft);
        }
        return Some(hard);
    }
    Some(soft)
}

#[cfg(not(unix))]
pub fn raise_nofile() -> Option<u64> {
    None
}
