//! The message bus: endpoints, events, topics, queue groups and request/reply, carried on the
//! instance socket beside the control commands.
//!
//! The [`Router`] is shared by every connection of the control subsystem. It holds who is
//! registered as which endpoint, the subscriptions, and the requests waiting for a reply. A
//! connection's reader calls it for each bus line it reads; the router encodes what must be sent
//! straight into the target connections' [`outbox::Outbox`]es (each bounded, each drained by its
//! own writer task), and the reader wakes those writers once per read batch. So a slow consumer
//! only ever fills its own queue, and a publisher never waits for anyone.
//!
//! Hub events are published on `$sys.<kind>` topics (`$sys.endpoint.up`, `$sys.program.state`, ...)
//! by [`forward_hub`].

pub mod cli;
pub mod outbox;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
pub use majordomo_proto::bus as wire;
use majordomo_proto::bus::{BusLine, CompatRegister, CompatSendEvent};
use majordomo_proto::{ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::config::{Dur, Problem, Secret, Size};
use crate::hub::{Event, Hub};
pub use outbox::{Limits, Outbox, OutboxRef, SlowConsumer, Wakes};

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// `[bus]`: the message bus on the instance socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// Largest `data` of one message, event, request or reply.
    pub max_message: Size,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Bound of each connection's outbound queue, in messages.
    pub queue_messages: usize,
    /// Bound of each connection's outbound queue, in bytes.
    pub queue_bytes: Size,
    /// What happens to a consumer whose queue is full: `drop-oldest` (counted and announced to it) or `disconnect`.
    pub slow_consumer: SlowConsumer,
    /// Deadline of a request that names none (`timeout_ms`).
    pub request_timeout: Dur,
    /// Longest an event may wait for its target to register (`wait_ms`).
    pub max_wait: Dur,
    /// Publish every internal event on `$sys.<kind>` topics (`$sys.endpoint.up`, `$sys.program.state`, ...).
    pub system_topics: bool,
    /// Topics anyone may publish to (patterns); an endpoint listed in `endpoints` with its own `publish` uses that instead.
    pub publish: Vec<String>,
    /// Topics anyone may subscribe to (patterns); an endpoint listed in `endpoints` with its own `subscribe` uses that instead.
    pub subscribe: Vec<String>,
    /// Per-endpoint access: `[bus.endpoints.worker-1]` with `token`, `publish`, `subscribe`.
    pub endpoints: BTreeMap<String, EndpointAccess>,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            max_message: Size::mib(1),
            max_subscriptions: 1000,
            queue_messages: 65_536,
            queue_bytes: Size::mib(8),
            slow_consumer: SlowConsumer::DropOldest,
            request_timeout: Dur::secs(10),
            max_wait: Dur::secs(60),
            system_topics: true,
            publish: vec![">".into()],
            subscribe: vec![">".into()],
            endpoints: BTreeMap::new(),
        }
    }
}

/// `[bus.endpoints.<id>]`: who may register as `<id>` and where it may publish and subscribe.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointAccess {
    /// Registering as this endpoint requires `"token":"..."` with this value.
    pub token: Option<Secret>,
    /// Topics this endpoint may publish to (patterns); unset: `[bus] publish`.
    pub publish: Option<Vec<String>>,
    /// Topics this endpoint may subscribe to (patterns); unset: `[bus] subscribe`.
    pub subscribe: Option<Vec<String>>,
}

impl BusConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            messages: self.queue_messages.max(1),
            bytes: usize::try_from(self.queue_bytes.bytes()).unwrap_or(usize::MAX),
            policy: self.slow_consumer,
        }
    }

    fn max_message(&self) -> usize {
        usize::try_from(self.max_message.bytes()).unwrap_or(usize::MAX)
    }

    /// Semantic checks, called from `Config::validate`.
    pub fn validate(&self, problems: &mut Vec<Problem>) {
        let mut patterns = |field: String, list: &[String]| {
            for (i, p) in list.iter().enumerate() {
                if let Err(e) = wire::check_topic(p, true) {
                    problems.push(Problem::at(
                        format!("{field}[{i}]"),
                        format!("topic pattern {p:?} {e}"),
                        "write dot-separated tokens, `*` for one token, a final `>` for the rest, e.g. \"orders.>\"",
                    ));
                }
            }
        };
        patterns("bus.publish".into(), &self.publish);
        patterns("bus.subscribe".into(), &self.subscribe);
        for (id, a) in &self.endpoints {
            if let Some(p) = &a.publish {
                patterns(format!("bus.endpoints.{id}.publish"), p);
            }
            if let Some(p) = &a.subscribe {
                patterns(format!("bus.endpoints.{id}.subscribe"), p);
            }
        }
        for (id, a) in &self.endpoints {
            if let Err(e) = check_endpoint_id(id) {
                problems.push(Problem::at(
                    format!("bus.endpoints.{id}"),
                    format!("endpoint id {id:?} {e}"),
                    "use 1-128 letters, digits, '-', '_', '.', ':' or '@'",
                ));
            }
            if matches!(&a.token, Some(t) if t.expose().is_empty()) {
                problems.push(Problem::at(
                    format!("bus.endpoints.{id}.token"),
                    "an empty token",
                    "remove the field, or set a long random string",
                ));
            }
        }
        if self.max_message.bytes() < 64 {
            problems.push(Problem::at(
                "bus.max_message",
                format!("{} is too small for a message", self.max_message),
                "use at least 64 bytes; the default is 1MiB",
            ));
        }
        if self.queue_messages == 0 {
            problems.push(Problem::at(
                "bus.queue_messages",
                "0 would drop every message",
                "use a positive number; the default is 65536",
            ));
        }
        if self.queue_bytes.bytes() < self.max_message.bytes() {
            problems.push(Problem::at(
                "bus.queue_bytes",
                format!(
                    "{} cannot hold one message of max_message ({})",
                    self.queue_bytes, self.max_message
                ),
                "make queue_bytes at least max_message",
            ));
        }
        if self.request_timeout.get().is_zero() {
            problems.push(Problem::at(
                "bus.request_timeout",
                "a timeout of 0 fails every request",
                "use e.g. \"10s\"",
            ));
        }
    }
}

/// Whether every topic `pattern` can match is matched by `allowed`: `*` in `allowed` covers one
/// token (a `*` too, but not `>`), a final `>` covers the rest.
fn covers(allowed: &str, pattern: &str) -> bool {
    let mut a = allowed.split('.');
    let mut p = pattern.split('.');
    loop {
        match (a.next(), p.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn check_endpoint_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1-128 characters".into());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c))
    {
        return Err("may only contain letters, digits, '-', '_', '.', ':' and '@'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_permission_covers_patterns() {
        assert!(covers(">", "a.>"));
        assert!(covers("orders.*", "orders.new"));
        assert!(covers("orders.*", "orders.*"));
        assert!(!covers("orders.*", "orders.>"));
        assert!(!covers("orders.*", "orders.a.b"));
        assert!(covers("orders.>", "orders.*.new"));
        assert!(!covers("orders.new", "orders.*"));
    }

    #[test]
    fn default_bus_config_is_valid() {
        let mut p = Vec::new();
        BusConfig::default().validate(&mut p);
        assert!(p.is_empty());
        let bad = BusConfig {
            publish: vec!["a..b".into()],
            queue_messages: 0,
            ..Default::default()
        };
        bad.validate(&mut p);
        assert_eq!(p.len(), 2);
    }
}

// ---------------------------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------------------------

/// Prefix of reply subjects: `_INBOX.<token>`.
const INBOX: &str = "_INBOX.";

struct Sub {
    conn: u64,
    sid: u64,
    pattern: Arc<str>,
    queue: Option<Arc<str>>,
    outbox: OutboxRef,
}

#[derive(Default)]
struct Subs {
    literal: HashMap<Arc<str>, Vec<Arc<Sub>>>,
    wild: Vec<Arc<Sub>>,
    /// Matches by topic, cleared on every subscription change.
    cache: HashMap<Box<str>, Arc<[Arc<Sub>]>>,
}

/// Bumped on every subscription change; connections keep their last lookup while it holds.
static SUBS_GENERATION: AtomicU64 = AtomicU64::new(1);

impl Subs {
    fn lookup(&mut self, topic: &str) -> Arc<[Arc<Sub>]> {
        if let Some(hit) = self.cache.get(topic) {
            return hit.clone();
        }
        let mut out: Vec<Arc<Sub>> = self.literal.get(topic).cloned().unwrap_or_default();
        out.extend(
            self.wild
                .iter()
                .filter(|s| wire::matches(&s.pattern, topic))
                .cloned(),
        );
        let out: Arc<[Arc<Sub>]> = out.into();
        if self.cache.len() >= 4096 {
            self.cache.clear();
        }
        self.cache.insert(topic.into(), out.clone());
        out
    }

    fn add(&mut self, s: Arc<Sub>) {
        self.cache.clear();
        SUBS_GENERATION.fetch_add(1, Ordering::Release);
        if wire::is_literal(&s.pattern) {
            self.literal.entry(s.pattern.clone()).or_default().push(s);
        } else {
            self.wild.push(s);
        }
    }

    fn remove(&mut self, conn: u64, sid: Option<u64>) {
        self.cache.clear();
        SUBS_GENERATION.fetch_add(1, Ordering::Release);
        let keep = |s: &Arc<Sub>| !(s.conn == conn && sid.is_none_or(|x| x == s.sid));
        self.wild.retain(keep);
        self.literal.retain(|_, v| {
            v.retain(keep);
            !v.is_empty()
        });
    }
}

/// A connection's last published topic and its subscribers at `generation`.
pub struct LastTopic {
    topic: Box<str>,
    generation: u64,
    targets: Arc<[Arc<Sub>]>,
}

struct ConnInfo {
    outbox: OutboxRef,
    endpoint: Option<String>,
    /// Registered with the seed-004 shape: events arrive in that shape.
    compat: bool,
    pid: Option<i32>,
    uid: Option<u32>,
    since: SystemTime,
    subs: BTreeMap<u64, (Arc<str>, Option<Arc<str>>)>,
}

enum Pending {
    /// A request waiting for its reply.
    Request { conn: u64, id: Box<RawValue> },
    /// An event waiting for its target to register.
    Send {
        conn: u64,
        id: Option<Box<RawValue>>,
        from: Option<String>,
        target: String,
        event: String,
        data: Box<RawValue>,
    },
}

#[derive(Default)]
struct Inner {
    conns: HashMap<u64, ConnInfo>,
    endpoints: HashMap<String, u64>,
    subs: Subs,
    pending: HashMap<u64, Pending>,
    parked: HashMap<String, Vec<u64>>,
}

/// Counters shown by `bus ls`.
#[derive(Default, Serialize)]
pub struct Counters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub events: AtomicU64,
    pub requests: AtomicU64,
    pub replies: AtomicU64,
    pub no_responders: AtomicU64,
    pub timeouts: AtomicU64,
    pub errors: AtomicU64,
}

/// The shared routing state of the bus.
pub struct Router {
    inner: Mutex<Inner>,
    hub: Hub,
    limits: Mutex<(Limits, Arc<BusConfig>)>,
    /// Bumped on every config change, so connections re-read it only then.
    generation: AtomicU64,
    next_token: AtomicU64,
    pub counters: Counters,
}

type BusResult = Result<Option<Value>, ErrorBody>;

fn err(code: ErrorCode, msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, msg)
}

fn now_ts() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl Router {
    pub fn new(hub: Hub, cfg: &BusConfig) -> Self {
        Self {
            inner: Mutex::default(),
            hub,
            limits: Mutex::new((cfg.limits(), Arc::new(cfg.clone()))),
            generation: AtomicU64::new(1),
            next_token: AtomicU64::new(1),
            counters: Counters::default(),
        }
    }

    /// Takes a new `[bus]` section live.
    pub fn set_config(&self, cfg: &BusConfig) {
        if let Ok(mut l) = self.limits.lock()
            && *l.1 != *cfg
        {
            *l = (cfg.limits(), Arc::new(cfg.clone()));
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
            .lock()
            .map(|l| l.0)
            .unwrap_or_else(|_| BusConfig::default().limits())
    }

    pub fn config(&self) -> Arc<BusConfig> {
        self.limits.lock().map(|l| l.1.clone()).unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; the data stays usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_conn(&self, outbox: OutboxRef, pid: Option<i32>, uid: Option<u32>) {
        self.lock().conns.insert(
            outbox.conn,
            ConnInfo {
                outbox,
                endpoint: None,
                compat: false,
                pid,
                uid,
                since: SystemTime::now(),
                subs: BTreeMap::new(),
            },
        );
    }

    /// Forgets a connection: its endpoint goes down, its subscriptions and requests go away.
    pub fn remove_conn(&self, conn: u64) {
        let down = {
            let mut inner = self.lock();
            let info = inner.conns.remove(&conn);
            inner.subs.remove(conn, None);
            inner.pending.retain(|_, p| match p {
                Pending::Request { conn: c, .. } | Pending::Send { conn: c, .. } => *c != conn,
            });
            match info.and_then(|i| i.endpoint) {
                Some(id) if inner.endpoints.get(&id) == Some(&conn) => {
                    inner.endpoints.remove(&id);
                    Some(id)
                }
                _ => None,
            }
        };
        if let Some(id) = down {
            self.hub.emit(Event::EndpointDown {
                id,
                reason: "disconnected".into(),
            });
        }
    }

    /// The publish permissions of a connection.
    fn allowed(&self, cfg: &BusConfig, endpoint: Option<&str>, publish: bool, topic: &str) -> bool {
        let list = endpoint
            .and_then(|e| cfg.endpoints.get(e))
            .and_then(|a| {
                if publish {
                    a.publish.as_ref()
                } else {
                    a.subscribe.as_ref()
                }
            })
            .unwrap_or(if publish {
                &cfg.publish
            } else {
                &cfg.subscribe
            });
        if publish {
            list.iter().any(|p| wire::matches(p, topic))
        } else {
            list.iter().any(|p| covers(p, topic))
        }
    }

    /// Publishes `data` (JSON text) on `topic`; returns how many subscribers got it.
    pub fn publish(
        &self,
        topic: &str,
        reply_to: Option<&str>,
        data: &[u8],
        limits: &Limits,
        wakes: &mut Wakes,
    ) -> usize {
        let targets = self.lock().subs.lookup(topic);
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        self.deliver(&targets, topic, reply_to, data, limits, wakes)
    }

    /// [`Router::publish`] for a connection that remembers its last topic's subscribers: a
    /// publisher repeating a topic skips the router's lock while no subscription changed.
    fn publish_cached(
        &self,
        last: &mut Option<LastTopic>,
        topic: &str,
        data: &[u8],
        limits: &Limits,
        wakes: &mut Wakes,
    ) -> usize {
        let generation = SUBS_GENERATION.load(Ordering::Acquire);
        let targets = match last {
            Some(l) if l.generation == generation && &*l.topic == topic => l.targets.clone(),
            _ => {
                let mut inner = self.lock();
                // Read under the lock: a change after this bumps it again.
                let generation = SUBS_GENERATION.load(Ordering::Acquire);
                let targets = inner.subs.lookup(topic);
                drop(inner);
                *last = Some(LastTopic {
                    topic: topic.into(),
                    generation,
                    targets: targets.clone(),
                });
                targets
            }
        };
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        self.deliver(&targets, topic, None, data, limits, wakes)
    }

    fn deliver(
        &self,
        targets: &[Arc<Sub>],
        topic: &str,
        reply_to: Option<&str>,
        data: &[u8],
        limits: &Limits,
        wakes: &mut Wakes,
    ) -> usize {
        let mut n = 0;
        let mut groups: Vec<(&str, Vec<&Arc<Sub>>)> = Vec::new();
        for s in targets {
            match &s.queue {
                None => {
                    if s.outbox.push_msg(limits, s.sid, topic, reply_to, data) {
                        wakes.add(&s.outbox);
                    }
                    n += 1;
                }
                Some(q) => match groups.iter_mut().find(|(name, _)| *name == &**q) {
                    Some((_, members)) => members.push(s),
                    None => groups.push((q, vec![s])),
                },
            }
        }
        for (_, members) in groups {
            let pick = self.next_token.fetch_add(1, Ordering::Relaxed) as usize % members.len();
            let s = members[pick];
            if s.outbox.push_msg(limits, s.sid, topic, reply_to, data) {
                wakes.add(&s.outbox);
            }
            n += 1;
        }
        self.counters
            .delivered
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// A deadline passed: fails the request or parked event `token` if it is still waiting.
    pub fn expire(&self, token: u64, wakes: &mut Wakes) {
        let limits = self.limits();
        let mut inner = self.lock();
        let Some(p) = inner.pending.remove(&token) else {
            return;
        };
        let (conn, id, body) = match p {
            Pending::Request { conn, id } => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                (
                    conn,
                    Some(id),
                    err(
                        ErrorCode::Timeout,
                        "no reply before the request's deadline; raise timeout_ms, or check the responder",
                    ),
                )
            }
            Pending::Send {
                conn, id, target, ..
            } => (
                conn,
                id,
                err(
                    ErrorCode::NotFound,
                    format!(
                        "endpoint {target:?} did not register within the event's wait time; the event was not delivered"
                    ),
                ),
            ),
        };
        if let Some(c) = inner.conns.get(&conn) {
            let line = reply_line(id.as_deref(), Err(body));
            c.outbox.push_line(&limits, &line, wakes, &c.outbox);
        }
    }

    /// Publishes one hub event on `$sys.<kind>`.
    pub fn publish_system(&self, event: &Event) {
        let topic = format!("$sys.{}", event.kind());
        let Ok(data) = serde_json::to_vec(event) else {
            return;
        };
        let limits = self.limits();
        let mut wakes = Wakes::default();
        self.publish(&topic, None, &data, &limits, &mut wakes);
        wakes.flush();
    }

    /// `bus ls`: endpoints, connections with their subscriptions and queue depth, counters.
    pub fn list(&self) -> Value {
        let inner = self.lock();
        let mut conns: Vec<(&u64, &ConnInfo)> = inner.conns.iter().collect();
        conns.sort_by_key(|(id, _)| **id);
        let connections: Vec<Value> = conns
            .iter()
            .map(|(id, c)| {
                let depth = c.outbox.depth();
                json!({
                    "conn": id,
                    "endpoint": c.endpoint,
                    "pid": c.pid,
                    "uid": c.uid,
                    "since": humantime::format_rfc3339_seconds(c.since).to_string(),
                    "subscriptions": c.subs.iter().map(|(sid, (p, q))| json!({"sid": sid, "pattern": &**p, "queue": q.as_deref()})).collect::<Vec<_>>(),
                    "queued_msgs": depth.queued_msgs,
                    "queued_bytes": depth.queued_bytes,
                    "sent": depth.sent,
                    "dropped": depth.dropped,
                })
            })
            .collect();
        let mut endpoints: Vec<Value> = inner
            .endpoints
            .iter()
            .map(|(id, conn)| {
                let pid = inner.conns.get(conn).and_then(|c| c.pid);
                json!({"id": id, "conn": conn, "pid": pid})
            })
            .collect();
        endpoints.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "endpoints": endpoints,
            "connections": connections,
            "counters": {
                "connections": inner.conns.len(),
                "subscriptions": inner.conns.values().map(|c| c.subs.len()).sum::<usize>(),
                "published": get(&c.published),
                "delivered": get(&c.delivered),
                "events": get(&c.events),
                "requests": get(&c.requests),
                "replies": get(&c.replies),
                "no_responders": get(&c.no_responders),
                "timeouts": get(&c.timeouts),
                "errors": get(&c.errors),
                "dropped": inner.conns.values().map(|c| c.outbox.depth().dropped).sum::<u64>(),
            }
        })
    }
}

/// A reply line: `{"id":..,"ok":..}` or `{"id":..,"error":..}`, id raw.
fn reply_line(id: Option<&RawValue>, body: Result<&[u8], ErrorBody>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    if let Some(id) = id {
        out.extend_from_slice(b"\"id\":");
        out.extend_from_slice(id.get().as_bytes());
        out.push(b',');
    }
    match body {
        Ok(data) => {
            out.extend_from_slice(b"\"ok\":");
            out.extend_from_slice(if data.is_empty() { b"null" } else { data });
        }
        Err(e) => {
            out.extend_from_slice(b"\"error\":");
            out.extend_from_slice(&serde_json::to_vec(&e).unwrap_or_default());
        }
    }
    out.push(b'}');
    out
}

// ---------------------------------------------------------------------------------------------
// One connection's bus state
// ---------------------------------------------------------------------------------------------

/// What a connection's reader keeps for the bus.
pub struct ConnBus {
    pub router: Arc<Router>,
    pub outbox: OutboxRef,
    pub endpoint: Option<String>,
    /// Deadlines of this connection's requests and parked events.
    pub deadlines: BTreeMap<(tokio::time::Instant, u64), ()>,
    next_sid: u64,
    /// Set by a handler whose reply comes later (requests, parked events).
    deferred: bool,
    /// The `[bus]` section and queue limits in force, re-read when the router's generation moves.
    pub cfg: Arc<BusConfig>,
    pub limits: Limits,
    generation: u64,
    /// Size of `deadlines` above which answered entries are pruned.
    prune_at: usize,
    last_topic: Option<LastTopic>,
}

impl ConnBus {
    pub fn new(router: Arc<Router>, outbox: OutboxRef) -> Self {
        Self {
            router,
            outbox,
            endpoint: None,
            deadlines: BTreeMap::new(),
            next_sid: 1,
            deferred: false,
            cfg: Arc::new(BusConfig::default()),
            limits: BusConfig::default().limits(),
            generation: 0,
            prune_at: 1024,
            last_topic: None,
        }
    }

    /// Adds a deadline; now and then forgets those whose request was answered meanwhile, so a
    /// busy requester holds memory for its outstanding requests only.
    fn add_deadline(&mut self, at: tokio::time::Instant, token: u64) {
        self.deadlines.insert((at, token), ());
        if self.deadlines.len() > self.prune_at {
            let inner = self.router.lock();
            self.deadlines
                .retain(|(_, t), _| inner.pending.contains_key(t));
            drop(inner);
            self.prune_at = (self.deadlines.len() * 2).max(1024);
        }
    }

    /// Picks up a changed `[bus]` section (one atomic load when nothing changed).
    pub fn refresh(&mut self) {
        let g = self.router.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.generation = g;
            self.cfg = self.router.config();
            self.limits = self.router.limits();
        }
    }

    pub fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.deadlines.keys().next().map(|(t, _)| *t)
    }

    /// Fails whatever passed its deadline.
    pub fn expire_due(&mut self, wakes: &mut Wakes) {
        let now = tokio::time::Instant::now();
        while let Some((&(t, token), _)) = self.deadlines.iter().next() {
            if t > now {
                break;
            }
            self.deadlines.remove(&(t, token));
            self.router.expire(token, wakes);
        }
    }

    fn reply(&self, limits: &Limits, id: Option<&RawValue>, r: BusResult, wakes: &mut Wakes) {
        match r {
            Ok(None) if id.is_none() => {}
            Ok(v) => {
                let data = v
                    .map(|v| serde_json::to_vec(&v).unwrap_or_default())
                    .unwrap_or_else(|| b"true".to_vec());
                let line = reply_line(id, Ok(&data));
                self.outbox.push_line(limits, &line, wakes, &self.outbox);
            }
            Err(e) => {
                self.router.counters.errors.fetch_add(1, Ordering::Relaxed);
                let line = reply_line(id, Err(e));
                self.outbox.push_line(limits, &line, wakes, &self.outbox);
            }
        }
    }

    /// Handles one bus line. Replies (and errors) go to this connection's outbox.
    pub fn handle(&mut self, line: &BusLine<'_>, wakes: &mut Wakes) {
        let limits = self.limits;
        if let Some(kind) = &line.compat_type {
            return self.handle_compat(kind, line, &limits, wakes);
        }
        let cmd = line.cmd.as_deref().unwrap_or("");
        self.deferred = false;
        let r = match cmd {
            "bus.pub" => self.publish(line, &limits, wakes),
            "bus.sub" => self.subscribe(line),
            "bus.unsub" => self.unsubscribe(line),
            "bus.register" => self.register(line, false, wakes),
            "bus.unregister" => self.unregister(),
            "bus.send" => self.send(line, &limits, wakes),
            "bus.request" => self.request(line, &limits, wakes),
            "bus.reply" => self.answer(line, &limits, wakes),
            "bus.ls" => Ok(Some(self.router.list())),
            other => Err(err(
                ErrorCode::UnknownCommand,
                format!(
                    "unknown bus command {other:?}; known: bus.register, bus.unregister, bus.send, bus.pub, bus.sub, bus.unsub, bus.request, bus.reply, bus.ls"
                ),
            )),
        };
        if self.deferred && r.is_ok() {
            // The reply comes from the responder, the registering target, or the deadline.
            return;
        }
        self.reply(&limits, line.id, r, wakes);
    }

    fn data<'a>(&self, line: &BusLine<'a>) -> Result<&'a [u8], ErrorBody> {
        let data = line.data.map(|d| d.get().as_bytes()).unwrap_or(b"null");
        let max = self.cfg.clone().max_message();
        if data.len() > max {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "data of {} bytes exceeds [bus] max_message ({max} bytes); send less, or raise the limit",
                    data.len()
                ),
            ));
        }
        Ok(data)
    }

    fn topic<'b>(
        &self,
        line: &'b BusLine<'_>,
        field: &str,
        wild: bool,
    ) -> Result<&'b str, ErrorBody> {
        let t = match field {
            "topic" => line.topic.as_deref(),
            _ => line.pattern.as_deref(),
        }
        .ok_or_else(|| err(ErrorCode::BadRequest, format!("missing \"{field}\"")))?;
        wire::check_topic(t, wild)
            .map_err(|e| err(ErrorCode::BadRequest, format!("{field} {t:?} {e}")))?;
        Ok(t)
    }

    fn may_publish(&self, topic: &str) -> Result<(), ErrorBody> {
        if topic.starts_with("$sys.") || topic.starts_with(INBOX) {
            return Err(err(
                ErrorCode::Forbidden,
                format!(
                    "{topic:?} is reserved for the daemon (`$sys.>`) or for replies (`_INBOX.>`, use bus.reply)"
                ),
            ));
        }
        let cfg = self.cfg.clone();
        if !self
            .router
            .allowed(&cfg, self.endpoint.as_deref(), true, topic)
        {
            return Err(err(
                ErrorCode::Forbidden,
                format!(
                    "{} may not publish to {topic:?}; see [bus] publish and [bus.endpoints] in the config",
                    self.who()
                ),
            ));
        }
        Ok(())
    }

    fn who(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("endpoint {e:?}"),
            None => "an unregistered connection".into(),
        }
    }

    /// A binary-framed publish.
    pub fn publish_raw(&mut self, topic: &str, data: &[u8], wakes: &mut Wakes) {
        let limits = self.limits;
        let r = (|| {
            wire::check_topic(topic, false)
                .map_err(|e| err(ErrorCode::BadRequest, format!("topic {topic:?} {e}")))?;
            let max = self.cfg.clone().max_message();
            if data.len() > max {
                return Err(err(
                    ErrorCode::TooLarge,
                    format!(
                        "data of {} bytes exceeds [bus] max_message ({max} bytes)",
                        data.len()
                    ),
                ));
            }
            if serde_json::from_slice::<&RawValue>(data).is_err() {
                return Err(err(ErrorCode::BadJson, "published data is not JSON text"));
            }
            self.may_publish(topic)?;
            self.router
                .publish_cached(&mut self.last_topic, topic, data, &limits, wakes);
            Ok(None)
        })();
        self.reply(&limits, None, r, wakes);
    }

    fn publish(&mut self, line: &BusLine<'_>, limits: &Limits, wakes: &mut Wakes) -> BusResult {
        let topic = self.topic(line, "topic", false)?;
        let data = self.data(line)?;
        if let Some(token) = topic.strip_prefix(INBOX) {
            return self.route_reply(token, data, limits, wakes);
        }
        self.may_publish(topic)?;
        let n = self
            .router
            .publish_cached(&mut self.last_topic, topic, data, limits, wakes);
        Ok(line.id.map(|_| json!({ "delivered": n })))
    }

    fn subscribe(&mut self, line: &BusLine<'_>) -> BusResult {
        let pattern = self.topic(line, "pattern", true)?;
        let queue = match line.queue.as_deref() {
            Some(q) if q.is_empty() || q.len() > 128 || q.contains(char::is_whitespace) => {
                return Err(err(
                    ErrorCode::BadRequest,
                    "queue must be 1-128 characters without whitespace",
                ));
            }
            q => q.map(Arc::<str>::from),
        };
        let cfg = self.cfg.clone();
        if !self
            .router
            .allowed(&cfg, self.endpoint.as_deref(), false, pattern)
        {
            return Err(err(
                ErrorCode::Forbidden,
                format!(
                    "{} may not subscribe to {pattern:?}; see [bus] subscribe and [bus.endpoints] in the config",
                    self.who()
                ),
            ));
        }
        let conn = self.outbox.conn;
        let mut inner = self.router.lock();
        let Some(info) = inner.conns.get_mut(&conn) else {
            return Err(err(ErrorCode::Internal, "connection not known to the bus"));
        };
        if info.subs.len() >= cfg.max_subscriptions {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "this connection already holds {} subscriptions ([bus] max_subscriptions); unsubscribe first or raise the limit",
                    info.subs.len()
                ),
            ));
        }
        let sid = match line.sid {
            Some(s) if info.subs.contains_key(&s) => {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!("sid {s} is already used on this connection"),
                ));
            }
            Some(s) => s,
            None => {
                while info.subs.contains_key(&self.next_sid) {
                    self.next_sid += 1;
                }
                self.next_sid
            }
        };
        let pattern: Arc<str> = pattern.into();
        info.subs.insert(sid, (pattern.clone(), queue.clone()));
        inner.subs.add(Arc::new(Sub {
            conn,
            sid,
            pattern,
            queue,
            outbox: self.outbox.clone(),
        }));
        Ok(Some(json!({ "sid": sid })))
    }

    fn unsubscribe(&mut self, line: &BusLine<'_>) -> BusResult {
        let sid = line
            .sid
            .ok_or_else(|| err(ErrorCode::BadRequest, "missing \"sid\""))?;
        let conn = self.outbox.conn;
        let mut inner = self.router.lock();
        let removed = inner
            .conns
            .get_mut(&conn)
            .and_then(|i| i.subs.remove(&sid))
            .is_some();
        if !removed {
            return Err(err(
                ErrorCode::NotFound,
                format!("no subscription {sid} on this connection"),
            ));
        }
        inner.subs.remove(conn, Some(sid));
        Ok(Some(json!({ "sid": sid })))
    }

    fn register(&mut self, line: &BusLine<'_>, compat: bool, wakes: &mut Wakes) -> BusResult {
        let id = line
            .endpoint
            .as_deref()
            .ok_or_else(|| err(ErrorCode::BadRequest, "missing \"endpoint\""))?;
        self.register_id(
            id,
            line.token.as_deref(),
            line.takeover == Some(true),
            compat,
            wakes,
        )
    }

    fn register_id(
        &mut self,
        id: &str,
        token: Option<&str>,
        takeover: bool,
        compat: bool,
        wakes: &mut Wakes,
    ) -> BusResult {
        check_endpoint_id(id)
            .map_err(|e| err(ErrorCode::BadRequest, format!("endpoint id {id:?} {e}")))?;
        if let Some(current) = &self.endpoint {
            if current == id {
                return Ok(Some(json!({ "endpoint": id })));
            }
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "this connection is already registered as {current:?}; unregister first or use another connection"
                ),
            ));
        }
        let cfg = self.cfg.clone();
        if let Some(expected) = cfg.endpoints.get(id).and_then(|a| a.token.as_ref())
            && !token.is_some_and(|t| crate::control::tokens_match(expected.expose(), t))
        {
            return Err(err(
                ErrorCode::Forbidden,
                format!(
                    "endpoint {id:?} requires its token ([bus.endpoints.{id}] token); send \"token\" with bus.register"
                ),
            ));
        }
        let limits = self.limits;
        let conn = self.outbox.conn;
        let mut events = Vec::new();
        let mut delivered = Vec::new();
        {
            let mut inner = self.router.lock();
            if let Some(&old) = inner.endpoints.get(id) {
                if !takeover {
                    let pid = inner.conns.get(&old).and_then(|c| c.pid);
                    return Err(err(
                        ErrorCode::Conflict,
                        format!(
                            "endpoint {id:?} is already registered by another connection{}; pass \"takeover\":true to replace it",
                            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                        ),
                    ));
                }
                if let Some(info) = inner.conns.get_mut(&old) {
                    info.endpoint = None;
                    info.outbox.kick(
                        "taken_over",
                        &format!("endpoint {id:?} was taken over by another connection; closing"),
                    );
                }
                events.push(Event::EndpointDown {
                    id: id.to_string(),
                    reason: "taken over".into(),
                });
            }
            inner.endpoints.insert(id.to_string(), conn);
            if let Some(info) = inner.conns.get_mut(&conn) {
                info.endpoint = Some(id.to_string());
                info.compat = compat;
            }
            // Events that were waiting for this endpoint.
            for token in inner.parked.remove(id).unwrap_or_default() {
                if let Some(p) = inner.pending.remove(&token) {
                    delivered.push(p);
                }
            }
            let target = self.outbox.clone();
            for p in &delivered {
                if let Pending::Send {
                    conn: sender,
                    id: rid,
                    from,
                    target: t,
                    event,
                    data,
                } = p
                {
                    let ts = now_ts();
                    if target.push_droppable(&limits, |b| {
                        encode_event(
                            b,
                            compat,
                            event,
                            from.as_deref(),
                            t,
                            data.get().as_bytes(),
                            &ts,
                        )
                    }) {
                        wakes.add(&target);
                    }
                    self.router.counters.events.fetch_add(1, Ordering::Relaxed);
                    if let (Some(rid), Some(s)) = (rid, inner.conns.get(sender)) {
                        let line = reply_line(Some(rid), Ok(br#"{"delivered":true}"#));
                        s.outbox.push_line(&limits, &line, wakes, &s.outbox);
                    }
                }
            }
        }
        self.endpoint = Some(id.to_string());
        events.push(Event::EndpointUp { id: id.to_string() });
        for e in events {
            self.router.hub.emit(e);
        }
        Ok(Some(json!({ "endpoint": id })))
    }

    fn unregister(&mut self) -> BusResult {
        let Some(id) = self.endpoint.take() else {
            return Err(err(
                ErrorCode::NotFound,
                "this connection is not registered",
            ));
        };
        {
            let mut inner = self.router.lock();
            if inner.endpoints.get(&id) == Some(&self.outbox.conn) {
                inner.endpoints.remove(&id);
            }
            if let Some(info) = inner.conns.get_mut(&self.outbox.conn) {
                info.endpoint = None;
            }
        }
        self.router.hub.emit(Event::EndpointDown {
            id: id.clone(),
            reason: "unregistered".into(),
        });
        Ok(Some(json!({ "endpoint": id })))
    }

    fn send(&mut self, line: &BusLine<'_>, limits: &Limits, wakes: &mut Wakes) -> BusResult {
        let target = line.to.as_deref().ok_or_else(|| {
            err(
                ErrorCode::BadRequest,
                "missing \"to\" (the target endpoint)",
            )
        })?;
        let event = line
            .event
            .as_deref()
            .ok_or_else(|| err(ErrorCode::BadRequest, "missing \"event\" (the event name)"))?;
        let data = self.data(line)?;
        let from = self.endpoint.clone();
        self.send_event(
            target,
            event,
            from.as_deref(),
            data,
            line.id,
            line.wait_ms,
            limits,
            wakes,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn send_event(
        &mut self,
        target: &str,
        event: &str,
        from: Option<&str>,
        data: &[u8],
        id: Option<&RawValue>,
        wait_ms: Option<u64>,
        limits: &Limits,
        wakes: &mut Wakes,
    ) -> BusResult {
        let mut inner = self.router.lock();
        let found = inner
            .endpoints
            .get(target)
            .and_then(|c| inner.conns.get(c))
            .map(|c| (c.outbox.clone(), c.compat));
        match found {
            Some((outbox, compat)) => {
                let ts = now_ts();
                drop(inner);
                if outbox.push_droppable(limits, |b| {
                    encode_event(b, compat, event, from, target, data, &ts)
                }) {
                    wakes.add(&outbox);
                }
                self.router.counters.events.fetch_add(1, Ordering::Relaxed);
                Ok(id.map(|_| json!({ "delivered": true })))
            }
            None => match wait_ms {
                Some(ms) if ms > 0 => {
                    let max = self.cfg.clone().max_wait.get();
                    let wait = Duration::from_millis(ms).min(max);
                    let token = self.router.next_token.fetch_add(1, Ordering::Relaxed);
                    let data = RawValue::from_string(String::from_utf8_lossy(data).into_owned())
                        .map_err(|e| err(ErrorCode::BadJson, format!("data: {e}")))?;
                    inner.pending.insert(
                        token,
                        Pending::Send {
                            conn: self.outbox.conn,
                            id: id.map(|i| i.to_owned()),
                            from: from.map(String::from),
                            target: target.to_string(),
                            event: event.to_string(),
                            data,
                        },
                    );
                    inner
                        .parked
                        .entry(target.to_string())
                        .or_default()
                        .push(token);
                    drop(inner);
                    self.add_deadline(tokio::time::Instant::now() + wait, token);
                    // The reply comes when the target registers, or at the deadline.
                    self.deferred = true;
                    Ok(None)
                }
                _ => Err(err(
                    ErrorCode::NotFound,
                    format!(
                        "no endpoint {target:?} is registered; check the id with `majordomo bus ls`, or pass \"wait_ms\" to wait for it"
                    ),
                )),
            },
        }
    }

    fn request(&mut self, line: &BusLine<'_>, limits: &Limits, wakes: &mut Wakes) -> BusResult {
        let topic = self.topic(line, "topic", false)?;
        let data = self.data(line)?;
        self.may_publish(topic)?;
        let Some(id) = line.id else {
            return Err(err(
                ErrorCode::BadRequest,
                "bus.request needs an \"id\" to route its reply to",
            ));
        };
        self.router
            .counters
            .requests
            .fetch_add(1, Ordering::Relaxed);
        let token = self.router.next_token.fetch_add(1, Ordering::Relaxed);
        let targets = {
            let mut inner = self.router.lock();
            let targets = inner.subs.lookup(topic);
            if targets.is_empty() {
                drop(inner);
                self.router
                    .counters
                    .no_responders
                    .fetch_add(1, Ordering::Relaxed);
                return Err(err(
                    ErrorCode::NoResponders,
                    format!("no subscriber on {topic:?} to answer the request"),
                ));
            }
            inner.pending.insert(
                token,
                Pending::Request {
                    conn: self.outbox.conn,
                    id: id.to_owned(),
                },
            );
            targets
        };
        let timeout = line
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or_else(|| self.cfg.clone().request_timeout.get());
        self.add_deadline(tokio::time::Instant::now() + timeout, token);
        let reply_to = format!("{INBOX}{token}");
        self.router
            .deliver(&targets, topic, Some(&reply_to), data, limits, wakes);
        self.deferred = true;
        Ok(None)
    }

    fn answer(&mut self, line: &BusLine<'_>, limits: &Limits, wakes: &mut Wakes) -> BusResult {
        let to = line.to.as_deref().ok_or_else(|| {
            err(
                ErrorCode::BadRequest,
                "missing \"to\" (the request's reply_to)",
            )
        })?;
        let data = self.data(line)?;
        let token = to.strip_prefix(INBOX).unwrap_or(to);
        self.route_reply(token, data, limits, wakes)
            .map(|v| v.and(line.id.map(|_| json!({"delivered": true}))))
    }

    fn route_reply(
        &mut self,
        token: &str,
        data: &[u8],
        limits: &Limits,
        wakes: &mut Wakes,
    ) -> BusResult {
        let token: u64 = token.parse().map_err(|_| {
            err(
                ErrorCode::BadRequest,
                format!("{INBOX}{token} is not a reply subject"),
            )
        })?;
        let inner = &mut *self.router.lock();
        match inner.pending.get(&token) {
            Some(Pending::Request { .. }) => {}
            _ => {
                return Err(err(
                    ErrorCode::NotFound,
                    "no request is waiting on this reply subject (answered already, timed out, or its requester left)",
                ));
            }
        }
        if let Some(Pending::Request { conn, id }) = inner.pending.remove(&token)
            && let Some(c) = inner.conns.get(&conn)
        {
            let line = reply_line(Some(&id), Ok(data));
            c.outbox.push_line(limits, &line, wakes, &c.outbox);
            self.router.counters.replies.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(json!({"delivered": true})))
    }

    fn handle_compat(
        &mut self,
        kind: &str,
        line: &BusLine<'_>,
        limits: &Limits,
        wakes: &mut Wakes,
    ) {
        let payload = line.compat_payload.map(|p| p.get()).unwrap_or("null");
        let r = match kind {
            "Register" => match serde_json::from_str::<CompatRegister>(payload) {
                Ok(p) => self.register_id(&p.machine_id, line.token.as_deref(), false, true, wakes),
                Err(e) => Err(err(
                    ErrorCode::BadRequest,
                    format!("Register needs Payload.MachineId: {e}"),
                )),
            },
            "SendEvent" => match serde_json::from_str::<CompatSendEvent>(payload) {
                Ok(p) => {
                    let data = p.payload.map(|d| d.get().as_bytes()).unwrap_or(b"null");
                    let from = self
                        .endpoint
                        .clone()
                        .or_else(|| p.source.as_deref().map(String::from));
                    let max = self.cfg.clone().max_message();
                    if data.len() > max {
                        Err(err(
                            ErrorCode::TooLarge,
                            format!(
                                "Payload of {} bytes exceeds [bus] max_message ({max} bytes)",
                                data.len()
                            ),
                        ))
                    } else {
                        self.send_event(
                            &p.target,
                            &p.event,
                            from.as_deref(),
                            data,
                            None,
                            None,
                            limits,
                            wakes,
                        )
                    }
                }
                Err(e) => Err(err(
                    ErrorCode::BadRequest,
                    format!("SendEvent needs Payload.TargetMachineId and Payload.EventName: {e}"),
                )),
            },
            other => Err(err(
                ErrorCode::UnknownCommand,
                format!("unknown Type {other:?}; known: Register, SendEvent"),
            )),
        };
        // Seed-004 clients expect no acknowledgement; errors come back in their shape.
        if let Err(e) = r {
            self.router.counters.errors.fetch_add(1, Ordering::Relaxed);
            let v = json!({"Type": "Error", "Payload": {"Code": e.code.as_str(), "Message": e.message}});
            let line = serde_json::to_vec(&v).unwrap_or_default();
            self.outbox.push_line(limits, &line, wakes, &self.outbox);
        }
    }
}

fn encode_event(
    b: &mut BytesMut,
    compat: bool,
    event: &str,
    from: Option<&str>,
    target: &str,
    data: &[u8],
    ts: &str,
) {
    if compat {
        wire::put_event_compat(b, event, from, target, data, ts);
    } else {
        wire::put_event_json(b, event, from, data, ts);
    }
}

/// Publishes every hub event on `$sys.<kind>` until `token` is cancelled.
pub async fn forward_hub(
    router: Arc<Router>,
    hub: Hub,
    enabled: impl Fn() -> bool,
    token: tokio_util::sync::CancellationToken,
) {
    let mut rx = hub.subscribe();
    loop {
        let ev = tokio::select! {
            _ = token.cancelled() => return,
            ev = rx.recv() => ev,
        };
        match ev {
            Ok(ev) if enabled() => router.publish_system(&ev),
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "system topics fell behind the event hub");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
