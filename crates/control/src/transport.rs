//! The server side of the instance socket: a Unix domain socket with file permissions and peer
//! credentials, or a Windows named pipe. Platform code sits behind [`bind`] and [`Listener`].

use std::io;
use std::path::{Path, PathBuf};

pub use imp::{Conn, Listener, bind};

/// Who connected, as far as the OS tells (the session's type).
pub use majordomo_bus::Peer;

/// Socket options from the config.
#[derive(Debug, Clone)]
pub struct BindOptions {
    pub path: PathBuf,
    pub mode: u32,
    pub group: Option<String>,
}

#[cfg(unix)]
mod imp {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub type Conn = tokio::net::UnixStream;

    /// Longest path a Unix socket address holds (sun_path less the terminating NUL).
    const MAX_SOCKET_PATH: usize = 107;

    pub struct Listener {
        inner: tokio::net::UnixListener,
        path: PathBuf,
        /// (device, inode) of the socket this listener made: only that file is ever removed.
        id: Option<(u64, u64)>,
    }

    /// Whether `path` is free for a socket: absent, or a socket (stale: the caller holds the
    /// instance lock). Anything else (a file, a folder, a symlink) is never replaced.
    fn free_for_socket(path: &Path) -> io::Result<()> {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            Ok(m) => {
                let what = if m.is_dir() {
                    "a folder"
                } else if m.file_type().is_symlink() {
                    "a symbolic link"
                } else {
                    "a file that is not a socket"
                };
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} is {what}; the daemon only ever replaces a socket. Move it away, or set [paths] socket to another path",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(annotate(e, path, "inspect")),
        }
    }

    fn file_id(path: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()))
    }

    /// Binds atomically: at a temporary name, permissions set, then renamed into place, so no
    /// client ever sees the socket with looser permissions. Any file already at `path` is stale
    /// (the caller holds the instance lock) and is replaced.
    pub async fn bind(opts: &BindOptions) -> io::Result<Listener> {
        let path = &opts.path;
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket path {} is {} bytes, more than a Unix socket allows ({MAX_SOCKET_PATH}); use a shorter --home or set [paths] socket",
                    path.display(),
                    path.as_os_str().len()
                ),
            ));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| annotate(e, dir, "create the socket folder"))?;
        }
        free_for_socket(path)?;
        let tmp = tmp_path(path);
        free_for_socket(&tmp)?;
        let _ = std::fs::remove_file(&tmp);
        let inner = tokio::net::UnixListener::bind(&tmp).map_err(|e| annotate(e, &tmp, "bind"))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(opts.mode))
            .map_err(|e| annotate(e, &tmp, "set permissions on"))?;
        if let Some(group) = &opts.group {
            let gid = nix::unistd::Group::from_name(group)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("unknown group {group:?} in [control] socket_group"),
                    )
                })?
                .gid;
            nix::unistd::chown(&tmp, None, Some(gid))
                .map_err(|e| annotate(io::Error::from(e), &tmp, "change the group of"))?;
        }
        // Checked again right before the rename, which would replace whatever is there.
        if let Err(e) = free_for_socket(path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, path)
            .map_err(|e| annotate(e, path, "move the socket into place at"))?;
        Ok(Listener {
            inner,
            id: file_id(path),
            path: path.clone(),
        })
    }

    fn tmp_path(path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.tmp", std::process::id()));
        path.with_file_name(name)
    }

    impl Listener {
        pub async fn accept(&mut self) -> io::Result<(Conn, Peer)> {
            let (conn, _) = self.inner.accept().await?;
            let peer = match conn.peer_cred() {
                Ok(c) => Peer {
                    via: "unix socket",
                    uid: Some(c.uid()),
                    pid: c.pid(),
                },
                Err(_) => Peer {
                    via: "unix socket",
                    ..Peer::default()
                },
            };
            Ok((conn, peer))
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            // Only the socket this listener made, never whatever took its place since.
            if self.id.is_some() && file_id(&self.path) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};

    pub type Conn = NamedPipeServer;

    pub struct Listener {
        next: NamedPipeServer,
        name: PathBuf,
    }

    /// Creates the first instance of the pipe; fails if another process already owns the name.
    pub async fn bind(opts: &BindOptions) -> io::Result<Listener> {
        let next = ServerOptions::new()
            .first_pipe_instance(true)
            .reject_remote_clients(true)
            .create(opts.path.as_os_str())
            .map_err(|e| annotate(e, &opts.path, "create the named pipe"))?;
        Ok(Listener {
            next,
            name: opts.path.clone(),
        })
    }

    impl Listener {
        pub async fn accept(&mut self) -> io::Result<(Conn, Peer)> {
            self.next.connect().await?;
            let fresh = ServerOptions::new()
                .reject_remote_clients(true)
                .create(self.name.as_os_str())?;
            let conn = std::mem::replace(&mut self.next, fresh);
            Ok((
                conn,
                Peer {
                    via: "named pipe",
                    ..Peer::default()
                },
            ))
        }
    }
}

fn annotate(e: io::Error, path: &Path, what: &str) -> io::Error {
    let hint = match e.kind() {
        io::ErrorKind::PermissionDenied => {
            "; run as a user who may write there, or use --user / --home DIR"
        }
        io::ErrorKind::AddrInUse => "; another process is listening there",
        _ => "",
    };
    io::Error::new(
        e.kind(),
        format!("cannot {what} {}: {e}{hint}", path.display()),
    )
}
