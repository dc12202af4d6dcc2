//! The control subsystem: the instance socket and its commands.
//!
//! Owns the listener and every client connection. A connection reads newline-delimited JSON,
//! answers each request in order, and is isolated from every other: a malformed line gets an
//! error reply and the connection stays usable; an over-long line gets an error and the
//! connection is closed; a client that sends nothing, or half a line, holds only its own
//! buffer. The control subsystem never reloads or stops the daemon itself: it asks the daemon's
//! main loop through [`crate::daemon::Request`].

pub mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use majordomo_proto::{
    Command, CompatCommand, ErrorBody, ErrorCode, Hello, Incoming, LineCodec, PROTOCOL_VERSION,
    Reply, parse_line,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;
use tracing::Instrument;

use crate::bus::{self, ConnBus, Outbox, OutboxRef, Router, Wakes};

use crate::config::Config;
use crate::daemon::{Request, Shared};
use crate::lifecycle::{BoxFuture, Change, Ctx, Subsystem};
use transport::{BindOptions, Peer};

pub struct Control;

impl Control {
    fn bind_options(shared: &Shared, cfg: &Config) -> BindOptions {
        BindOptions {
            path: shared.layout.clone().with_overrides(&cfg.paths).socket,
            mode: cfg.control.socket_mode_bits(),
            group: cfg.control.socket_group.clone(),
        }
    }
}

impl Subsystem for Control {
    fn name(&self) -> &'static str {
        "control"
    }

    fn change(&self, old: &Config, new: &Config) -> Change {
        let rebind = old.paths.socket != new.paths.socket
            || old.control.socket_mode != new.control.socket_mode
            || old.control.socket_group != new.control.socket_group;
        if rebind {
            Change::Restart
        } else if old.control != new.control || old.bus != new.bus {
            Change::Live
        } else {
            Change::None
        }
    }

    fn run(&self, ctx: Ctx) -> BoxFuture {
        Box::pin(async move {
            let cfg = ctx.config.borrow().clone();
            let opts = Self::bind_options(&ctx.shared, &cfg);
            let mut listener = transport::bind(&opts).await.map_err(|e| e.to_string())?;
            tracing::info!(socket = %opts.path.display(), "listening");
            let router = Arc::new(Router::new(ctx.shared.hub.clone(), &cfg.bus));
            {
                // $sys.<kind> topics, and the [bus] section taken live.
                let forward = router.clone();
                let router = router.clone();
                let mut config = ctx.config.clone();
                let on = Arc::new(std::sync::atomic::AtomicBool::new(cfg.bus.system_topics));
                let flag = on.clone();
                let token = ctx.token.clone();
                ctx.tracker.spawn(async move {
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => return,
                            changed = config.changed() => {
                                if changed.is_err() { return }
                                let c = config.borrow_and_update().clone();
                                router.set_config(&c.bus);
                                flag.store(c.bus.system_topics, Ordering::Relaxed);
                            }
                        }
                    }
                });
                let hub = ctx.shared.hub.clone();
                let router = forward.clone();
                let token = ctx.token.clone();
                ctx.tracker.spawn(bus::forward_hub(
                    router,
                    hub,
                    move || on.load(Ordering::Relaxed),
                    token,
                ));
            }
            ctx.ready();
            let open = Arc::new(AtomicUsize::new(0));
            let mut next_conn: u64 = 0;
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
                next_conn += 1;
                let cfg = ctx.config.borrow().clone();
                let conn_ctx = ConnCtx {
                    shared: ctx.shared.clone(),
                    config: ctx.config.clone(),
                    token: ctx.token.clone(),
                    tracker: ctx.tracker.clone(),
                    open: open.clone(),
                    router: router.clone(),
                    conn_id: next_conn,
                };
                let span =
                    tracing::debug_span!("conn", id = next_conn, uid = peer.uid, pid = peer.pid);
                ctx.tracker
                    .spawn(async move { serve(conn, peer, cfg, conn_ctx).await }.instrument(span));
            }
            Ok(())
        })
    }
}

#[derive(Clone)]
struct ConnCtx {
    shared: Arc<Shared>,
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    token: tokio_util::sync::CancellationToken,
    tracker: tokio_util::task::TaskTracker,
    open: Arc<AtomicUsize>,
    router: Arc<Router>,
    conn_id: u64,
}

/// Decrements the open-connection count however the connection ends.
struct Slot(Arc<AtomicUsize>);
impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve(mut conn: transport::Conn, peer: Peer, cfg: Arc<Config>, ctx: ConnCtx) {
    let count = ctx.open.fetch_add(1, Ordering::Relaxed) + 1;
    let _slot = Slot(ctx.open.clone());
    let refuse = |code, msg: String| Reply::error(None, ErrorBody::new(code, msg)).to_line();
    if count > cfg.control.max_connections {
        let mut line = refuse(
            ErrorCode::Busy,
            format!(
                "too many connections ({} allowed by [control] max_connections); try again later",
                cfg.control.max_connections
            ),
        );
        line.push(b'\n');
        let _ = conn.write_all(&line).await;
        return;
    }
    if !peer_allowed(&peer, &cfg) {
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            "connection refused: user not allowed"
        );
        let mut line = refuse(
            ErrorCode::Forbidden,
            format!(
                "uid {} may not use this instance; add it to [control] allowed_users",
                peer.uid.map(|u| u.to_string()).unwrap_or_default()
            ),
        );
        line.push(b'\n');
        let _ = conn.write_all(&line).await;
        return;
    }
    let (mut rd, wr) = tokio::io::split(conn);
    let outbox: OutboxRef = Arc::new(Outbox::new(ctx.conn_id));
    let router = ctx.router.clone();
    {
        let router = router.clone();
        let stop = ctx.token.clone();
        let o = outbox.clone();
        let span = tracing::Span::current();
        ctx.tracker.spawn(
            async move { bus::outbox::writer(wr, o, stop, move || router.limits()).await }
                .instrument(span),
        );
    }
    router.add_conn(outbox.clone(), peer.pid, peer.uid);
    let mut state = ConnState {
        authed: cfg.control.token.is_none(),
        binary: false,
        bus: ConnBus::new(router.clone(), outbox.clone()),
    };
    let max_line = usize::try_from(cfg.control.max_line.bytes()).unwrap_or(usize::MAX);
    let mut codec = LineCodec::new(max_line);
    let mut buf = BytesMut::new();
    let mut want = MIN_READ;
    let mut wakes = Wakes::default();
    let mut eof = false;
    'conn: while !eof {
        if buf.capacity() - buf.len() < want / 2 {
            buf.reserve(want);
        }
        let spare_before = buf.capacity() - buf.len();
        let deadline = state.bus.next_deadline();
        let read = tokio::select! {
            _ = ctx.token.cancelled() => break,
            _ = outbox.kicked.cancelled() => break,
            _ = sleep_until_opt(deadline) => {
                state.bus.expire_due(&mut wakes);
                wakes.flush();
                continue;
            }
            r = rd.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) => eof = true,
            Ok(n) => {
                // Grow the read size under load, shrink it back when traffic is light.
                if n >= spare_before && want < MAX_READ {
                    want *= 2;
                } else if n < want / 4 && want > MIN_READ {
                    want /= 2;
                }
            }
            Err(_) => break,
        }
        // Every complete frame of this read, then one wake-up per touched connection.
        state.bus.refresh();
        loop {
            let frame = if state.binary {
                match bus::wire::decode_bin(&mut buf, max_line.saturating_add(16)) {
                    Ok(Some(f)) => Frame::Bin(f),
                    Ok(None) => break,
                    Err(e) => {
                        let (code, hint) = match e {
                            bus::wire::BinError::TooLong { .. } => {
                                (ErrorCode::TooLarge, " ([control] max_line)")
                            }
                            bus::wire::BinError::Malformed(_) => (ErrorCode::BadRequest, ""),
                        };
                        let line = refuse(code, format!("{e}{hint}; closing the connection"));
                        outbox.push_line(&state.bus.limits, &line, &mut wakes, &outbox);
                        break 'conn;
                    }
                }
            } else {
                let next = if eof {
                    codec.decode_eof(&mut buf)
                } else {
                    codec.decode(&mut buf)
                };
                match next {
                    Ok(Some(line)) => Frame::Line(line),
                    Ok(None) => break,
                    Err(majordomo_proto::FrameError::TooLong { limit }) => {
                        let line = refuse(
                            ErrorCode::TooLarge,
                            format!(
                                "line longer than {limit} bytes ([control] max_line); closing the connection"
                            ),
                        );
                        outbox.push_line(&state.bus.limits, &line, &mut wakes, &outbox);
                        break 'conn;
                    }
                    Err(majordomo_proto::FrameError::Io(_)) => break 'conn,
                }
            };
            let line = match frame {
                Frame::Line(l) | Frame::Bin(bus::wire::BinFrame::Json(l)) => l,
                Frame::Bin(bus::wire::BinFrame::Pub { topic, data }) => {
                    if state.authed {
                        let topic = std::str::from_utf8(&topic).unwrap_or("");
                        state.bus.publish_raw(topic, &data, &mut wakes);
                    } else {
                        outbox.push_line(
                            &state.bus.limits,
                            &forbidden_line(None),
                            &mut wakes,
                            &outbox,
                        );
                    }
                    continue;
                }
                Frame::Bin(bus::wire::BinFrame::Msg { .. }) => {
                    let line = refuse(
                        ErrorCode::BadRequest,
                        "clients may not send message frames (kind 3)".into(),
                    );
                    outbox.push_line(&state.bus.limits, &line, &mut wakes, &outbox);
                    continue;
                }
            };
            if let Some(bl) = bus::wire::BusLine::parse(&line) {
                if state.authed {
                    state.bus.handle(&bl, &mut wakes);
                } else {
                    let id = bl.id.map(|i| i.get().as_bytes().to_vec());
                    outbox.push_line(
                        &state.bus.limits,
                        &forbidden_line(id.as_deref()),
                        &mut wakes,
                        &outbox,
                    );
                }
                continue;
            }
            // A control line: answer it in order, after what is queued before it.
            let cfg = ctx.config.borrow().clone();
            let incoming = parse_line(&line);
            let wants_binary = matches!(&incoming, Incoming::Request { cmd: Command::Hello { framing: Some(f), .. }, .. } if f == bus::wire::BINARY_FRAMING);
            let outcome = Box::pin(handle(&ctx, &cfg, incoming, &mut state.authed)).await;
            outbox.push_line(&state.bus.limits, &outcome.reply, &mut wakes, &outbox);
            if wants_binary
                && state.authed
                && outcome.reply.starts_with(b"{")
                && !outcome.reply.windows(8).any(|w| w == b"\"error\":")
            {
                outbox.set_binary();
                state.binary = true;
            }
            if let Some(req) = outcome.after {
                wakes.flush();
                let _ = ctx.shared.requests.send(req).await;
            }
        }
        wakes.flush();
        if buf.is_empty() && buf.capacity() > 4 * want {
            // Idle again after a burst: hold no big buffer per connection.
            buf = BytesMut::new();
        }
    }
    wakes.flush();
    router.remove_conn(ctx.conn_id);
    outbox.close();
}

const MIN_READ: usize = 512;
const MAX_READ: usize = 256 * 1024;

enum Frame {
    Line(bytes::Bytes),
    Bin(bus::wire::BinFrame),
}

struct ConnState {
    authed: bool,
    binary: bool,
    bus: ConnBus,
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn forbidden_line(id: Option<&[u8]>) -> Vec<u8> {
    let mut out = b"{".to_vec();
    if let Some(id) = id {
        out.extend_from_slice(b"\"id\":");
        out.extend_from_slice(id);
        out.push(b',');
    }
    out.extend_from_slice(br#""error":{"code":"forbidden","message":"this instance requires a token: send {\"cmd\":\"hello\",\"token\":\"...\"} first"}}"#);
    out
}

fn peer_allowed(peer: &Peer, cfg: &Config) -> bool {
    let Some(uid) = peer.uid else {
        // Named pipes: access is decided by the pipe's security descriptor.
        return true;
    };
    #[cfg(unix)]
    {
        if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
            return true;
        }
        cfg.control
            .allowed_users
            .iter()
            .any(|u| match u.parse::<u32>() {
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

struct Outcome {
    reply: Vec<u8>,
    /// A request for the daemon, sent after the reply is written.
    after: Option<Request>,
}

impl Outcome {
    fn reply(reply: Reply) -> Self {
        Self {
            reply: reply.to_line(),
            after: None,
        }
    }
    fn flat(value: Value) -> Self {
        Self {
            reply: serde_json::to_vec(&value).unwrap_or_default(),
            after: None,
        }
    }
}

pub(crate) fn tokens_match(expected: &str, given: &str) -> bool {
    // Constant time in the token's content.
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(ctx: &ConnCtx, cfg: &Config, incoming: Incoming, authed: &mut bool) -> Outcome {
    let shared = &ctx.shared;
    let forbidden = |id| {
        Outcome::reply(Reply::error(
            id,
            ErrorBody::new(
                ErrorCode::Forbidden,
                "this instance requires a token: send {\"cmd\":\"hello\",\"token\":\"...\"} first",
            ),
        ))
    };
    match incoming {
        Incoming::Invalid { id, error } => Outcome::reply(Reply::error(id, error)),
        Incoming::Ext { id, .. } if !*authed => forbidden(id),
        Incoming::Ext { id, cmd, args } => {
            Outcome::reply(match shared.commands.dispatch(&cmd, args).await {
                Ok(v) => Reply::ok(id, v),
                Err(e) => Reply::error(id, e),
            })
        }
        Incoming::Request { id, cmd } => {
            if let Command::Hello { token, .. } = &cmd
                && let Some(expected) = &cfg.control.token
            {
                *authed = token
                    .as_deref()
                    .is_some_and(|t| tokens_match(expected.expose(), t));
                if !*authed {
                    return Outcome::reply(Reply::error(
                        id,
                        ErrorBody::new(ErrorCode::Forbidden, "wrong or missing token"),
                    ));
                }
            }
            if !*authed {
                return forbidden(id);
            }
            match cmd {
                Command::Hello { framing, .. } => Outcome::reply(Reply::ok(
                    id,
                    Hello {
                        protocol: PROTOCOL_VERSION,
                        daemon_version: env!("CARGO_PKG_VERSION").to_string(),
                        instance: shared.layout.instance.clone(),
                        pid: std::process::id(),
                        features: vec!["control".into(), "bus".into()],
                        framing: framing.filter(|f| f == bus::wire::BINARY_FRAMING),
                    },
                )),
                Command::Ping => Outcome::reply(Reply::ok(id, "pong")),
                Command::Status => Outcome::reply(Reply::ok(id, shared.status())),
                Command::Config => Outcome::reply(Reply::ok(id, cfg)),
                Command::Reload => {
                    let reply = match shared.reload("socket", false).await {
                        Ok(outcome) => Reply::ok(id, outcome),
                        Err(outcome) => Reply::error(id, refused(&outcome)),
                    };
                    Outcome::reply(reply)
                }
                Command::Shutdown => Outcome {
                    reply: Reply::ok(id, "stopping").to_line(),
                    after: Some(Request::Shutdown {
                        reason: "shutdown requested on the socket".into(),
                    }),
                },
            }
        }
        Incoming::Compat(_) if !*authed => forbidden(None),
        Incoming::Compat(cmd) => match cmd {
            CompatCommand::GetStatus => {
                let s = shared.status();
                Outcome::flat(json!({
                    "status": "Running",
                    "instance_id": s.instance,
                    "pid": s.pid,
                    "version": s.version,
                    "uptime_s": s.uptime_s,
                    "config_generation": s.config_generation,
                    "subsystems": s.subsystems,
                }))
            }
            CompatCommand::GetConfig => {
                Outcome::flat(serde_json::to_value(cfg).unwrap_or(Value::Null))
            }
            CompatCommand::Ping => Outcome::flat(json!({"status": "pong"})),
            CompatCommand::Stop => Outcome {
                reply: serde_json::to_vec(&json!({"status": "stopping"})).unwrap_or_default(),
                after: Some(Request::Shutdown {
                    reason: "stop requested on the socket".into(),
                }),
            },
            CompatCommand::Restart => match shared.reload("restart", true).await {
                Ok(o) => Outcome::flat(json!({"status": "restarted", "restarted": o.restarted})),
                Err(o) => Outcome::flat(json!({"status": "error", "errors": o.errors})),
            },
        },
    }
}

/// The error reply of a refused reload: every problem in `details`.
fn refused(outcome: &majordomo_proto::ReloadOutcome) -> ErrorBody {
    let mut body = ErrorBody::new(
        ErrorCode::InvalidConfig,
        format!(
            "new config refused ({} problem{}); generation {} stays in force: {}",
            outcome.errors.len(),
            if outcome.errors.len() == 1 { "" } else { "s" },
            outcome.generation,
            outcome.errors.first().map(String::as_str).unwrap_or("")
        ),
    );
    body.details = Some(json!(outcome.errors));
    body
}
