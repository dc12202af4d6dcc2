//! Opening and using a port. A virtio-serial port has no sessions: while no host process holds
//! the host end, `read` returns 0 at once (not an end of file) and a write would block. qemu-ga
//! sleeps 100 ms and retries; here the Linux driver's SIGIO (raised when the host connects,
//! disconnects or sends) wakes the reader, so an agent with no host costs no CPU at all.

use std::io;
use std::path::Path;
use std::time::Duration;

/// What reading a port found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// This many bytes from the host.
    Data(usize),
    /// A host opened its end (nothing sent yet).
    HostArrived,
    /// The host closed its end; the next one starts afresh.
    HostLeft,
}

/// How long a reply may wait for the host to take it before it is dropped (the host left).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(unix)]
mod imp {
    use super::*;
    use majordomo_platform::guest::async_file;
    use std::fs::{File, OpenOptions};
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    use tokio::io::unix::AsyncFd;
    use tokio::signal::unix::{Signal, SignalKind, signal};

    pub struct Port {
        fd: AsyncFd<File>,
        /// The driver's host-arrival signal; `None` (a tty, or no SIGIO) → a slow retry.
        sigio: Option<Signal>,
        /// Whether a host holds the other end, as far as the last read told.
        host: bool,
    }

    impl Port {
        pub fn open(path: &Path) -> io::Result<Port> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
                .open(path)?;
            #[cfg(target_os = "linux")]
            let sigio = {
                // The handler first: SIGIO's default action ends the process.
                match signal(SignalKind::io()) {
                    Ok(s) => match majordomo_platform::guest::notify_sigio(file.as_fd()) {
                        Ok(()) => Some(s),
                        Err(e) => {
                            tracing::debug!(error = %e, "no SIGIO on the port; retrying reads every second");
                            None
                        }
                    },
                    Err(_) => None,
                }
            };
            #[cfg(not(target_os = "linux"))]
            let sigio: Option<Signal> = {
                let _ = (signal, SignalKind::io, file.as_fd());
                None
            };
            if nix::unistd::isatty(&file).unwrap_or(false) {
                raw_tty(&file);
            }
            Ok(Port {
                fd: async_file(file)?,
                sigio,
                host: false,
            })
        }

        /// Reads some bytes, waiting (without polling) while no host is connected.
        pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            loop {
                if let Event::Data(n) = self.next(buf).await? {
                    return Ok(n);
                }
            }
        }

        /// The next thing that happens on the port: bytes from the host, a host arriving
        /// (it holds the host end and has sent nothing yet) or the host leaving. While no host
        /// is connected this sleeps until the driver's SIGIO, without polling.
        pub async fn next(&mut self, buf: &mut [u8]) -> io::Result<Event> {
            loop {
                if !self.host {
                    // Unknown or absent: a read tells (0 = nobody holds the host end).
                    match self.fd.get_ref().read(buf) {
                        Ok(0) => {
                            self.host_absent().await;
                            self.reregister()?;
                            continue;
                        }
                        Ok(n) => {
                            self.host = true;
                            return Ok(Event::Data(n));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.host = true;
                            return Ok(Event::HostArrived);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                let mut guard = self.fd.readable().await?;
                let closed = guard.ready().is_read_closed();
                match guard.try_io(|f| f.get_ref().read(buf)) {
                    Ok(Ok(0)) => {
                        drop(guard);
                        self.host = false;
                        self.reregister()?;
                        return Ok(Event::HostLeft);
                    }
                    Ok(Ok(n)) => {
                        // A short read took all there was: wait for the next edge instead of
                        // a read that would only say EAGAIN (a syscall saved per request;
                        // a VM exit under emulation). Data that came meanwhile raised a newer
                        // edge, which this does not clear.
                        if n < buf.len() {
                            guard.clear_ready();
                        }
                        return Ok(Event::Data(n));
                    }
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => {
                        // tokio keeps a hang-up (reported while no host was connected) sticky;
                        // a host is here now, so start from the port's current state.
                        if closed {
                            self.reregister()?;
                        }
                    }
                }
            }
        }

        fn reregister(&mut self) -> io::Result<()> {
            // A placeholder registration is not needed: take the file out by replacing the
            // AsyncFd with one for a duplicate descriptor, then drop the old registration.
            let dup = self.fd.get_ref().try_clone()?;
            let old = std::mem::replace(&mut self.fd, async_file(dup)?);
            drop(old.into_inner());
            Ok(())
        }

        async fn host_absent(&mut self) {
            match &mut self.sigio {
                // No timer: tokio's listener was registered before the port's first read, so a
                // SIGIO raised between that read and this wait is still seen here.
                Some(s) => {
                    s.recv().await;
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }

        /// Writes all of `data`, or fails after [`WRITE_TIMEOUT`] (the host went away).
        pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
            // The usual case first: the whole reply in one write, no timer armed.
            match self.fd.get_ref().write(data) {
                Ok(n) if n == data.len() => return Ok(()),
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
            while !data.is_empty() {
                let mut guard = match tokio::time::timeout_at(deadline, self.fd.writable()).await {
                    Ok(g) => g?,
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no host took the reply",
                        ));
                    }
                };
                match guard.try_io(|f| f.get_ref().write(data)) {
                    Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(Ok(n)) => data = &data[n..],
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => {
                        // Host absent: the driver reports writable yet EAGAIN; retry gently.
                        if tokio::time::Instant::now() >= deadline {
                            return Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "no host took the reply",
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            Ok(())
        }
    }

    fn raw_tty(file: &File) {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        if let Ok(mut t) = tcgetattr(file) {
            cfmakeraw(&mut t);
            let _ = tcsetattr(file, SetArg::TCSANOW, &t);
        }
    }
}

#[cfg(windows)]
mod imp {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::io::{Read, Write};
    use std::sync::Arc;
    use tokio::sync::mpsc;

    /// The vioserial device opened as a file; a blocking reader thread feeds a channel (the
    /// driver's `\\.\Global\` device has no readiness to wait on from tokio).
    pub struct Port {
        file: Arc<File>,
        rx: mpsc::Receiver<io::Result<Vec<u8>>>,
        pending: Vec<u8>,
    }

    impl Port {
        pub fn open(path: &Path) -> io::Result<Port> {
            let file = Arc::new(OpenOptions::new().read(true).write(true).open(path)?);
            let (tx, rx) = mpsc::channel(4);
            let reader = file.clone();
            std::thread::Builder::new()
                .name("guest-port".into())
                .spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let r = (&*reader).read(&mut buf);
                        let msg = match r {
                            // No host: the driver returns at once; wait before asking again.
                            Ok(0) => {
                                std::thread::sleep(Duration::from_millis(500));
                                continue;
                            }
                            Ok(n) => Ok(buf[..n].to_vec()),
                            Err(e) => Err(e),
                        };
                        let failed = msg.is_err();
                        if tx.blocking_send(msg).is_err() || failed {
                            return;
                        }
                    }
                })?;
            Ok(Port {
                file,
                rx,
                pending: Vec::new(),
            })
        }

        pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pending.is_empty() {
                match self.rx.recv().await {
                    Some(Ok(v)) => self.pending = v,
                    Some(Err(e)) => return Err(e),
                    None => return Err(io::ErrorKind::BrokenPipe.into()),
                }
            }
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            Ok(n)
        }

        /// As on Linux; the vioserial driver does not tell a host's arrival or departure
        /// apart from silence, so only data is reported.
        pub async fn next(&mut self, buf: &mut [u8]) -> io::Result<Event> {
            self.read(buf).await.map(Event::Data)
        }

        pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
            let file = self.file.clone();
            let data = data.to_vec();
            let job = tokio::task::spawn_blocking(move || (&*file).write_all(&data));
            match tokio::time::timeout(WRITE_TIMEOUT, job).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(io::Error::other(e)),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no host took the reply",
                )),
            }
        }
    }
}

pub use imp::Port;
