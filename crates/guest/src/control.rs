//! The second port, `org.majordomo.0`: the instance's whole NDJSON protocol (control, bus,
//! every subsystem's commands) over virtio-serial, served by the bus crate's [`Session`] as the
//! control socket and the WebSocket serve it, behind an allow-list of commands
//! (`[guest] control_commands`). A virtio-serial port has no connections: a host arriving
//! starts a session (over an in-process pipe), the host leaving ends it. While a host is
//! connected, the metrics snapshot is published on the bus as `$sys.metrics` every
//! `metrics_interval`, and the session is subscribed to it: the host gets it pushed.

use std::sync::Arc;

use bytes::BytesMut;
use majordomo_bus::{Peer, Router, Session, Wakes};
use majordomo_proto::{ErrorBody, ErrorCode, Reply};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio_util::sync::CancellationToken;

use crate::io::{Event, Port};

/// The port name a host creates to opt in to the instance protocol.
pub const CONTROL_PORT: &str = "org.majordomo.0";

/// The topic the metrics snapshot is published on.
pub const METRICS_TOPIC: &str = "$sys.metrics";

/// The id of the subscription the port's session makes for itself; its reply is not shown.
const SUB_ID: &str = "$guest.metrics";

/// Longest line accepted from the host before the session is restarted.
const MAX_LINE: usize = majordomo_proto::DEFAULT_MAX_LINE;

/// Which commands the port lets through: glob patterns over command names, and `@read` for
/// every read-only command of the contract.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    patterns: Vec<glob::Pattern>,
    /// The read-only commands of the contract, when `@read` is listed.
    read: Vec<&'static str>,
}

impl Gate {
    pub fn new(list: &[String]) -> Self {
        let mut g = Gate::default();
        for p in list {
            if p == "@read" {
                g.read = majordomo_proto::contract::catalog()
                    .iter()
                    .filter(|c| c.kind == majordomo_proto::Kind::Read)
                    .map(|c| c.name)
                    .chain(["hello", "ping"])
                    .collect();
            } else if let Ok(pat) = glob::Pattern::new(p) {
                g.patterns.push(pat);
            }
        }
        g
    }

    /// Whether the command `name` may run.
    pub fn allows(&self, name: &str) -> bool {
        self.read.contains(&name) || self.patterns.iter().any(|p| p.matches(name))
    }

    /// `Ok` for a line the session may see, else the refusal to send back. Lines that are not
    /// requests (bad JSON, seed-004 bus lines without `cmd`) go through: the session answers
    /// them; a bus line is allowed exactly when `bus.*` commands are.
    pub fn check(&self, line: &[u8]) -> Result<(), Vec<u8>> {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(line) else {
            return Ok(());
        };
        let id = map
            .get("id")
            .filter(|v| !v.is_object() && !v.is_array())
            .cloned();
        let name: String = match (map.get("cmd"), map.get("command")) {
            (Some(Value::String(c)), _) => c.clone(),
            (Some(_), _) => return Ok(()),
            (None, Some(Value::String(c))) => match c.as_str() {
                "get_status" => "status".into(),
                "get_config" => "config".into(),
                "ping" => "ping".into(),
                other => other.to_string(),
            },
            (None, _) => "bus.pub".into(),
        };
        // The binary framing would carry frames past this gate: the port speaks lines only.
        if name == "hello" && map.get("framing").is_some_and(|f| !f.is_null()) {
            return Err(refusal(
                id,
                "the guest control port carries JSON lines only; send hello without \"framing\"",
            ));
        }
        if self.allows(&name) {
            Ok(())
        } else {
            Err(refusal(
                id,
                &format!(
                    "{name:?} is not allowed on the guest control port; the guest's admin can add it to [guest] control_commands"
                ),
            ))
        }
    }
}

fn refusal(id: Option<Value>, msg: &str) -> Vec<u8> {
    let mut l = Reply::error(id, ErrorBody::new(ErrorCode::Forbidden, msg)).to_line();
    l.push(b'\n');
    l
}

/// Marker id of the `ping` that holds a refusal's place among the session's replies.
const HOLD_ID: &str = "$guest.hold.";

/// One host's session: the pipe into the bus crate's session and what it writes back.
struct Live {
    to_session: WriteHalf<DuplexStream>,
    from_session: ReadHalf<DuplexStream>,
    stop: CancellationToken,
}

/// What the port's server needs from the daemon.
pub struct Control {
    pub session: Session,
    pub router: Arc<Router>,
    pub gate: Gate,
    pub metrics_every: std::time::Duration,
}

impl Control {
    fn start(&self) -> Live {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let id = self.router.next_conn_id();
        // The session ends when the daemon stops or the host leaves.
        let stop = self.session.token.child_token();
        let mut s = self.session.clone();
        s.token = stop.clone();
        self.session.tracker.spawn(s.serve(
            server,
            id,
            Peer {
                via: "virtio port org.majordomo.0",
                ..Peer::default()
            },
            (),
        ));
        let (from_session, to_session) = tokio::io::split(client);
        tracing::info!(conn = id, "a host connected to the guest control port");
        Live {
            to_session,
            from_session,
            stop,
        }
    }

    /// Serves an open port until `token` is cancelled (`Ok`) or the port fails.
    pub async fn serve(&self, mut port: Port, token: &CancellationToken) -> std::io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut line = Vec::new();
        let mut out = BytesMut::with_capacity(8192);
        let mut live: Option<Live> = None;
        // Refusals wait for their place in the reply order: each is queued behind a `ping`
        // sent to the session in its stead, and goes out when that ping's reply comes back.
        let mut held: std::collections::VecDeque<(u64, Vec<u8>)> = Default::default();
        let mut next_hold = 0u64;
        let mut tick = tokio::time::interval(self.metrics_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            enum Got {
                Port(std::io::Result<Event>),
                Session(std::io::Result<usize>),
                Tick,
            }
            let got = tokio::select! {
                _ = token.cancelled() => {
                    if let Some(l) = live.take() { l.stop.cancel(); }
                    return Ok(());
                }
                r = port.next(&mut buf) => Got::Port(r),
                r = async {
                    match live.as_mut() {
                        Some(l) => l.from_session.read_buf(&mut out).await,
                        None => std::future::pending().await,
                    }
                } => Got::Session(r),
                _ = tick.tick(), if live.is_some() => Got::Tick,
            };
            match got {
                Got::Port(r) => match r? {
                    Event::HostArrived => {
                        if live.is_none() {
                            live = Some(self.begin(&mut line).await);
                        }
                    }
                    Event::HostLeft => {
                        if let Some(l) = live.take() {
                            tracing::info!("the host left the guest control port");
                            l.stop.cancel();
                        }
                        line.clear();
                        out.clear();
                        held.clear();
                    }
                    Event::Data(n) => {
                        if live.is_none() {
                            live = Some(self.begin(&mut line).await);
                        }
                        let Some(l) = live.as_mut() else { continue };
                        for part in buf[..n].split_inclusive(|b| *b == b'\n') {
                            line.extend_from_slice(part);
                            if !part.ends_with(b"\n") {
                                if line.len() > MAX_LINE {
                                    // The session would close on it; refuse and start afresh.
                                    let r = refusal(None, "line too long; closing the session");
                                    let _ = port.write_all(&r).await;
                                    line.clear();
                                    l.stop.cancel();
                                }
                                continue;
                            }
                            let whole = std::mem::take(&mut line);
                            match self.gate.check(&whole) {
                                Ok(()) => {
                                    if l.to_session.write_all(&whole).await.is_err() {
                                        break;
                                    }
                                }
                                Err(refused) => {
                                    next_hold += 1;
                                    held.push_back((next_hold, refused));
                                    let ping = format!(
                                        "{{\"id\":\"{HOLD_ID}{next_hold}\",\"cmd\":\"ping\"}}\n"
                                    );
                                    if l.to_session.write_all(ping.as_bytes()).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                },
                Got::Session(Ok(0)) | Got::Session(Err(_)) => {
                    // The session closed (first-line deadline, an error): the next bytes start
                    // another one.
                    if let Some(l) = live.take() {
                        l.stop.cancel();
                    }
                    out.clear();
                    held.clear();
                }
                Got::Session(Ok(_)) => {
                    while let Some(pos) = out.iter().position(|b| *b == b'\n') {
                        let mut l = out.split_to(pos + 1).to_vec();
                        if is_own_sub_reply(&l) {
                            continue;
                        }
                        if let Some(n) = hold_of(&l) {
                            match held.iter().position(|(k, _)| *k == n) {
                                Some(i) => {
                                    l = held.remove(i).map(|(_, r)| r).unwrap_or_default();
                                }
                                None => continue,
                            }
                        }
                        if let Err(e) = port.write_all(&l).await {
                            tracing::debug!(error = %e, "reply dropped");
                        }
                    }
                }
                Got::Tick => {
                    let data = crate::metrics::snapshot();
                    if let Ok(bytes) = serde_json::to_vec(&data) {
                        let mut wakes = Wakes::default();
                        self.router.publish(
                            METRICS_TOPIC,
                            None,
                            &bytes,
                            &self.router.limits(),
                            &mut wakes,
                        );
                        wakes.flush();
                    }
                }
            }
        }
    }

    /// Starts a session for a host that just arrived, subscribed to the pushed metrics.
    async fn begin(&self, line: &mut Vec<u8>) -> Live {
        line.clear();
        let mut l = self.start();
        let sub = format!(
            "{{\"id\":\"{SUB_ID}\",\"cmd\":\"bus.sub\",\"pattern\":\"{METRICS_TOPIC}\"}}\n"
        );
        let _ = l.to_session.write_all(sub.as_bytes()).await;
        l
    }
}

/// The hold number of a reply to one of our placeholder pings.
fn hold_of(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(format!("{{\"id\":\"{HOLD_ID}").as_bytes())?;
    let end = rest.iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

fn is_own_sub_reply(line: &[u8]) -> bool {
    line.starts_with(format!("{{\"id\":\"{SUB_ID}\"").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_default_is_read_only_plus_bus() {
        let g = Gate::new(&["@read".into(), "bus.*".into()]);
        assert!(g.check(br#"{"id":1,"cmd":"status"}"#).is_ok());
        assert!(g.check(br#"{"cmd":"ping"}"#).is_ok());
        assert!(
            g.check(br#"{"cmd":"bus.pub","topic":"a","data":1}"#)
                .is_ok()
        );
        assert!(g.check(br#"{"command":"get_status"}"#).is_ok());
        let r = g.check(br#"{"id":7,"cmd":"shutdown"}"#).unwrap_err();
        let v: Value = serde_json::from_slice(&r).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["code"], "forbidden");
        assert!(g.check(br#"{"cmd":"reload"}"#).is_err());
        assert!(g.check(br#"{"command":"stop"}"#).is_err());
        assert!(
            g.check(br#"{"cmd":"hello","framing":"binary-v1"}"#)
                .is_err()
        );
        // Not a request: the session answers it.
        assert!(g.check(b"not json").is_ok());
        let none = Gate::new(&[]);
        assert!(none.check(br#"{"cmd":"status"}"#).is_err());
        assert!(
            Gate::new(&["*".into()])
                .check(br#"{"cmd":"shutdown"}"#)
                .is_ok()
        );
    }

    #[test]
    fn own_subscription_reply_is_recognised() {
        assert!(is_own_sub_reply(
            br#"{"id":"$guest.metrics","ok":{"sid":1}}"#
        ));
        assert!(!is_own_sub_reply(br#"{"id":1,"ok":"pong"}"#));
        assert_eq!(hold_of(br#"{"id":"$guest.hold.42","ok":"pong"}"#), Some(42));
        assert_eq!(hold_of(br#"{"id":42,"ok":"pong"}"#), None);
    }
}
