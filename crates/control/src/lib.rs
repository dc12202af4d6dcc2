//! The control subsystem: the instance socket (a Unix domain socket, or a named pipe on
//! Windows).
//!
//! Owns the listener: binds it with the configured permissions, accepts connections, refuses
//! those over `[control] max_connections` or from users not allowed (peer credentials), and runs
//! the bus crate's protocol [`Session`] on each of the others. What a connection may say, and
//! every answer, belongs to the session; the control subsystem never reloads or stops the daemon
//! itself.
#![deny(unsafe_code)]

pub mod config;
pub mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use majordomo_bus::{Router, Session, SessionConfig};
use majordomo_core::lifecycle::{BoxFuture, Change, Ctx, Subsystem};
use majordomo_proto::{ErrorBody, ErrorCode, Reply};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tracing::Instrument;

pub use config::{ControlConfig, ControlSection, validate};
use transport::{BindOptions, Peer};

/// The control subsystem. Its connections share the bus [`Router`] the app creates once.
pub struct Control {
    router: Arc<Router>,
}

impl Control {
    pub fn new(router: Arc<Router>) -> Self {
        Self { router }
    }
}

fn session_config(c: &ControlConfig) -> SessionConfig {
    SessionConfig {
        token: c.token.clone(),
        max_line: c.max_line_bytes(),
    }
}

impl Subsystem for Control {
    type Config = ControlSection;

    fn name(&self) -> &'static str {
        "control"
    }

    fn change(&self, old: &ControlSection, new: &ControlSection) -> Change {
        let rebind = old.socket != new.socket
            || old.control.socket_mode != new.control.socket_mode
            || old.control.socket_group != new.control.socket_group;
        if rebind {
            Change::Restart
        } else if old.control != new.control {
            Change::Live
        } else {
            Change::None
        }
    }

    fn run(&self, ctx: Ctx<ControlSection>) -> BoxFuture {
        let router = self.router.clone();
        Box::pin(async move {
            let cfg = ctx.config.borrow().clone();
            let opts = BindOptions {
                path: ctx.layout().socket.clone(),
                mode: cfg.control.socket_mode_bits(),
                group: cfg.control.socket_group.clone(),
            };
            let mut listener = transport::bind(&opts).await.map_err(|e| e.to_string())?;
            tracing::info!(socket = %opts.path.display(), "listening");
            // Recorded beside the pid file: a CLI that cannot read the config still finds us.
            let record = ctx.layout().socket_record();
            let recorded = opts.path.as_os_str().as_encoded_bytes().to_vec();
            if let Err(e) = std::fs::write(&record, &recorded) {
                tracing::warn!(file = %record.display(), "cannot record the socket path: {e}");
            }
            // What the sessions read of [control], kept current.
            let (session_tx, session_rx) = watch::channel(Arc::new(session_config(&cfg.control)));
            {
                let mut config = ctx.config.clone();
                let token = ctx.token.clone();
                ctx.tracker.spawn(async move {
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => return,
                            changed = config.changed() => {
                                if changed.is_err() {
                                    return;
                                }
                                let next = session_config(&config.borrow_and_update().control);
                                session_tx.send_if_modified(|cur| {
                                    let differs = **cur != next;
                                    if differs {
                                        *cur = Arc::new(next);
                                    }
                                    differs
                                });
                            }
                        }
                    }
                });
            }
            let session = Session {
                commands: ctx.commands.clone(),
                daemon: ctx.daemon.clone(),
                router: router.clone(),
                instance: ctx.layout().instance.as_str().into(),
                config: session_rx,
                token: ctx.token.clone(),
                tracker: ctx.tracker.clone(),
            };
            ctx.ready();
            let open = Arc::new(AtomicUsize::new(0));
            loop {
                let accepted = tokio::select! {
                    _ = ctx.token.cancelled() => break,
                    r = listener.accept() => r,
                };
                let (conn, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let id = router.next_conn_id();
                let count = open.fetch_add(1, Ordering::Relaxed) + 1;
                let slot = Slot(open.clone());
                let span = tracing::debug_span!("conn", id, uid = peer.uid, pid = peer.pid);
                // The session's future is the connection's whole task (nothing around it holds
                // a second copy of the stream or the session).
                let cfg = ctx.config.borrow().clone();
                match refusal(count, &peer, &cfg.control) {
                    None => ctx
                        .tracker
                        .spawn(session.clone().serve(conn, id, peer, slot).instrument(span)),
                    Some(line) => ctx.tracker.spawn(async move {
                        let _slot = slot;
                        let mut conn = conn;
                        let _ = conn.write_all(&line).await;
                    }),
                };
            }
            // Forget the record unless a newer listener wrote its own meanwhile.
            if std::fs::read(&record).is_ok_and(|r| r == recorded) {
                let _ = std::fs::remove_file(&record);
            }
            Ok(())
        })
    }
}

/// Decrements the open-connection count however the connection ends.
struct Slot(Arc<AtomicUsize>);
impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a connection is not admitted (too many open, or a user that may not connect), as the
/// line to send it before closing; `None` admits it. `count` includes this connection.
fn refusal(count: usize, peer: &Peer, cfg: &ControlConfig) -> Option<Vec<u8>> {
    let refuse = |code, msg: String| {
        let mut line = Reply::error(None, ErrorBody::new(code, msg)).to_line();
        line.push(b'\n');
        line
    };
    // Beyond max_connections, a few reserved connections for the daemon's own user and root
    // (as databases keep for the superuser): a flood by others never locks the owner out.
    let reserved =
        count <= cfg.max_connections.saturating_add(RESERVED_FOR_OWNER) && is_owner(peer);
    if count > cfg.max_connections && !reserved {
        return Some(refuse(
            ErrorCode::Busy,
            format!(
                "too many connections ({} allowed by [control] max_connections); try again later",
                cfg.max_connections
            ),
        ));
    }
    if !peer_allowed(peer, cfg) {
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            "connection refused: user not allowed"
        );
        return Some(refuse(
            ErrorCode::Forbidden,
            format!(
                "uid {} may not use this instance; add it to [control] allowed_users",
                peer.uid.map(|u| u.to_string()).unwrap_or_default()
            ),
        ));
    }
    None
}

/// Connections beyond `max_connections` kept for the daemon's own user and root.
const RESERVED_FOR_OWNER: usize = 8;

/// Whether the peer is the daemon's own user or root (Unix); a named pipe's owner (Windows).
fn is_owner(peer: &Peer) -> bool {
    let Some(uid) = peer.uid else {
        return false;
    };
    #[cfg(unix)]
    {
        uid == 0 || uid == nix::unistd::geteuid().as_raw()
    }
    #[cfg(not(unix))]
    {
        let _ = uid;
        false
    }
}

fn peer_allowed(peer: &Peer, cfg: &ControlConfig) -> bool {
    let Some(uid) = peer.uid else {
        // Named pipes: access is decided by the pipe's security descriptor.
        return true;
    };
    #[cfg(unix)]
    {
        if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
            return true;
        }
        cfg.allowed_users.iter().any(|u| match u.parse::<u32>() {
            Ok(n) => n == uid,
            Err(_) => nix::unistd::User::from_name(u)
                .ok()
                .flatten()
                .is_some_and(|user| user.uid.as_raw() == uid),
        })
    }
    #[cfg(not(unix))]
    {
        let _ = (uid, cfg);
        true
    }
}
