//! Process signals, as one stream of [`Signal`]s.

/// What the OS asked of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ctrl+C / SIGINT: drain; a second one forces exit.
    Interrupt,
    /// SIGTERM, or the console closing on Windows: drain.
    Terminate,
    /// SIGHUP: reload the config.
    Hangup,
}

pub use imp::Signals;

#[cfg(unix)]
mod imp {
    use super::Signal;
    use tokio::signal::unix::{SignalKind, signal};

    pub struct Signals {
        int: tokio::signal::unix::Signal,
        term: tokio::signal::unix::Signal,
        hup: tokio::signal::unix::Signal,
    }

    impl Signals {
        pub fn new() -> std::io::Result<Self> {
            Ok(Self {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
            })
        }

        pub async fn recv(&mut self) -> Signal {
            tokio::select! {
                _ = self.int.recv() => Signal::Interrupt,
                _ = self.term.recv() => Signal::Terminate,
                _ = self.hup.recv() => Signal::Hangup,
            }
        }
    }
}

#[cfg(windows)]
mod imp {
    use super::Signal;
    use tokio::signal::windows;

    pub struct Signals {
        c: windows::CtrlC,
        brk: windows::CtrlBreak,
        close: windows::CtrlClose,
        shutdown: windows::CtrlShutdown,
        /// The SCM's controls, when the service control manager runs the process.
        scm: Option<tokio::sync::mpsc::UnboundedReceiver<Signal>>,
    }

    impl Signals {
        pub fn new() -> std::io::Result<Self> {
            Ok(Self {
                c: windows::ctrl_c()?,
                brk: windows::ctrl_break()?,
                close: windows::ctrl_close()?,
                shutdown: windows::ctrl_shutdown()?,
                scm: crate::winsvc::take_controls(),
            })
        }

        pub async fn recv(&mut self) -> Signal {
            tokio::select! {
                _ = self.c.recv() => Signal::Interrupt,
                _ = self.brk.recv() => Signal::Interrupt,
                _ = self.close.recv() => Signal::Terminate,
                _ = self.shutdown.recv() => Signal::Terminate,
                Some(sig) = async {
                    match self.scm.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => sig,
            }
        }
    }
}
