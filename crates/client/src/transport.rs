//! The client side of the instance socket: a Unix domain socket, or a named pipe on Windows.

use std::io;
use std::path::Path;

pub use imp::{Stream, connect};

/// Errors that mean "nobody is listening (yet)", worth retrying while a daemon starts.
pub fn is_not_running(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    ) || imp::is_busy(e)
}

#[cfg(unix)]
mod imp {
    use super::*;

    pub type Stream = tokio::net::UnixStream;

    pub async fn connect(path: &Path) -> io::Result<Stream> {
        tokio::net::UnixStream::connect(path).await
    }

    pub fn is_busy(_e: &io::Error) -> bool {
        false
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeClient};

    pub type Stream = NamedPipeClient;

    /// ERROR_PIPE_BUSY: every instance of the pipe is taken; the server makes a new one soon.
    const ERROR_PIPE_BUSY: i32 = 231;

    pub async fn connect(path: &Path) -> io::Result<Stream> {
        ClientOptions::new().open(path.as_os_str())
    }

    pub fn is_busy(e: &io::Error) -> bool {
        e.raw_os_error() == Some(ERROR_PIPE_BUSY)
    }
}
