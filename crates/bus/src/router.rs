//! The shared routing state of the bus: connections, endpoints, subscriptions, and what waits
//! for a reply or for its target to register.
//!
//! A connection's reader calls it for each bus line it reads; the router encodes what must be
//! sent straight into the target connections' [`Outbox`]es (each bounded, each drained by its
//! connection's writer), and the reader flushes those queues once per read batch (a small one
//! written at once when the socket takes it without waiting, else by the writer). So a slow
//! consumer only ever fills its own queue, and a publisher never waits for anyone.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use majordomo_core::Hub;
use majordomo_proto::bus::{BusConn, BusCounters, BusEndpoint, BusList, BusSubscription};
use majordomo_proto::{ErrorBody, ErrorCode, Event};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::{BusConfig, covers};
use crate::outbox::{Budget, Limits, Outbox, OutboxRef, SharedRun, Wakes};
use crate::wire;

/// Prefix of reply subjects: `_INBOX.<token>`, the token 16 hex digits that cannot be guessed.
pub(crate) const INBOX: &str = wire::INBOX_PREFIX;

pub(crate) struct Sub {
    pub(crate) conn: u64,
    pub(crate) sid: u64,
    pub(crate) pattern: Arc<str>,
    pub(crate) queue: Option<Arc<str>>,
    pub(crate) outbox: OutboxRef,
}

pub(crate) struct Subs {
    literal: HashMap<Arc<str>, Vec<Arc<Sub>>>,
    wild: Vec<Arc<Sub>>,
    /// Matches by topic, cleared on every subscription change.
    cache: HashMap<Box<str>, Arc<[Arc<Sub>]>>,
    /// The empty match, shared.
    none: Arc<[Arc<Sub>]>,
}

impl Default for Subs {
    fn default() -> Self {
        Self {
            literal: HashMap::new(),
            wild: Vec::new(),
            cache: HashMap::new(),
            none: Arc::new([]),
        }
    }
}

/// Bumped on every subscription change; connections keep their last lookup while it holds.
pub(crate) static SUBS_GENERATION: AtomicU64 = AtomicU64::new(1);

impl Subs {
    pub(crate) fn lookup(&mut self, topic: &str) -> Arc<[Arc<Sub>]> {
        // A topic nobody subscribes to, known without the cache: publishing on many distinct
        // topics no one listens to neither allocates nor churns the cache.
        if self.wild.is_empty() && !self.literal.contains_key(topic) {
            return self.none.clone();
        }
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

    pub(crate) fn add(&mut self, s: Arc<Sub>) {
        self.cache.clear();
        SUBS_GENERATION.fetch_add(1, Ordering::Release);
        if wire::is_literal(&s.pattern) {
            self.literal.entry(s.pattern.clone()).or_default().push(s);
        } else {
            self.wild.push(s);
        }
    }

    pub(crate) fn remove(&mut self, conn: u64, sid: Option<u64>) {
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

pub(crate) struct ConnInfo {
    pub(crate) outbox: OutboxRef,
    pub(crate) endpoint: Option<String>,
    /// Registered with the seed-004 shape: events arrive in that shape.
    pub(crate) compat: bool,
    pub(crate) pid: Option<i32>,
    uid: Option<u32>,
    since: SystemTime,
    pub(crate) subs: BTreeMap<u64, (Arc<str>, Option<Arc<str>>)>,
}

pub(crate) enum Pending {
    /// A request waiting for its reply, and the connections it was delivered to: only they
    /// may answer it.
    Request {
        conn: u64,
        id: Box<RawValue>,
        responders: Box<[u64]>,
    },
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
pub(crate) struct Inner {
    pub(crate) conns: HashMap<u64, ConnInfo>,
    pub(crate) endpoints: HashMap<String, u64>,
    pub(crate) subs: Subs,
    pub(crate) pending: HashMap<u64, Pending>,
    pub(crate) parked: HashMap<String, Vec<u64>>,
    /// Most connections at once, and when that was first reached.
    peak: (usize, Option<SystemTime>),
}

/// Counters shown by `bus ls`.
#[derive(Default)]
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
    pub(crate) hub: Hub,
    limits: Mutex<(Limits, Arc<BusConfig>)>,
    /// Bumped on every config change, so connections re-read it only then.
    pub(crate) generation: AtomicU64,
    pub(crate) next_token: AtomicU64,
    /// The secret key that turns the token counter into unguessable tokens (SipHash, keyed
    /// from the OS's randomness when the router is made).
    token_key: RandomState,
    /// Connection ids, unique across every carrier sharing this router.
    next_conn: AtomicU64,
    pub counters: Counters,
    /// The memory of every connection's outbound queue (`[bus] total_queue_bytes`).
    budget: Arc<Budget>,
    /// When a connection last sent a frame, in milliseconds since the Unix epoch (0: never).
    last_activity_ms: AtomicU64,
}

pub(crate) type BusResult = Result<Option<Value>, ErrorBody>;

pub(crate) fn err(code: ErrorCode, msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, msg)
}

pub(crate) fn now_ts() -> String {
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
            token_key: RandomState::new(),
            next_conn: AtomicU64::new(1),
            counters: Counters::default(),
            budget: Arc::new(Budget::default()),
            last_activity_ms: AtomicU64::new(0),
        }
    }

    /// A new connection's outbox, charging its memory to this router's daemon-wide budget and
    /// kicked when `stop` (its carrier's token) is cancelled.
    pub fn new_outbox(&self, conn: u64, stop: &CancellationToken) -> OutboxRef {
        Arc::new(Outbox::with_budget(conn, self.budget.clone(), stop))
    }

    /// A connection sent `frames` frames of `bytes` bytes in all (once per read batch).
    pub fn activity(&self, outbox: &Outbox, frames: u64, bytes: u64) {
        outbox.count_in(frames, bytes);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_activity_ms.store(now, Ordering::Relaxed);
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

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; the data stays usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token for a new pending request or parked event, unique among those waiting: a keyed
    /// hash of a counter, so 64 bits that no client can predict from the tokens it has seen.
    pub(crate) fn new_token(&self, inner: &Inner) -> u64 {
        loop {
            let n = self.next_token.fetch_add(1, Ordering::Relaxed);
            let t = self.token_key.hash_one(n);
            if !inner.pending.contains_key(&t) {
                return t;
            }
        }
    }

    /// A new connection id, unique among the carriers sharing this router.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn add_conn(&self, outbox: OutboxRef, pid: Option<i32>, uid: Option<u32>) {
        let mut inner = self.lock();
        inner.conns.insert(
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
        if inner.conns.len() > inner.peak.0 {
            inner.peak = (inner.conns.len(), Some(SystemTime::now()));
        }
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
            tracing::debug!(endpoint = %id, reason = "disconnected", "endpoint down");
            self.hub.emit(Event::EndpointDown {
                id,
                reason: "disconnected".into(),
            });
        }
    }

    /// The publish permissions of a connection.
    pub(crate) fn allowed(
        &self,
        cfg: &BusConfig,
        endpoint: Option<&str>,
        publish: bool,
        topic: &str,
    ) -> bool {
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

    /// Whether a connection may send event `event` to endpoint `target`: events obey the same
    /// publish lists as topics, as the subject `$event.<target>.<event>`.
    pub(crate) fn allowed_event(
        &self,
        cfg: &BusConfig,
        endpoint: Option<&str>,
        target: &str,
        event: &str,
    ) -> bool {
        let list = endpoint
            .and_then(|e| cfg.endpoints.get(e))
            .and_then(|a| a.publish.as_ref())
            .unwrap_or(&cfg.publish);
        list.iter().any(|p| {
            let subject = std::iter::once("$event")
                .chain(target.split('.'))
                .chain(event.split('.'));
            matches_tokens(p, subject)
        })
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

    /// The subscribers of `topic`, for a connection that remembers its last topic's: a
    /// publisher repeating a topic skips the router's lock while no subscription changed.
    fn targets_cached(&self, last: &mut Option<LastTopic>, topic: &str) -> Arc<[Arc<Sub>]> {
        let generation = SUBS_GENERATION.load(Ordering::Acquire);
        match last {
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
        }
    }

    /// Publishes a run of payloads on one topic (one read batch's publishes, already checked):
    /// the subscribers are looked up once, and each subscription gets the whole run under one
    /// lock of its queue. Returns the deliveries.
    pub(crate) fn publish_run(
        &self,
        last: &mut Option<LastTopic>,
        topic: &str,
        datas: &[&[u8]],
        limits: &Limits,
        wakes: &mut Wakes,
    ) -> usize {
        let targets = self.targets_cached(last, topic);
        self.counters
            .published
            .fetch_add(datas.len() as u64, Ordering::Relaxed);
        if targets.iter().any(|s| s.queue.is_some()) {
            // Each message goes to one member of each group: chosen per message.
            return datas
                .iter()
                .map(|d| self.deliver(&targets, topic, None, d, limits, wakes))
                .sum();
        }
        if targets.len() == 1 {
            for s in targets.iter() {
                if s.outbox.push_msgs(limits, s.sid, topic, datas) {
                    wakes.add(&s.outbox);
                }
            }
        } else {
            // Fan-out: the run is encoded once per framing and subscription id, and each
            // queue takes a reference to it.
            let mut runs: Vec<SharedRun> = Vec::new();
            for s in targets.iter() {
                let binary = s.outbox.is_binary();
                let at = match runs
                    .iter()
                    .position(|r| r.binary == binary && r.sid == s.sid)
                {
                    Some(at) => at,
                    None => {
                        runs.push(SharedRun::encode(binary, s.sid, topic, datas));
                        runs.len() - 1
                    }
                };
                if s.outbox.push_shared(limits, &runs[at], datas) {
                    wakes.add(&s.outbox);
                }
            }
        }
        let n = targets.len() * datas.len();
        self.counters
            .delivered
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    pub(crate) fn deliver(
        &self,
        targets: &[Arc<Sub>],
        topic: &str,
        reply_to: Option<&str>,
        data: &[u8],
        limits: &Limits,
        wakes: &mut Wakes,
    ) -> usize {
        let mut n = 0;
        self.choose(targets, |s| {
            if s.outbox.push_msg(limits, s.sid, topic, reply_to, data) {
                wakes.add(&s.outbox);
            }
            n += 1;
        });
        self.counters
            .delivered
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Calls `f` for each subscription a message goes to: every one outside a queue group, one
    /// member of each group.
    pub(crate) fn choose<'a>(&self, targets: &'a [Arc<Sub>], mut f: impl FnMut(&'a Arc<Sub>)) {
        let mut groups: Vec<(&str, Vec<&Arc<Sub>>)> = Vec::new();
        for s in targets {
            match &s.queue {
                None => f(s),
                Some(q) => match groups.iter_mut().find(|(name, _)| *name == &**q) {
                    Some((_, members)) => members.push(s),
                    None => groups.push((q, vec![s])),
                },
            }
        }
        for (_, members) in groups {
            let pick = self.next_token.fetch_add(1, Ordering::Relaxed) as usize % members.len();
            f(members[pick]);
        }
    }

    /// A deadline passed: fails the request or parked event `token` if it is still waiting.
    pub fn expire(&self, token: u64, wakes: &mut Wakes) {
        let limits = self.limits();
        let mut inner = self.lock();
        let Some(p) = inner.pending.remove(&token) else {
            return;
        };
        let (conn, id, body) = match p {
            Pending::Request { conn, id, .. } => {
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
        // Serialized only when someone listens: most events on a busy daemon have no
        // subscriber (a scheduler's `job.finished`, hundreds a second).
        let targets = self.lock().subs.lookup(&topic);
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        if targets.is_empty() {
            return;
        }
        let Ok(data) = serde_json::to_vec(event) else {
            return;
        };
        let limits = self.limits();
        let mut wakes = Wakes::default();
        self.deliver(&targets, &topic, None, &data, &limits, &mut wakes);
        wakes.flush();
    }

    /// `bus ls`: endpoints, connections with their subscriptions and queue depth, counters.
    pub fn list(&self) -> BusList {
        let inner = self.lock();
        let mut conns: Vec<(&u64, &ConnInfo)> = inner.conns.iter().collect();
        conns.sort_by_key(|(id, _)| **id);
        let depths: HashMap<u64, crate::outbox::Depth> = conns
            .iter()
            .map(|(id, c)| (**id, c.outbox.depth()))
            .collect();
        let connections = conns
            .iter()
            .map(|(id, c)| {
                let depth = depths.get(*id).copied().unwrap_or_default();
                BusConn {
                    conn: **id,
                    endpoint: c.endpoint.clone(),
                    pid: c.pid,
                    uid: c.uid,
                    since: humantime::format_rfc3339_seconds(c.since).to_string(),
                    subscriptions: c
                        .subs
                        .iter()
                        .map(|(sid, (p, q))| BusSubscription {
                            sid: *sid,
                            pattern: p.to_string(),
                            queue: q.as_deref().map(String::from),
                        })
                        .collect(),
                    queued_msgs: depth.queued_msgs as u64,
                    queued_bytes: depth.queued_bytes as u64,
                    memory_bytes: depth.memory_bytes as u64,
                    sent: depth.sent,
                    bytes_out: depth.sent_bytes,
                    msgs_in: depth.msgs_in,
                    bytes_in: depth.bytes_in,
                    dropped: depth.dropped,
                }
            })
            .collect();
        let mut endpoints: Vec<BusEndpoint> = inner
            .endpoints
            .iter()
            .map(|(id, conn)| {
                let depth = depths.get(conn).copied().unwrap_or_default();
                BusEndpoint {
                    id: id.clone(),
                    conn: *conn,
                    pid: inner.conns.get(conn).and_then(|c| c.pid),
                    msgs_in: depth.msgs_in,
                    bytes_in: depth.bytes_in,
                    msgs_out: depth.sent,
                    bytes_out: depth.sent_bytes,
                    dropped: depth.dropped,
                }
            })
            .collect();
        endpoints.sort_by(|a, b| a.id.cmp(&b.id));
        let counters = self.counters_of(&inner, &depths);
        BusList {
            endpoints,
            connections,
            counters,
        }
    }

    /// The bus's counters and health alone: what `status` shows under `bus`.
    pub fn health(&self) -> BusCounters {
        let inner = self.lock();
        let depths: HashMap<u64, crate::outbox::Depth> = inner
            .conns
            .iter()
            .map(|(id, c)| (*id, c.outbox.depth()))
            .collect();
        self.counters_of(&inner, &depths)
    }

    fn counters_of(
        &self,
        inner: &Inner,
        depths: &HashMap<u64, crate::outbox::Depth>,
    ) -> BusCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let rfc3339 = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
        let last = get(&self.last_activity_ms);
        BusCounters {
            connections: inner.conns.len() as u64,
            peak_connections: inner.peak.0 as u64,
            peak_at: inner.peak.1.map(rfc3339),
            last_activity: (last > 0)
                .then(|| rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(last))),
            memory_bytes: self.budget.used() as u64,
            total_queue_bytes: self.limits().total_bytes as u64,
            overflows: self.budget.overflows(),
            delivered: get(&c.delivered),
            dropped: depths.values().map(|d| d.dropped).sum(),
            errors: get(&c.errors),
            events: get(&c.events),
            no_responders: get(&c.no_responders),
            published: get(&c.published),
            replies: get(&c.replies),
            requests: get(&c.requests),
            subscriptions: inner.conns.values().map(|c| c.subs.len() as u64).sum(),
            timeouts: get(&c.timeouts),
        }
    }

    /// `bus ls` as the JSON the socket answers.
    pub(crate) fn list_value(&self) -> Value {
        serde_json::to_value(self.list()).unwrap_or(Value::Null)
    }
}

/// A reply line: `{"id":..,"ok":..}` or `{"id":..,"error":..}`, id raw.
pub(crate) fn reply_line(id: Option<&RawValue>, body: Result<&[u8], ErrorBody>) -> Vec<u8> {
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

/// [`wire::matches`] over a subject already split into tokens.
fn matches_tokens<'a>(pattern: &str, mut t: impl Iterator<Item = &'a str>) -> bool {
    let mut p = pattern.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}
