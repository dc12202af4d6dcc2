//! What the guest agent needs from the kernel beyond std: asynchronous notification on a
//! virtio-serial port (the driver raises SIGIO when the host connects, disconnects or sends
//! data), and the filesystem freeze/thaw/trim ioctls.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Asks the kernel to send SIGIO to this process when `fd` changes state (O_ASYNC + F_SETOWN).
/// Install a SIGIO handler first: its default action ends the process.
pub fn notify_sigio(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we borrow for the duration of the call; F_SETOWN takes an
    // int (our pid), F_GETFL/F_SETFL an int of flags. No memory is passed.
    unsafe {
        if nix::libc::fcntl(raw, nix::libc::F_SETOWN, nix::libc::getpid()) < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = nix::libc::fcntl(raw, nix::libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if nix::libc::fcntl(raw, nix::libc::F_SETFL, flags | nix::libc::O_ASYNC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

// <linux/fs.h>: FIFREEZE _IOWR('X', 119, int), FITHAW _IOWR('X', 120, int),
// FITRIM _IOWR('X', 121, struct fstrim_range).
#[cfg(target_os = "linux")]
const FIFREEZE: nix::libc::c_ulong = 0xC004_5877;
#[cfg(target_os = "linux")]
const FITHAW: nix::libc::c_ulong = 0xC004_5878;
#[cfg(target_os = "linux")]
const FITRIM: nix::libc::c_ulong = 0xC018_5879;

#[cfg(target_os = "linux")]
/// Freezes (`true`) or thaws (`false`) the filesystem that `fd` (its mount point, opened
/// read-only) belongs to.
pub fn fs_freeze(fd: BorrowedFd<'_>, freeze: bool) -> io::Result<()> {
    let req = if freeze { FIFREEZE } else { FITHAW };
    let mut arg: nix::libc::c_int = 0;
    // SAFETY: FIFREEZE/FITHAW read an int argument; we pass a pointer to a live local int.
    #[allow(clippy::useless_conversion)]
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), req as _, &mut arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(target_os = "linux")]
#[repr(C)]
struct FstrimRange {
    start: u64,
    len: u64,
    minlen: u64,
}

#[cfg(target_os = "linux")]
/// Discards unused blocks of the filesystem `fd` belongs to; returns the bytes trimmed.
pub fn fs_trim(fd: BorrowedFd<'_>, minimum: u64) -> io::Result<u64> {
    let mut range = FstrimRange {
        start: 0,
        len: u64::MAX,
        minlen: minimum,
    };
    // SAFETY: FITRIM reads and writes a struct fstrim_range, which `range` is (repr(C)).
    #[allow(clippy::useless_conversion)]
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), FITRIM as _, &mut range) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(range.len)
    }
}

/// Registers an owned file (a virtio-serial port or tty opened O_NONBLOCK) with tokio's reactor.
pub fn async_file(file: std::fs::File) -> io::Result<tokio::io::unix::AsyncFd<std::fs::File>> {
    // SAFETY: the AsyncFd owns the File, so the descriptor stays open and is not reused while
    // registered; it is deregistered before the File is closed when the AsyncFd drops.
    unsafe { tokio::io::unix::AsyncFd::register(file) }.map_err(io::Error::from)
}
