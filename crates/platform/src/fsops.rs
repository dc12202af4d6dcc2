//! File-system operations the pipeline's guarantees rest on, one function per operation with a
//! `#[cfg] mod imp` per OS: rename without replacing, durable folder entries, free space, and
//! killing a process tree.

use std::io;
use std::path::Path;

/// Renames `from` to `to` atomically, failing with `AlreadyExists` instead of replacing `to`.
///
/// Linux: `renameat2(RENAME_NOREPLACE)`, falling back to link + unlink on file systems that do
/// not support the flag. Other Unix: link + unlink (a hard link never replaces). Windows:
/// `MoveFileExW` without `MOVEFILE_REPLACE_EXISTING`, with `MOVEFILE_WRITE_THROUGH`.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    imp::rename_noreplace(from, to)
}

/// Makes the entries of folder `dir` (creations, renames) durable: `fsync` on the folder (Unix).
/// On Windows renames are written through by [`rename_noreplace`]; this is a no-op there.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    imp::sync_dir(dir)
}

/// Flushes a file's data to stable storage.
pub fn sync_file(path: &Path) -> io::Result<()> {
    imp::sync_file(path)
}

/// Bytes available to this user on the file system holding `path`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    imp::free_space(path)
}

/// A stable identity of a file while it exists: (device, inode) on Unix, the creation time on
/// Windows (the file index needs a handle-based call).
pub fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    imp::file_id(meta)
}

/// Prepares a child command to be the leader of its own process group (Unix), so that
/// [`kill_tree`] reaches every process it started.
pub fn own_process_group(cmd: &mut tokio::process::Command) {
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(not(unix))]
    let _ = cmd;
}

/// Kills the process `pid` and everything it started: SIGKILL to its process group (Unix),
/// `taskkill /T /F` (Windows).
pub fn kill_tree(pid: u32) {
    imp::kill_tree(pid)
}

#[cfg(unix)]
mod imp {
    use std::io;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            use nix::errno::Errno;
            use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
            match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
                Ok(()) => return Ok(()),
                // The file system does not support the flag: fall back to link + unlink.
                Err(Errno::EINVAL) | Err(Errno::ENOSYS) | Err(Errno::EOPNOTSUPP) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        std::fs::hard_link(from, to)?;
        // Both names exist now; removing the old one completes the move. A crash in between
        // leaves two names for one inode, which recovery treats as the new name.
        std::fs::remove_file(from)
    }

    pub fn sync_dir(dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    pub fn sync_file(path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }

    pub fn free_space(path: &Path) -> io::Result<u64> {
        let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        #[allow(clippy::unnecessary_cast)]
        Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    pub fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
        (meta.dev(), meta.ino())
    }

    pub fn kill_tree(pid: u32) {
        let Ok(pid) = i32::try_from(pid) else {
            return;
        };
        let pgid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(windows)]
mod imp {
    use std::io;
    use std::os::windows::ffi::OsStrExt;
    use std::os::windows::fs::MetadataExt;
    use std::path::Path;

    use windows_sys::Win32::Storage::FileSystem::{
        GetDiskFreeSpaceExW, MOVEFILE_WRITE_THROUGH, MoveFileExW,
    };

    fn wide(p: &Path) -> Vec<u16> {
        p.as_os_str().encode_wide().chain(Some(0)).collect()
    }

    pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
        let (f, t) = (wide(from), wide(to));
        // SAFETY: both buffers are NUL-terminated UTF-16 strings that outlive the call.
        let ok = unsafe { MoveFileExW(f.as_ptr(), t.as_ptr(), MOVEFILE_WRITE_THROUGH) };
        if ok == 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn sync_dir(_dir: &Path) -> io::Result<()> {
        Ok(())
    }

    pub fn sync_file(path: &Path) -> io::Result<()> {
        // FlushFileBuffers needs write access; a read-only file cannot be flushed this way.
        match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(f) => f.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn free_space(path: &Path) -> io::Result<u64> {
        let p = wide(path);
        let mut avail: u64 = 0;
        // SAFETY: `p` is NUL-terminated; `avail` is a valid out pointer; the other outputs may be null.
        let ok = unsafe {
            GetDiskFreeSpaceExW(
                p.as_ptr(),
                &mut avail,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(avail)
        }
    }

    pub fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
        (meta.creation_time(), 0)
    }

    pub fn kill_tree(pid: u32) {
        let _ = std::process::Command::new("taskkill")
            .args(["/T", "/F", "/PID", &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
