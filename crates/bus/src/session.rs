//! The per-connection protocol session, over any byte stream.
//!
//! A carrier (the control socket today; a WebSocket, a virtio-serial port or a NATS bridge
//! later) accepts a connection, decides whether the peer may connect at all, and hands the
//! stream to [`Session::serve`]. The session reads newline-delimited JSON (or, after a `hello`
//! that asks for it, the binary framing) and answers each request in order:
//!
//! - `hello` (with the token when [`SessionConfig::token`] is set: nothing else is answered
//!   before it), `ping` and `shutdown` are answered here;
//! - the seed-001 aliases (`{"command":"get_status"}` ...) are answered in that protocol's flat
//!   shape, from the registry's `status` and `config` and the daemon handle;
//! - bus lines (`bus.*`, seed-004 `Type`) go to the connection's [`ConnBus`];
//! - every other command (`status`, `config`, `reload`, `ps`, `queue.ls`, ...) goes through the
//!   command registry.
//!
//! A malformed line gets an error reply and the connection stays usable; an over-long line gets
//! an error and the connection is closed; a client that sends nothing, or half a line, holds
//! only its own buffer. Replies and bus traffic go through the connection's [`Outbox`], written
//! by its writer, which runs beside the reader in the connection's one task; writers are woken
//! once per read batch. An idle connection holds no read buffer (light traffic is read into a
//! small array in the task) and no queue chunk.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use majordomo_core::{Commands, ConnScope, DaemonHandle, Secret};
use majordomo_proto::bus::{
    self as wire, BINARY_FRAMING, BinError, BinRef, BusLine, decode_bin_ref_after,
};
use majordomo_proto::pipeline::QueueStats;
use majordomo_proto::{
    Command, CompatCommand, DEFAULT_MAX_LINE, ErrorBody, ErrorCode, FrameError, Hello, Incoming,
    LineCodec, PROTOCOL_VERSION, Reply, Status, parse_line,
};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::ConnBus;
use crate::outbox::{self, OutboxRef, Wakes};
use crate::router::Router;

/// What a session reads from its carrier's config; changes apply to the next request (the
/// token) or the next connection (`max_line`).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// When set, every connection must first send `{"cmd":"hello","token":"..."}` with it.
    pub token: Option<Secret>,
    /// Longest accepted line (one request) in bytes; a longer one closes the connection.
    pub max_line: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            token: None,
            max_line: DEFAULT_MAX_LINE,
        }
    }
}

/// Who is on the other end, as far as the carrier knows: core's [`majordomo_core::Who`],
/// which every command the connection runs sees in its [`ConnScope`].
pub use majordomo_core::Who as Peer;

/// What every connection of one carrier shares. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    /// Every command the session does not answer itself (`status`, `config`, `reload`, ...).
    pub commands: Arc<Commands>,
    /// For `shutdown` and the seed-001 `stop` and `restart`.
    pub daemon: DaemonHandle,
    /// The bus shared by every carrier.
    pub router: Arc<Router>,
    /// The instance's name, for `hello`.
    pub instance: Arc<str>,
    pub config: watch::Receiver<Arc<SessionConfig>>,
    /// Cancelled when the carrier stops: every connection ends.
    pub token: CancellationToken,
    /// The carrier's tasks, which a shutdown waits for. A connection is one task (its reader
    /// and its writer side by side), spawned by the carrier.
    pub tracker: TaskTracker,
}

const MIN_READ: usize = 512;
/// The read size of a connection with nothing pending and light traffic (a request line fits):
/// read into an array in the connection's task, so an idle connection holds no read buffer.
const IDLE_READ: usize = 128;
const MAX_READ: usize = 256 * 1024;

/// The publishes of one read batch on one topic, delivered together when the topic changes,
/// another frame comes, or the batch ends. The topic is checked once per run; each payload as
/// it comes.
#[derive(Default)]
struct Run<'a> {
    topic: &'a str,
    /// Why the topic is refused (each publish on it is answered with this).
    refused: Option<ErrorBody>,
    checked: bool,
    datas: Vec<&'a [u8]>,
}

impl<'a> Run<'a> {
    fn add(
        &mut self,
        bus: &mut ConnBus,
        topic: &'a str,
        data: &'a [u8],
        checked: Option<Result<(), &'static str>>,
        wakes: &mut Wakes,
    ) {
        if !self.checked || self.topic != topic {
            self.flush(bus, wakes);
            self.topic = topic;
            self.refused = bus.check_pub_topic(topic).err();
            self.checked = true;
        }
        if let Some(e) = &self.refused {
            return bus.refuse(e.clone(), wakes);
        }
        match bus.check_pub_data(data, checked) {
            Ok(()) => self.datas.push(data),
            Err(e) => {
                self.flush(bus, wakes);
                bus.refuse(e, wakes);
            }
        }
    }

    fn flush(&mut self, bus: &mut ConnBus, wakes: &mut Wakes) {
        if !self.datas.is_empty() {
            bus.publish_run(self.topic, &self.datas, wakes);
            self.datas.clear();
        }
    }
}

struct ConnState {
    authed: bool,
    binary: bool,
    bus: ConnBus,
    /// What commands keep for the life of the connection (made at its first command).
    scope: Option<ConnScope>,
    /// Who connected, for that scope.
    peer: Peer,
}

/// The answer to one control line.
struct Outcome {
    reply: Vec<u8>,
    /// Whether the reply is a success (`hello` switches the framing only then).
    ok: bool,
    /// Shut the daemon down, with this reason, after the reply is queued.
    shutdown: Option<&'static str>,
}

impl Outcome {
    fn reply(reply: Reply) -> Self {
        let ok = matches!(reply.body, majordomo_proto::ReplyBody::Ok(_));
        Self {
            reply: reply.to_line(),
            ok,
            shutdown: None,
        }
    }

    fn result(id: Option<Value>, r: Result<Value, ErrorBody>) -> Self {
        Self::reply(match r {
            Ok(v) => Reply::ok(id, v),
            Err(e) => Reply::error(id, e),
        })
    }

    fn flat(value: Value) -> Self {
        Self {
            reply: serde_json::to_vec(&value).unwrap_or_default(),
            ok: true,
            shutdown: None,
        }
    }
}

impl Session {
    /// Serves one connection until the peer leaves, the connection is kicked, or
    /// [`Session::token`] is cancelled. `conn` is its id ([`Router::next_conn_id`]); `guard`
    /// is dropped when the connection ends (the carrier's count of open connections). Takes
    /// the session by value so that the future is the connection's whole task: nothing is
    /// stored twice in it.
    pub async fn serve<S, G>(self, stream: S, conn: u64, peer: Peer, guard: G)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        G: Send + 'static,
    {
        let _guard = guard;
        let (mut rd, wr) = tokio::io::split(stream);
        let outbox: OutboxRef = self.router.new_outbox(conn, &self.token);
        let router = self.router.clone();
        // One task per connection: its reader (below) and its writer run side by side in it.
        outbox.attach(wr);
        let writer = {
            let router = router.clone();
            outbox::writer(outbox.clone(), self.token.clone(), move || router.limits())
        };
        let reader = async {
            router.add_conn(outbox.clone(), peer.pid, peer.uid);
            let mut config = self.config.clone();
            let cfg = config.borrow_and_update().clone();
            // The token this connection was admitted under: a reload that changes it closes the
            // connection if it was admitted, so the old token stops working at once.
            let mut token_in_force = cfg.token.clone();
            let mut config_open = true;
            let mut state = ConnState {
                authed: cfg.token.is_none(),
                binary: false,
                bus: ConnBus::new(router.clone(), outbox.clone()),
                scope: None,
                peer,
            };
            let max_line = cfg.max_line;
            let mut codec = LineCodec::new(max_line);
            let mut buf = BytesMut::new();
            let mut want = MIN_READ;
            let mut wakes = Wakes::default();
            let mut eof = false;
            // A connection that never completes a first line (a request, or a frame after the
            // binary hello) within `[bus] first_line_timeout` is closed: it holds a slot and a
            // buffer for nothing.
            let first_line_timeout = router.config().first_line_timeout;
            let first_line_by = tokio::time::Instant::now() + first_line_timeout.get();
            let mut got_first = false;
            // While traffic is light and no partial frame is pending, reads go to a small array
            // in this task instead of the heap: an idle connection holds no read buffer.
            let mut small = [0u8; IDLE_READ];
            'conn: while !eof {
                let idle = buf.is_empty() && want == MIN_READ;
                if !idle && buf.capacity() - buf.len() < want / 2 {
                    buf.reserve(want);
                }
                let spare_before = if idle {
                    IDLE_READ
                } else {
                    buf.capacity() - buf.len()
                };
                // One timer for both: the first-line deadline and the next request's or parked
                // event's.
                let deadline = match (got_first, state.bus.next_deadline()) {
                    (true, d) => d,
                    (false, Some(d)) => Some(d.min(first_line_by)),
                    (false, None) => Some(first_line_by),
                };
                let read = tokio::select! {
                    // Kicked, or the carrier stopping (a parent of this token).
                    _ = outbox.kicked.cancelled() => break,
                    changed = config.changed(), if config_open => {
                        if changed.is_err() {
                            config_open = false;
                            continue;
                        }
                        let token = config.borrow_and_update().token.clone();
                        if token != token_in_force {
                            token_in_force = token;
                            if token_in_force.is_none() {
                                state.authed = true;
                            } else if state.authed {
                                outbox.kick(
                                    "token_changed",
                                    "[control] token changed; reconnect with the new token",
                                );
                                break;
                            }
                        }
                        continue;
                    }
                    _ = sleep_until_opt(deadline) => {
                        if !got_first && tokio::time::Instant::now() >= first_line_by {
                            let line = refuse(
                                ErrorCode::BadRequest,
                                format!(
                                    "no complete request within {first_line_timeout} of connecting ([bus] first_line_timeout); closing the connection"
                                ),
                            );
                            outbox.push_line(&state.bus.limits, &line, &mut wakes, &outbox);
                            break;
                        }
                        state.bus.expire_due(&mut wakes);
                        wakes.flush();
                        continue;
                    }
                    r = read_some(&mut rd, idle, &mut small, &mut buf) => r,
                };
                let mut read_bytes = 0u64;
                let mut frames = 0u64;
                let mut got = 0;
                match read {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        got = n;
                        read_bytes = n as u64;
                        // Grow the read size under load, shrink it back when traffic is light.
                        if n >= spare_before && want < MAX_READ {
                            want *= 2;
                        } else if n < want / 4 && want > MIN_READ {
                            want /= 2;
                        }
                    }
                    Err(_) => break,
                }
                // Every complete frame of this read, read in place, then one wake-up per touched
                // connection. Consecutive publishes on one topic go out as one run.
                state.bus.refresh();
                let mut pos = 0;
                let mut run = Run::default();
                let data: &[u8] = if idle { &small[..got] } else { &buf[..] };
                // The topic of the publish before, so that a run's topic is checked once.
                let mut last_topic = "";
                loop {
                    let avail = &data[pos..];
                    let frame = if state.binary {
                        match decode_bin_ref_after(avail, max_line.saturating_add(16), last_topic) {
                            Ok(Some((f, used))) => {
                                pos += used;
                                f
                            }
                            Ok(None) => break,
                            Err(e) => {
                                let (code, hint) = match e {
                                    BinError::TooLong { .. } => {
                                        (ErrorCode::TooLarge, " ([control] max_line)")
                                    }
                                    BinError::Malformed(_) => (ErrorCode::BadRequest, ""),
                                };
                                run.flush(&mut state.bus, &mut wakes);
                                let line =
                                    refuse(code, format!("{e}{hint}; closing the connection"));
                                outbox.push_line(&state.bus.limits, &line, &mut wakes, &outbox);
                                break 'conn;
                            }
                        }
                    } else {
                        match codec.next_line(avail, eof) {
                            Ok((Some(range), used)) => {
                                pos += used;
                                BinRef::Json(&avail[range])
                            }
                            Ok((None, used)) => {
                                pos += used;
                                break;
                            }
                            Err(FrameError::TooLong { limit }) => {
                                run.flush(&mut state.bus, &mut wakes);
                                let line = refuse(
                                    ErrorCode::TooLarge,
                                    format!(
                                        "line longer than {limit} bytes ([control] max_line); closing the connection"
                                    ),
                                );
                                outbox.push_line(&state.bus.limits, &line, &mut wakes, &outbox);
                                break 'conn;
                            }
                            Err(FrameError::Io(_)) => break 'conn,
                        }
                    };
                    got_first = true;
                    frames += 1;
                    let line = match frame {
                        BinRef::Json(l) => match wire::fast_pub_checked(l) {
                            Some((topic, data, verdict)) if state.authed => {
                                run.add(&mut state.bus, topic, data, Some(verdict), &mut wakes);
                                continue;
                            }
                            _ => l,
                        },
                        BinRef::Pub { topic, data } => {
                            last_topic = topic;
                            if state.authed {
                                run.add(&mut state.bus, topic, data, None, &mut wakes);
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
                        BinRef::Msg { .. } => {
                            run.flush(&mut state.bus, &mut wakes);
                            let line = refuse(
                                ErrorCode::BadRequest,
                                "clients may not send message frames (kind 3)".into(),
                            );
                            outbox.push_line(&state.bus.limits, &line, &mut wakes, &outbox);
                            continue;
                        }
                    };
                    // Anything else is answered after the publishes before it went out.
                    run.flush(&mut state.bus, &mut wakes);
                    if let Some(bl) = BusLine::parse(line) {
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
                    if let Some(reply) = bad_bus_line(line) {
                        let reply = if state.authed {
                            reply
                        } else {
                            forbidden_line(None)
                        };
                        outbox.push_line(&state.bus.limits, &reply, &mut wakes, &outbox);
                        continue;
                    }
                    // A control line: answer it in order, after what is queued before it.
                    let incoming = parse_line(line);
                    let wants_binary = matches!(&incoming, Incoming::Request { cmd: Command::Hello { framing: Some(f), .. }, .. } if f == BINARY_FRAMING);
                    let was_authed = state.authed;
                    let outcome = Box::pin(self.handle(
                        incoming,
                        &mut state.authed,
                        &mut state.scope,
                        state.peer,
                    ))
                    .await;
                    if state.authed && !was_authed {
                        // Admitted under the token in force now.
                        token_in_force = config.borrow().token.clone();
                    }
                    outbox.push_line(&state.bus.limits, &outcome.reply, &mut wakes, &outbox);
                    if wants_binary && state.authed && outcome.ok {
                        outbox.set_binary();
                        state.binary = true;
                    }
                    if let Some(reason) = outcome.shutdown {
                        // The reply goes out before the drain starts.
                        wakes.flush();
                        Box::pin(self.daemon.shutdown(reason)).await;
                    }
                }
                run.flush(&mut state.bus, &mut wakes);
                drop(run);
                if idle {
                    // A partial frame waits in the heap buffer for the rest.
                    buf.extend_from_slice(&small[pos.min(got)..got]);
                } else {
                    buf.advance(pos);
                }
                wakes.flush();
                if read_bytes > 0 {
                    router.activity(&outbox, frames, read_bytes);
                }
                if buf.is_empty() && (want == MIN_READ || buf.capacity() > 4 * want) {
                    // Idle again: hold no buffer (or no big one after a burst).
                    buf = BytesMut::new();
                }
            }
            wakes.flush();
            router.remove_conn(conn);
            outbox.close();
        };
        tokio::join!(reader, writer);
    }

    async fn dispatch(&self, name: &str) -> Result<Value, ErrorBody> {
        self.commands.dispatch(name, Map::new()).await
    }

    async fn handle(
        &self,
        incoming: Incoming,
        authed: &mut bool,
        scope: &mut Option<ConnScope>,
        peer: Peer,
    ) -> Outcome {
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
                let scope = scope.get_or_insert_with(|| ConnScope::new(peer));
                Outcome::result(id, scope.run(self.commands.dispatch(&cmd, args)).await)
            }
            Incoming::Request { id, cmd } => {
                if let Command::Hello { token, .. } = &cmd {
                    let expected = self.config.borrow().token.clone();
                    if let Some(expected) = expected {
                        *authed = token
                            .as_deref()
                            .is_some_and(|t| crate::tokens_match(expected.expose(), t));
                        if !*authed {
                            return Outcome::reply(Reply::error(
                                id,
                                ErrorBody::new(ErrorCode::Forbidden, "wrong or missing token"),
                            ));
                        }
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
                            instance: self.instance.to_string(),
                            pid: std::process::id(),
                            features: vec!["control".into(), "bus".into()],
                            framing: framing.filter(|f| f == BINARY_FRAMING),
                        },
                    )),
                    Command::Ping => Outcome::reply(Reply::ok(id, "pong")),
                    Command::Status => Outcome::result(id, self.dispatch("status").await),
                    Command::Config => Outcome::result(id, self.dispatch("config").await),
                    Command::Reload => Outcome::result(id, self.dispatch("reload").await),
                    Command::Shutdown => Outcome {
                        shutdown: Some("shutdown requested on the socket"),
                        ..Outcome::reply(Reply::ok(id, "stopping"))
                    },
                }
            }
            Incoming::Compat(_) if !*authed => forbidden(None),
            Incoming::Compat(cmd) => self.compat(cmd).await,
        }
    }

    /// The seed-001 commands, answered in that protocol's flat shape.
    async fn compat(&self, cmd: CompatCommand) -> Outcome {
        let failed =
            |e: ErrorBody| Outcome::flat(json!({"status": "error", "errors": [e.message]}));
        match cmd {
            CompatCommand::GetStatus => {
                let status = self.dispatch("status").await.and_then(|v| {
                    serde_json::from_value::<Status>(v).map_err(|e| {
                        ErrorBody::new(ErrorCode::Internal, format!("unexpected status: {e}"))
                    })
                });
                let status = match status {
                    Ok(s) => s,
                    Err(e) => return failed(e),
                };
                // What a seed-001 GUI shows per pipeline; absent when no pipeline runs.
                let stats = self
                    .dispatch("queue.stats")
                    .await
                    .ok()
                    .and_then(|v| serde_json::from_value::<QueueStats>(v).ok());
                let pipeline_state = status
                    .subsystems
                    .get("pipeline")
                    .map(|s| s.state.clone())
                    .unwrap_or_else(|| "stopped".into());
                let pipelines: Vec<Value> = stats
                    .iter()
                    .flat_map(|s| &s.pipelines)
                    .map(|p| {
                        let state = match &p.paused {
                            Some(_) => "paused",
                            None => pipeline_state.as_str(),
                        };
                        json!({
                            "name": p.pipeline,
                            "state": state,
                            "paused": p.paused,
                            "pending": p.counts.pending(),
                            "dead_letters": p.counts.dead,
                            "uploads_reach_server": p.uploads_reach_server,
                        })
                    })
                    .collect();
                let queue_size: u64 = stats
                    .iter()
                    .flat_map(|s| &s.pipelines)
                    .map(|p| p.counts.pending())
                    .sum();
                // Whether every pipeline that tried an upload reached its server (null before any).
                let tried: Vec<bool> = stats
                    .iter()
                    .flat_map(|s| &s.pipelines)
                    .filter_map(|p| p.uploads_reach_server)
                    .collect();
                let server_reachable = (!tried.is_empty()).then(|| tried.iter().all(|&b| b));
                Outcome::flat(json!({
                    "status": "Running",
                    "instance_id": status.instance,
                    "pid": status.pid,
                    "version": status.version,
                    "uptime_s": status.uptime_s,
                    "config_generation": status.config_generation,
                    "subsystems": status.subsystems,
                    "pipelines": pipelines,
                    "queue_size": queue_size,
                    "server_reachable": server_reachable,
                }))
            }
            CompatCommand::GetConfig => match self.dispatch("config").await {
                Ok(v) => Outcome::flat(v),
                Err(e) => failed(e),
            },
            CompatCommand::Ping => Outcome::flat(json!({"status": "pong"})),
            CompatCommand::Stop => Outcome {
                shutdown: Some("stop requested on the socket"),
                ..Outcome::flat(json!({"status": "stopping"}))
            },
            CompatCommand::Restart => match self.daemon.reload("restart", true).await {
                Ok(o) => Outcome::flat(json!({"status": "restarted", "restarted": o.restarted})),
                Err(o) => Outcome::flat(json!({"status": "error", "errors": o.errors})),
            },
        }
    }
}

fn refuse(code: ErrorCode, msg: String) -> Vec<u8> {
    Reply::error(None, ErrorBody::new(code, msg)).to_line()
}

/// One read: into `small` for an idle connection, else into `buf`.
async fn read_some<R: AsyncRead + Unpin>(
    rd: &mut R,
    idle: bool,
    small: &mut [u8],
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    if idle {
        rd.read(small).await
    } else {
        rd.read_buf(buf).await
    }
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

/// The `bad_request` reply to a line that names a bus command (or a seed-004 `Type`) but whose
/// fields do not read, naming the field. `None` for any other line (a control line). Only
/// called once the fast parse failed, so it costs nothing on the bus's hot path.
fn bad_bus_line(line: &[u8]) -> Option<Vec<u8>> {
    let finder = |needle: &[u8]| memchr::memmem::find(line, needle).is_some();
    if !finder(b"bus.") && !finder(b"\"Type\"") {
        return None;
    }
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(line) else {
        return None;
    };
    let cmd = match map.get("cmd") {
        Some(Value::String(c)) if c.starts_with("bus.") => c.clone(),
        None if map.contains_key("Type") => "Type".to_string(),
        _ => return None,
    };
    let mut de = serde_json::Deserializer::from_slice(line);
    let e = match serde_path_to_error::deserialize::<_, BusLine<'_>>(&mut de) {
        Ok(_) => return None,
        Err(e) => e,
    };
    let path = e.path().to_string();
    let at = if path == "." {
        String::new()
    } else {
        format!(" field `{path}`:")
    };
    let id = map
        .get("id")
        .filter(|id| !(id.is_object() || id.is_array()))
        .cloned();
    let body = ErrorBody::new(
        ErrorCode::BadRequest,
        format!("bad arguments for {cmd:?}:{at} {}", e.inner()),
    );
    Some(Reply::error(id, body).to_line())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(line: &[u8]) -> ErrorBody {
        let reply = bad_bus_line(line).expect("a bad bus line");
        let reply: Reply = serde_json::from_slice(&reply).unwrap();
        match reply.body {
            majordomo_proto::ReplyBody::Error(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_bus_argument_types_name_the_field() {
        let e = error_of(br#"{"id":1,"cmd":"bus.unsub","sid":"x"}"#);
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("`sid`"), "{}", e.message);
        assert!(e.message.contains("bus.unsub"), "{}", e.message);
        let e = error_of(br#"{"cmd":"bus.sub","pattern":7}"#);
        assert!(e.message.contains("`pattern`"), "{}", e.message);
    }

    use majordomo_core::Hub;
    use majordomo_core::lifecycle::Request;
    use majordomo_proto::contract::NoArgs;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::sync::mpsc;

    use crate::config::BusConfig;

    struct Harness {
        lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
        wr: tokio::io::WriteHalf<tokio::io::DuplexStream>,
        requests: mpsc::Receiver<Request>,
        done: tokio::task::JoinHandle<()>,
    }

    impl Harness {
        fn start(token: Option<&str>, max_line: usize) -> Self {
            let (tx, requests) = mpsc::channel(4);
            let commands = Arc::new(Commands::default());
            commands
                .register_typed::<majordomo_proto::ConfigCmd, _, _>("test", |_: NoArgs| async {
                    Ok(json!({"answer": 42}))
                });
            let (_keep, config) = watch::channel(Arc::new(SessionConfig {
                token: token.map(|t| serde_json::from_value(json!(t)).unwrap()),
                max_line,
            }));
            std::mem::forget(_keep);
            let session = Session {
                commands,
                daemon: DaemonHandle::new(tx, "test"),
                router: Arc::new(Router::new(Hub::new(), &BusConfig::default())),
                instance: "test".into(),
                config,
                token: CancellationToken::new(),
                tracker: TaskTracker::new(),
            };
            let (client, server) = tokio::io::duplex(1 << 16);
            let id = session.router.next_conn_id();
            let done = tokio::spawn(session.serve(server, id, Peer::default(), ()));
            let (rd, wr) = tokio::io::split(client);
            Self {
                lines: BufReader::new(rd).lines(),
                wr,
                requests,
                done,
            }
        }

        async fn send(&mut self, line: &str) {
            self.wr.write_all(line.as_bytes()).await.unwrap();
            self.wr.write_all(b"\n").await.unwrap();
        }

        async fn recv(&mut self) -> Option<Value> {
            let line =
                tokio::time::timeout(std::time::Duration::from_secs(5), self.lines.next_line())
                    .await
                    .expect("a reply in time")
                    .unwrap()?;
            Some(serde_json::from_str(&line).unwrap())
        }

        async fn call(&mut self, line: &str) -> Value {
            self.send(line).await;
            self.recv().await.expect("a reply")
        }
    }

    #[tokio::test]
    async fn answers_control_bus_and_registry_lines_in_order() {
        let mut h = Harness::start(None, 4096);
        assert_eq!(
            h.call(r#"{"id":1,"cmd":"ping"}"#).await,
            json!({"id":1,"ok":"pong"})
        );
        let hello = h.call(r#"{"id":2,"cmd":"hello","protocol":1}"#).await;
        assert_eq!(hello["ok"]["instance"], "test");
        assert_eq!(
            h.call(r#"{"id":3,"cmd":"config"}"#).await["ok"]["answer"],
            42
        );
        assert_eq!(
            h.call(r#"{"command":"get_config"}"#).await,
            json!({"answer": 42})
        );
        assert_eq!(
            h.call(r#"{"command":"ping"}"#).await,
            json!({"status": "pong"})
        );
        assert_eq!(
            h.call(r#"{"id":4,"cmd":"nope"}"#).await["error"]["code"],
            "unknown_command"
        );
        assert_eq!(h.call("{oops").await["error"]["code"], "bad_json");
        assert_eq!(
            h.call(r#"{"id":5,"cmd":"bus.sub","pattern":"a.*"}"#).await["ok"]["sid"],
            1
        );
        h.send(r#"{"cmd":"bus.pub","topic":"a.b","data":{"x":1}}"#)
            .await;
        let msg = h.recv().await.unwrap();
        assert_eq!(msg["msg"]["data"]["x"], 1, "{msg}");
        let e = h.call(r#"{"id":6,"cmd":"bus.unsub","sid":"x"}"#).await;
        assert_eq!(e["error"]["code"], "bad_request", "{e}");
        assert_eq!(e["id"], 6);
        // shutdown: the reply first, then the request to the daemon.
        assert_eq!(
            h.call(r#"{"id":7,"cmd":"shutdown"}"#).await["ok"],
            "stopping"
        );
        match h.requests.recv().await {
            Some(Request::Shutdown { reason }) => assert!(reason.contains("socket")),
            _ => panic!("expected a shutdown request"),
        }
    }

    #[tokio::test]
    async fn a_token_gates_everything_but_hello() {
        let mut h = Harness::start(Some("s3cret"), 4096);
        assert_eq!(
            h.call(r#"{"id":1,"cmd":"ping"}"#).await["error"]["code"],
            "forbidden"
        );
        assert_eq!(
            h.call(r#"{"id":2,"cmd":"bus.sub","pattern":"a"}"#).await["error"]["code"],
            "forbidden"
        );
        assert_eq!(
            h.call(r#"{"command":"ping"}"#).await["error"]["code"],
            "forbidden"
        );
        assert_eq!(
            h.call(r#"{"id":3,"cmd":"hello","token":"nope"}"#).await["error"]["code"],
            "forbidden"
        );
        assert!(h.call(r#"{"id":4,"cmd":"hello","token":"s3cret"}"#).await["ok"].is_object());
        assert_eq!(h.call(r#"{"id":5,"cmd":"ping"}"#).await["ok"], "pong");
    }

    #[tokio::test]
    async fn an_over_long_line_closes_the_connection() {
        let mut h = Harness::start(None, 1024);
        let long = format!(r#"{{"cmd":"ping","pad":"{}"}}"#, "x".repeat(2000));
        assert_eq!(h.call(&long).await["error"]["code"], "too_large");
        assert!(h.recv().await.is_none());
        h.done.await.unwrap();
    }

    #[test]
    fn other_lines_are_not_bad_bus_lines() {
        assert!(bad_bus_line(br#"{"cmd":"ping"}"#).is_none());
        assert!(bad_bus_line(br#"{"cmd":"bus.pub","topic":"a"}"#).is_none());
        assert!(bad_bus_line(b"{not json bus.").is_none());
        assert!(bad_bus_line(br#"{"cmd":"status","note":"bus.x"}"#).is_none());
    }
}
