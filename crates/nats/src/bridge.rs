//! The bridge: the local bus on one side, a NATS connection on the other.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use majordomo_bus::{Router, Session, SessionConfig};
use majordomo_core::lifecycle::Ctx;
use majordomo_core::{Commands, Hub, backoff};
use majordomo_proto::bus as wire;
use majordomo_proto::nats::{Fleet, NatsFleetCmd, NatsStatus, NatsStatusCmd, ctl_subject};
use majordomo_proto::{ErrorBody, ErrorCode, Event};
use serde_json::value::RawValue;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{NatsConfig, token};
use crate::local::{Link, Msg};

/// The header that carries the error of a request answered with one (`bad_request`, ...).
pub const ERROR_HEADER: &str = "Majordomo-Error";

/// Counters and state shown by `nats.status`.
#[derive(Default)]
pub struct Stats {
    pub connected: AtomicBool,
    /// The import connection (when there is one) is connected and its subscriptions are on
    /// the server (a flush answered since it connected).
    pub imports_live: AtomicBool,
    pub exported: AtomicU64,
    pub imported: AtomicU64,
    pub echo_suppressed: AtomicU64,
    pub requests_out: AtomicU64,
    pub requests_in: AtomicU64,
    pub ctl_answered: AtomicU64,
    pub ctl_refused: AtomicU64,
    pub dropped: AtomicU64,
    pub unconfirmed: AtomicU64,
    pub redelivered: AtomicU64,
    pub import_overflows: AtomicU64,
    pub connects: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// One message waiting to be exported.
struct Out {
    /// Shared by the messages of one run of a topic (a reference count, no copy).
    subject: async_nats::Subject,
    payload: Bytes,
    /// Sequence number of the JetStream message id `<boot>-<seq>` (duplicate suppression
    /// across retries), formatted only when published to JetStream.
    seq: u64,
}

/// The bounded export buffer: drop-oldest past `cap`, counted.
pub(crate) struct Buffer {
    q: Mutex<VecDeque<Out>>,
    cap: usize,
    notify: Notify,
    stats: Arc<Stats>,
    boot: String,
    seq: AtomicU64,
}

impl Buffer {
    fn push(&self, subject: String, payload: Bytes) {
        self.push_many(std::iter::once((
            async_nats::Subject::from(subject),
            payload,
        )));
    }

    /// Appends messages in order under one lock, dropping the oldest past the bound.
    fn push_many(&self, msgs: impl Iterator<Item = (async_nats::Subject, Bytes)>) {
        if let Ok(mut q) = self.q.lock() {
            let mut dropped = 0;
            for (subject, payload) in msgs {
                if q.len() >= self.cap {
                    q.pop_front();
                    dropped += 1;
                }
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                q.push_back(Out {
                    subject,
                    payload,
                    seq,
                });
            }
            if dropped > 0 {
                self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            }
        }
        self.notify.notify_one();
    }

    fn take(&self, max: usize) -> Vec<Out> {
        match self.q.lock() {
            Ok(mut q) => {
                let n = q.len().min(max);
                q.drain(..n).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Puts back what could not be sent, in order, ahead of newer messages.
    fn requeue(&self, failed: Vec<Out>) {
        if let Ok(mut q) = self.q.lock() {
            for o in failed.into_iter().rev() {
                q.push_front(o);
            }
            while q.len() > self.cap {
                q.pop_front();
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn len(&self) -> usize {
        self.q.lock().map(|q| q.len()).unwrap_or(0)
    }
}

/// Messages the bridge just delivered locally, which its own export subscription will see again:
/// a multiset of (topic, payload hash), each entry consumed by one sighting.
#[derive(Default)]
pub(crate) struct Echo {
    seen: Mutex<HashMap<(Box<str>, u64), u32>>,
}

fn digest(topic: &str, data: &[u8]) -> (Box<str>, u64) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    (topic.into(), h.finish())
}

impl Echo {
    fn note(&self, topic: &str, data: &[u8]) {
        if let Ok(mut m) = self.seen.lock() {
            if m.len() > 100_000 {
                // Sightings the bus never delivered (dropped for a slow consumer): forget them.
                m.clear();
            }
            *m.entry(digest(topic, data)).or_default() += 1;
        }
    }

    fn take(&self, topic: &str, data: &[u8]) -> bool {
        let Ok(mut m) = self.seen.lock() else {
            return false;
        };
        if m.is_empty() {
            return false;
        }
        let key = digest(topic, data);
        match m.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                m.remove(&key);
                true
            }
            None => false,
        }
    }
}

/// `s` as a JSON string literal.
pub(crate) fn jstr(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A NATS payload as bus data: JSON text as is; anything else as a JSON string.
pub(crate) fn as_json(payload: &[u8]) -> Bytes {
    if payload.is_empty() {
        return Bytes::from_static(b"null");
    }
    if serde_json::from_slice::<&RawValue>(payload).is_ok() {
        Bytes::copy_from_slice(payload)
    } else {
        Bytes::from(jstr(&String::from_utf8_lossy(payload)).into_bytes())
    }
}

/// Connection options from `[nats]`.
/// What both of the bridge's connections share: no echo of its own publishes, and reconnecting
/// forever (also at start-up), at most 5 s between attempts.
fn reconnecting(o: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
    o.no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(3))
        .reconnect_delay_callback(|attempt| {
            backoff::full_jitter(
                Duration::from_millis(100),
                Duration::from_secs(5),
                attempt as u32,
            )
        })
}

pub async fn connect_options(cfg: &NatsConfig) -> Result<async_nats::ConnectOptions, String> {
    let mut o = match &cfg.creds_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path.clone())
            .await
            .map_err(|e| {
                format!(
                    "[nats] creds_file {}: {e}; point it at the .creds file nsc wrote",
                    path.display()
                )
            })?,
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(u) = &cfg.user {
        o = o.user_and_password(
            u.clone(),
            cfg.password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default(),
        );
    }
    if let Some(t) = &cfg.token {
        o = o.token(t.expose().to_string());
    }
    if let Some(seed) = &cfg.nkey {
        o = o.nkey(seed.expose().to_string());
    }
    if let Some(ca) = &cfg.tls_ca {
        if !ca.is_file() {
            return Err(format!(
                "[nats] tls_ca {} is not a readable file; give the CA certificate (PEM) that signed the server's",
                ca.display()
            ));
        }
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    if cfg.tls_required {
        o = o.require_tls(true);
    }
    Ok(o)
}

/// Runs the bridge until the subsystem stops.
pub async fn run(router: Arc<Router>, ctx: Ctx<NatsConfig>) -> Result<(), String> {
    let cfg = ctx.config.borrow().clone();
    let instance = ctx.layout().instance.clone();
    let node = cfg.node();
    let prefix = cfg.prefix(&node, &instance);
    let ctl = ctl_subject(&node, &token(&instance));
    let stats = Arc::new(Stats::default());
    let servers = cfg.servers.join(",");
    // Durable import: one consumer per import pattern, named from node and instance.
    let consumers: Vec<(String, String)> = match &cfg.stream {
        Some(_) => cfg
            .import
            .iter()
            .enumerate()
            .map(|(i, p)| (consumer_name(&node, &instance, i), p.clone()))
            .collect(),
        None => Vec::new(),
    };
    let shown_servers: Vec<String> = cfg.servers.iter().map(|s| redact_url(s)).collect();

    let buffer = Arc::new(Buffer {
        q: Mutex::new(VecDeque::new()),
        cap: cfg.buffer.max(1),
        notify: Notify::new(),
        stats: stats.clone(),
        boot: format!(
            "{node}.{}.{}",
            token(&instance),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ),
        seq: AtomicU64::new(1),
    });

    {
        let stats = stats.clone();
        let buffer = buffer.clone();
        let status = NatsStatus {
            enabled: true,
            server: Some(shown_servers.join(",")),
            node: node.clone(),
            instance: instance.clone(),
            prefix: prefix.clone(),
            ctl_subject: if cfg.control {
                ctl.clone()
            } else {
                String::new()
            },
            stream: cfg.stream.clone(),
            consumers: consumers.iter().map(|(n, _)| n.clone()).collect(),
            ..Default::default()
        };
        ctx.handle::<NatsStatusCmd, _, _>(move |_| {
            let s = status_of(&status, &stats, &buffer);
            async move { Ok(s) }
        });
    }

    // The bridge's own requests carry replies to this inbox; the importer does not take them
    // for requests to answer (they would come back when an export is also imported).
    let own_inbox = format!(
        "_INBOX.md{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let opts = reconnecting(connect_options(&cfg).await?)
        .name(format!("majordomo {node}/{instance}"))
        .custom_inbox_prefix(&own_inbox)
        .event_callback({
            let stats = stats.clone();
            let hub = ctx.hub.clone();
            let server = shown_servers.join(",");
            move |ev| {
                let stats = stats.clone();
                let hub = hub.clone();
                let server = server.clone();
                async move { on_event(ev, &stats, &hub, &server) }
            }
        });
    let client = opts.connect(servers.as_str()).await.map_err(|e| {
        format!(
            "[nats] servers {}: {e}; check the addresses and credentials",
            shown_servers.join(",")
        )
    })?;
    // With imports, a second connection carries them and the core exports (and nothing else):
    // its statistics then count exactly what the importer was sent, and `no_echo` on it keeps
    // this instance's exports from coming back through its own imports.
    let data_up = Arc::new(Notify::new());
    let data = if cfg.import.is_empty() {
        stats.imports_live.store(true, Ordering::Relaxed);
        client.clone()
    } else {
        reconnecting(connect_options(&cfg).await?)
            .name(format!("majordomo {node}/{instance} imports"))
            .subscription_capacity(cfg.import_buffer.max(1))
            .event_callback({
                let stats = stats.clone();
                let server = shown_servers.join(",");
                let up = data_up.clone();
                move |ev| {
                    let stats = stats.clone();
                    let server = server.clone();
                    let up = up.clone();
                    async move { on_data_event(ev, &stats, &server, &up) }
                }
            })
            .connect(servers.as_str())
            .await
            .map_err(|e| {
                format!(
                    "[nats] servers {}: {e}; check the addresses and credentials",
                    shown_servers.join(",")
                )
            })?
    };

    let identity = crate::remote::Identity {
        node: node.clone(),
        instance: instance.clone(),
        roles: cfg.roles.clone(),
        allow: cfg.allowed(),
    };
    {
        let client = client.clone();
        let stats = stats.clone();
        let server = shown_servers.join(",");
        // The bridge's connection never hears its own ping (no_echo): this instance answers
        // for itself, as it does to everyone else's pings (remote control on).
        let me = cfg.control.then(|| Arc::new(identity.clone()));
        let commands = ctx.commands.clone();
        let ctl = ctl.clone();
        ctx.handle::<NatsFleetCmd, _, _>(move |args| {
            let client = client.clone();
            let stats = stats.clone();
            let server = server.clone();
            let me = me.clone();
            let commands = commands.clone();
            let ctl = ctl.clone();
            async move {
                let mut fleet = fleet_now(&client, &stats, &server, &args.roles).await;
                if let Some(me) = me
                    && fleet.reason.is_none()
                    && args.roles.iter().all(|r| me.roles.contains(r))
                {
                    fleet
                        .members
                        .push(crate::remote::member(&me, &ctl, &commands).await);
                    fleet
                        .members
                        .sort_by(|a, b| (&a.node, &a.instance).cmp(&(&b.node, &b.instance)));
                }
                Ok(fleet)
            }
        });
    }

    // The bridge's own bus connection.
    let (_session_tx, session_rx) = watch::channel(Arc::new(SessionConfig {
        token: None,
        max_line: 64 * 1024 * 1024,
    }));
    let session = Session {
        commands: ctx.commands.clone(),
        daemon: ctx.daemon.clone(),
        router,
        instance: instance.as_str().into(),
        config: session_rx,
        token: ctx.token.clone(),
        tracker: ctx.tracker.clone(),
    };
    let (link, msgs) = Link::open(&session, ctx.token.clone());
    for p in &cfg.export {
        let line = format!(r#""cmd":"bus.sub","pattern":{}"#, jstr(p));
        link.call(line.as_bytes()).await.map_err(|e| {
            format!(
                "[nats] export {p:?}: the bus refused the subscription: {}",
                e.message
            )
        })?;
    }
    let echo = Arc::new(Echo::default());
    let exports: Arc<[String]> = cfg.export.clone().into();

    let token = ctx.token.clone();
    let tracker = ctx.tracker.clone();

    tracker.spawn(export_reader(
        msgs,
        link.clone(),
        client.clone(),
        buffer.clone(),
        echo.clone(),
        stats.clone(),
        prefix.clone(),
        cfg.request_timeout.get(),
        token.clone(),
    ));
    tracker.spawn(publisher(
        // Durable exports wait for JetStream's acks, which are messages in: not on `data`.
        if cfg.stream.is_some() {
            client.clone()
        } else {
            data.clone()
        },
        buffer.clone(),
        stats.clone(),
        (*cfg).clone(),
        prefix.clone(),
        token.clone(),
    ));
    if !cfg.import.is_empty() {
        let mut subs = Vec::new();
        for p in &cfg.import {
            let s = data
                .subscribe(p.clone())
                .await
                .map_err(|e| format!("[nats] import {p:?}: {e}"))?;
            subs.push(s);
        }
        tracker.spawn(importer(
            futures_util::stream::select_all(subs),
            Importer {
                link: link.clone(),
                client: client.clone(),
                received: data.statistics(),
                own_inbox: format!("{own_inbox}."),
                echo: echo.clone(),
                exports: exports.clone(),
                stats: stats.clone(),
                streamed: cfg.stream.is_some(),
            },
            token.clone(),
        ));
    }
    if let Some(stream) = &cfg.stream {
        for (name, pattern) in &consumers {
            tracker.spawn(stream_importer(
                client.clone(),
                Durable {
                    stream: stream.clone(),
                    name: name.clone(),
                    filter: pattern.clone(),
                },
                link.clone(),
                echo.clone(),
                exports.clone(),
                stats.clone(),
                token.clone(),
            ));
        }
    }
    if cfg.system_events {
        tracker.spawn(export_events(
            ctx.hub.clone(),
            buffer.clone(),
            prefix.clone(),
            token.clone(),
        ));
    }
    if let Some(every) = cfg.metrics_interval {
        tracker.spawn(export_metrics(
            ctx.commands.clone(),
            buffer.clone(),
            format!("{prefix}metrics"),
            every.get(),
            token.clone(),
        ));
    }
    if cfg.control {
        crate::remote::start(
            &client,
            &ctl,
            identity,
            ctx.commands.clone(),
            stats.clone(),
            &tracker,
            token.clone(),
        )
        .await?;
    }
    for c in [&client, &data] {
        if c.connection_state() == async_nats::connection::State::Connected {
            // The subscriptions are on the server before the instance reports itself ready.
            let _ = tokio::time::timeout(Duration::from_secs(2), c.flush()).await;
        }
    }
    if !cfg.import.is_empty() {
        // `connected` in `nats.status` includes the import connection with its subscriptions
        // on the server: set after a flush each time it (re)connects.
        let (data, stats, token) = (data.clone(), stats.clone(), token.clone());
        tracker.spawn(async move {
            loop {
                if data.connection_state() == async_nats::connection::State::Connected
                    && matches!(
                        tokio::time::timeout(Duration::from_secs(5), data.flush()).await,
                        Ok(Ok(()))
                    )
                {
                    stats.imports_live.store(true, Ordering::Relaxed);
                }
                // A reconnect's event can be lost when the client's event queue is full (it
                // also carries slow-consumer reports): while not live, look again now and then.
                let again = if stats.imports_live.load(Ordering::Relaxed) {
                    Duration::MAX
                } else {
                    Duration::from_millis(500)
                };
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = data_up.notified() => {}
                    _ = tokio::time::sleep(again) => {}
                }
            }
        });
    }
    tracing::info!(
        servers = %shown_servers.join(","),
        %node,
        %prefix,
        export = ?cfg.export,
        import = ?cfg.import,
        stream = ?cfg.stream,
        "NATS bridge started"
    );
    ctx.ready();
    tokio::select! {
        biased;
        _ = token.cancelled() => {}
        _ = link.closed.cancelled() => {
            // Without it nothing is exported or imported any more: fail, visibly.
            return Err(
                "the bridge's connection to the local bus closed; the log says why; a reload that changes [nats], or a restart of the daemon, starts the bridge again".to_string(),
            );
        }
    }
    // Give what is buffered a moment to leave, within the grace period.
    let until = tokio::time::Instant::now() + ctx.grace().min(Duration::from_secs(2));
    while buffer.len() > 0
        && stats.connected.load(Ordering::Relaxed)
        && tokio::time::Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), data.flush()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    ctx.commands.unregister_owner("nats");
    Ok(())
}

/// `nats.fleet`: a fleet ping over the bridge's connection, answers gathered for half a second.
async fn fleet_now(
    client: &async_nats::Client,
    stats: &Stats,
    server: &str,
    roles: &[String],
) -> Fleet {
    if !stats.connected.load(Ordering::Relaxed) {
        let why = stats
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Fleet {
            enabled: true,
            members: Vec::new(),
            reason: Some(format!("not connected to NATS at {server}{why}")),
        };
    }
    match crate::fleet::ls(client, roles, Duration::from_millis(500)).await {
        Ok(members) => Fleet {
            enabled: true,
            members,
            reason: None,
        },
        Err(e) => Fleet {
            enabled: true,
            members: Vec::new(),
            reason: Some(format!("fleet ping over NATS at {server}: {e}")),
        },
    }
}

fn status_of(base: &NatsStatus, s: &Stats, buffer: &Buffer) -> NatsStatus {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    NatsStatus {
        connected: s.connected.load(Ordering::Relaxed) && s.imports_live.load(Ordering::Relaxed),
        exported: g(&s.exported),
        imported: g(&s.imported),
        echo_suppressed: g(&s.echo_suppressed),
        requests_out: g(&s.requests_out),
        requests_in: g(&s.requests_in),
        ctl_answered: g(&s.ctl_answered),
        ctl_refused: g(&s.ctl_refused),
        buffered: buffer.len() as u64,
        dropped: g(&s.dropped),
        unconfirmed: g(&s.unconfirmed),
        redelivered: g(&s.redelivered),
        import_overflows: g(&s.import_overflows),
        connects: g(&s.connects),
        last_error: s.last_error.lock().ok().and_then(|e| e.clone()),
        ..base.clone()
    }
}

/// `nats://user:pass@host` → `nats://host`: credentials never leave through status or logs.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => url.to_string(),
        },
        None => match url.rsplit_once('@') {
            Some((_, host)) => host.to_string(),
            None => url.to_string(),
        },
    }
}

fn on_event(ev: async_nats::Event, stats: &Stats, hub: &Hub, server: &str) {
    match ev {
        async_nats::Event::Connected => {
            stats.connected.store(true, Ordering::Relaxed);
            stats.connects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%server, "connected to NATS");
            hub.emit(Event::NatsConnected {
                server: server.to_string(),
            });
        }
        async_nats::Event::Disconnected => {
            stats.connected.store(false, Ordering::Relaxed);
            let dropped = stats.dropped.load(Ordering::Relaxed);
            tracing::warn!(%server, dropped, "lost the NATS connection; exports wait in the buffer while reconnecting");
            hub.emit(Event::NatsDisconnected {
                reason: "connection lost".into(),
                dropped,
            });
        }
        async_nats::Event::ServerError(e) => {
            tracing::warn!(%server, "NATS server error: {e}");
            if let Ok(mut l) = stats.last_error.lock() {
                *l = Some(e.to_string());
            }
        }
        async_nats::Event::ClientError(e) => {
            tracing::warn!(%server, "NATS client error: {e}");
            if let Ok(mut l) = stats.last_error.lock() {
                *l = Some(e.to_string());
            }
        }
        other => tracing::debug!("NATS: {other}"),
    }
}

/// Events of the import connection (when there is one): its errors are shown like the main
/// connection's; its slow-consumer reports are not counted here (the importer counts every
/// dropped import exactly, and these reports go through a queue that drops them when full).
fn on_data_event(ev: async_nats::Event, stats: &Stats, server: &str, up: &Notify) {
    match ev {
        async_nats::Event::Connected => up.notify_one(),
        async_nats::Event::ServerError(e) => {
            tracing::warn!(%server, "NATS server error (import connection): {e}");
            if let Ok(mut l) = stats.last_error.lock() {
                *l = Some(e.to_string());
            }
        }
        async_nats::Event::ClientError(e) => {
            tracing::warn!(%server, "NATS client error (import connection): {e}");
            if let Ok(mut l) = stats.last_error.lock() {
                *l = Some(e.to_string());
            }
        }
        async_nats::Event::Disconnected => {
            stats.imports_live.store(false, Ordering::Relaxed);
            tracing::warn!(%server, "lost the NATS import connection; reconnecting");
        }
        other => tracing::debug!("NATS (import connection): {other}"),
    }
}

/// Local messages on exported topics: plain ones into the buffer, requests to NATS.
#[allow(clippy::too_many_arguments)]
async fn export_reader(
    mut msgs: tokio::sync::mpsc::UnboundedReceiver<Msg>,
    link: Link,
    client: async_nats::Client,
    buffer: Arc<Buffer>,
    echo: Arc<Echo>,
    stats: Arc<Stats>,
    prefix: String,
    request_timeout: Duration,
    token: CancellationToken,
) {
    // The subject of the last topic seen: a run of one topic shares it.
    let mut last: Option<(String, async_nats::Subject)> = None;
    let mut plain: Vec<(async_nats::Subject, Bytes)> = Vec::with_capacity(1024);
    loop {
        let first = tokio::select! {
            _ = token.cancelled() => return,
            m = msgs.recv() => m,
        };
        let Some(first) = first else { return };
        // What is already there goes into the buffer as one batch (one lock, one wake-up).
        let mut next = Some(first);
        while let Some(m) = next.take() {
            if plain.len() < 1024 {
                next = msgs.try_recv().ok();
            }
            if echo.take(&m.topic, &m.data) {
                stats.echo_suppressed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let subject = match &last {
                Some((topic, subject)) if *topic == m.topic => subject.clone(),
                _ => {
                    let subject = async_nats::Subject::from(format!("{prefix}{}", m.topic));
                    last = Some((m.topic.clone(), subject.clone()));
                    subject
                }
            };
            let Some(reply_to) = m.reply_to else {
                plain.push((subject, m.data));
                continue;
            };
            {
                stats.requests_out.fetch_add(1, Ordering::Relaxed);
                let client = client.clone();
                let link = link.clone();
                tokio::spawn(async move {
                    let r = tokio::time::timeout(
                        request_timeout,
                        client.request(subject.clone(), m.data),
                    )
                    .await;
                    match r {
                        Ok(Ok(reply)) => {
                            let data = as_json(&reply.payload);
                            let mut line =
                                format!(r#"{{"cmd":"bus.reply","to":{},"data":"#, jstr(&reply_to))
                                    .into_bytes();
                            line.extend_from_slice(&data);
                            line.push(b'}');
                            link.send(line);
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%subject, "request over NATS failed: {e}");
                        }
                        Err(_) => tracing::debug!(%subject, "request over NATS timed out"),
                    }
                });
            }
        }
        if !plain.is_empty() {
            buffer.push_many(plain.drain(..));
        }
    }
}

/// Drains the buffer to NATS while connected: core publishes confirmed by a flush per batch,
/// or JetStream publishes confirmed by their acks (retried until acknowledged).
async fn publisher(
    client: async_nats::Client,
    buffer: Arc<Buffer>,
    stats: Arc<Stats>,
    cfg: NatsConfig,
    prefix: String,
    token: CancellationToken,
) {
    let js = cfg.stream.as_ref().map(|_| {
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(2));
        js
    });
    let mut stream_ready = js.is_none();
    loop {
        if buffer.len() == 0 {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = buffer.notify.notified() => {}
            }
            continue;
        }
        if !stats.connected.load(Ordering::Relaxed)
            || client.connection_state() != async_nats::connection::State::Connected
        {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            }
            continue;
        }
        if let (Some(js), false) = (&js, stream_ready) {
            match ensure_stream(js, &cfg, &prefix).await {
                Ok(()) => stream_ready = true,
                Err(e) => {
                    tracing::warn!("JetStream stream not ready: {e}; retrying");
                    if let Ok(mut l) = stats.last_error.lock() {
                        *l = Some(e);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        let batch = buffer.take(512);
        match &js {
            None => {
                let connects = client.statistics().connects.load(Ordering::Relaxed);
                let n = batch.len() as u64;
                let mut rest = Vec::new();
                let mut it = batch.into_iter();
                for o in it.by_ref() {
                    if client
                        .publish(o.subject.clone(), o.payload.clone())
                        .await
                        .is_err()
                    {
                        rest.push(o);
                        break;
                    }
                }
                rest.extend(it);
                let sent = n - rest.len() as u64;
                if !rest.is_empty() {
                    buffer.requeue(rest);
                }
                let flushed = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
                if matches!(flushed, Ok(Ok(())))
                    && client.statistics().connects.load(Ordering::Relaxed) == connects
                {
                    stats.exported.fetch_add(sent, Ordering::Relaxed);
                } else {
                    // The connection broke under this batch: what the server had not read is gone.
                    stats.unconfirmed.fetch_add(sent, Ordering::Relaxed);
                    tracing::warn!(
                        messages = sent,
                        "exports not confirmed by NATS before the connection broke; possibly lost (use [nats] stream for durable export)"
                    );
                }
            }
            Some(js) => {
                let mut acks = Vec::with_capacity(batch.len());
                let mut failed = Vec::new();
                for o in batch {
                    let mut headers = async_nats::HeaderMap::new();
                    let id = format!("{}-{}", buffer.boot, o.seq);
                    headers.insert("Nats-Msg-Id", id.as_str());
                    match js
                        .publish_with_headers(o.subject.clone(), headers, o.payload.clone())
                        .await
                    {
                        Ok(ack) => acks.push((o, ack)),
                        Err(_) => failed.push(o),
                    }
                }
                // The acks are awaited together: each has its own timeout, so one by one a
                // server that went away would cost the timeout per message in flight.
                let acked = futures_util::future::join_all(
                    acks.into_iter()
                        .map(|(o, ack)| async move { (o, ack.await) }),
                )
                .await;
                for (o, ack) in acked {
                    match ack {
                        // Stored now, or by an earlier attempt whose ack was lost (a
                        // duplicate: that attempt went back to the buffer uncounted).
                        Ok(_) => {
                            stats.exported.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => failed.push(o),
                    }
                }
                if !failed.is_empty() {
                    tracing::debug!(
                        messages = failed.len(),
                        "JetStream did not acknowledge; retrying"
                    );
                    buffer.requeue(failed);
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }
}

async fn ensure_stream(
    js: &async_nats::jetstream::Context,
    cfg: &NatsConfig,
    prefix: &str,
) -> Result<(), String> {
    let Some(name) = &cfg.stream else {
        return Ok(());
    };
    let mut subjects: Vec<String> = cfg.export.iter().map(|p| format!("{prefix}{p}")).collect();
    if cfg.system_events {
        subjects.push(format!("{prefix}$sys.>"));
    }
    if cfg.metrics_interval.is_some() {
        subjects.push(format!("{prefix}metrics"));
    }
    let mut stream = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: subjects.clone(),
            storage: async_nats::jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("stream {name:?}: {e}"))?;
    // A stream shared by several exporters: add the subjects it does not capture yet.
    let info = stream
        .info()
        .await
        .map_err(|e| format!("stream {name:?}: {e}"))?;
    let mut config = info.config.clone();
    let missing: Vec<String> = subjects
        .into_iter()
        .filter(|s| !config.subjects.contains(s))
        .collect();
    if !missing.is_empty() {
        config.subjects.extend(missing);
        js.update_stream(config)
            .await
            .map_err(|e| format!("stream {name:?}: adding this instance's subjects: {e}"))?;
    }
    Ok(())
}

/// At most this many imported messages go to the local bus as one batch of publish lines.
const IMPORT_BATCH: usize = 2048;

/// What the importer needs besides its subscriptions.
struct Importer {
    link: Link,
    /// Answers requests (publishes their replies).
    client: async_nats::Client,
    /// Messages the import connection received (its statistics): with what the importer took,
    /// the exact count of those its client dropped.
    received: Arc<async_nats::Statistics>,
    /// The inbox prefix of the bridge's own requests (they are not imported back).
    own_inbox: String,
    echo: Arc<Echo>,
    exports: Arc<[String]>,
    stats: Arc<Stats>,
    streamed: bool,
}

/// NATS subjects in, local subscribers out; requests answered by a local responder.
///
/// The subscriptions are drained in batches: one batch becomes one run of `bus.pub` lines on
/// the bridge's bus connection, followed by a `ping`; the next batch waits for the previous
/// ping's answer, so at most two batches are in flight and a local bus slower than NATS leaves
/// the backlog in the client's subscription buffer (`[nats] import_buffer`), where what does
/// not fit is dropped by the client. Those drops are counted exactly: the import connection
/// carries nothing but these subscriptions, so each time the importer finds them empty,
/// messages the connection received minus messages the importer took is the number dropped.
async fn importer(
    mut subs: futures_util::stream::SelectAll<async_nats::Subscriber>,
    imp: Importer,
    token: CancellationToken,
) {
    use futures_util::FutureExt;
    let mut taken: u64 = 0;
    let mut lines: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut batch: Vec<async_nats::Message> = Vec::with_capacity(IMPORT_BATCH);
    let mut previous: Option<futures_util::future::BoxFuture<'static, Result<Bytes, ErrorBody>>> =
        None;
    loop {
        let first = tokio::select! {
            _ = token.cancelled() => return,
            m = subs.next() => m,
        };
        let Some(first) = first else { return };
        batch.push(first);
        let mut idle_at = None;
        while batch.len() < IMPORT_BATCH {
            // Read before looking: every message counted here was taken, dropped, or is being
            // handed over right now (then it wakes this task and is counted next time).
            let received = imp.received.in_messages.load(Ordering::Acquire);
            match subs.next().now_or_never() {
                Some(Some(m)) => batch.push(m),
                Some(None) => break,
                None => {
                    idle_at = Some(received);
                    break;
                }
            }
        }
        taken += batch.len() as u64;
        lines.clear();
        let mut plain = 0u64;
        let mut last_topic: Option<(async_nats::Subject, bool)> = None;
        let mut prefix_end = 0usize;
        let mut prefix: Vec<u8> = Vec::new();
        for m in batch.drain(..) {
            // A JetStream publish (an exporter with `stream`) carries a message id and the
            // stream's ack inbox as its reply subject: it is a plain message, not a request.
            let reply = if m
                .headers
                .as_ref()
                .is_some_and(|h| h.get("Nats-Msg-Id").is_some())
            {
                None
            } else {
                m.reply.clone()
            };
            if reply
                .as_ref()
                .is_some_and(|r| r.as_str().starts_with(imp.own_inbox.as_str()))
            {
                // The bridge's own request, exported on a subject it also imports.
                continue;
            }
            if imp.streamed && reply.is_none() {
                // Durable import: plain messages come through the stream's consumer.
                continue;
            }
            // Topic checks and the publish line's prefix, once per run of one subject.
            let echoes = match &last_topic {
                Some((t, e)) if *t == m.subject => *e,
                _ => {
                    let topic = m.subject.as_str();
                    let ok = !wire::is_reserved(topic)
                        && match wire::check_topic(topic, false) {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::debug!(%topic, "NATS subject not importable: {e}");
                                false
                            }
                        };
                    if !ok {
                        last_topic = None;
                        continue;
                    }
                    prefix.clear();
                    prefix.extend_from_slice(br#"{"cmd":"bus.pub","topic":"#);
                    prefix.extend_from_slice(jstr(topic).as_bytes());
                    prefix.extend_from_slice(br#","data":"#);
                    prefix_end = prefix.len();
                    let e = imp.exports.iter().any(|p| wire::matches(p, topic));
                    last_topic = Some((m.subject.clone(), e));
                    e
                }
            };
            match reply {
                None => {
                    plain += 1;
                    if !lines.is_empty() {
                        lines.push(b'\n');
                    }
                    lines.extend_from_slice(&prefix[..prefix_end]);
                    let at = lines.len();
                    push_json(&mut lines, &m.payload);
                    if echoes {
                        imp.echo.note(m.subject.as_str(), &lines[at..]);
                    }
                    lines.push(b'}');
                }
                Some(reply) => {
                    let data = as_json(&m.payload);
                    if echoes {
                        imp.echo.note(m.subject.as_str(), &data);
                    }
                    imp.stats.requests_in.fetch_add(1, Ordering::Relaxed);
                    let link = imp.link.clone();
                    let client = imp.client.clone();
                    let topic = m.subject.to_string();
                    tokio::spawn(async move {
                        let mut line =
                            format!(r#""cmd":"bus.request","topic":{},"data":"#, jstr(&topic))
                                .into_bytes();
                        line.extend_from_slice(&data);
                        match link.call(&line).await {
                            Ok(answer) => {
                                let _ = client.publish(reply, answer).await;
                            }
                            Err(e) => {
                                let mut headers = async_nats::HeaderMap::new();
                                headers.insert(ERROR_HEADER, e.code.as_str());
                                let body = serde_json::to_vec(&e).unwrap_or_default();
                                let _ = client
                                    .publish_with_headers(reply, headers, body.into())
                                    .await;
                            }
                        }
                    });
                }
            }
        }
        if plain > 0 {
            imp.stats.imported.fetch_add(plain, Ordering::Relaxed);
            imp.link.send(std::mem::take(&mut lines));
            lines.reserve(256 * 1024);
            // At most two batches in flight: wait for the one before this.
            let this = imp.link.send_call(br#""cmd":"ping""#).boxed();
            if let Some(before) = previous.replace(this) {
                let r = tokio::select! {
                    _ = token.cancelled() => return,
                    r = before => r,
                };
                if r.is_err() {
                    return;
                }
            }
        }
        if let Some(received) = idle_at {
            let lost = received.saturating_sub(taken);
            let was = imp.stats.import_overflows.swap(lost, Ordering::Relaxed);
            // Logged when the count reaches a new power of two, not once per message.
            if lost.leading_zeros() < was.leading_zeros() {
                tracing::warn!(
                    lost,
                    "NATS slow consumer: the bridge fell behind its imports and the NATS client dropped messages (core NATS; counted as import_overflows; [nats] import_buffer holds more)"
                );
            }
        }
    }
}

/// Appends `payload` as bus data: JSON text as is, anything else as a JSON string.
fn push_json(out: &mut Vec<u8>, payload: &[u8]) {
    if payload.is_empty() {
        out.extend_from_slice(b"null");
    } else if serde_json::from_slice::<&RawValue>(payload).is_ok() {
        out.extend_from_slice(payload);
    } else {
        out.extend_from_slice(jstr(&String::from_utf8_lossy(payload)).as_bytes());
    }
}

/// A `bus.pub` line without `id` (no reply expected).
fn pub_line(topic: &str, data: &[u8]) -> Vec<u8> {
    let mut line = format!(r#"{{"cmd":"bus.pub","topic":{},"data":"#, jstr(topic)).into_bytes();
    line.extend_from_slice(data);
    line.push(b'}');
    line
}

/// The durable consumer of import pattern `i`: `majordomo-<node>-<instance>-<i>`.
pub fn consumer_name(node: &str, instance: &str, i: usize) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("majordomo-{}-{}-{i}", clean(node), clean(instance))
}

/// One durable import: the stream, the consumer's name, its filter (an import pattern).
struct Durable {
    stream: String,
    name: String,
    filter: String,
}

/// Durable import: reads one import pattern from the JetStream stream through a durable pull
/// consumer and delivers each message on the local bus, acknowledging it only once the local bus
/// has taken it (a `ping` answered after the batch's publishes). The consumer lives on the
/// server, so messages published while this instance or the NATS server was away are delivered
/// when both are back; a redelivery of what was already delivered (an ack lost with the
/// connection) is skipped by its stream sequence.
#[allow(clippy::too_many_arguments)]
async fn stream_importer(
    client: async_nats::Client,
    d: Durable,
    link: Link,
    echo: Arc<Echo>,
    exports: Arc<[String]>,
    stats: Arc<Stats>,
    token: CancellationToken,
) {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use futures_util::FutureExt;
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(Duration::from_secs(3));
    let mut last_seq = 0u64;
    let mut warned = false;
    let wait = |ms: u64| {
        let token = token.clone();
        async move {
            tokio::select! {
                _ = token.cancelled() => false,
                _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
            }
        }
    };
    'outer: loop {
        if token.is_cancelled() {
            return;
        }
        if client.connection_state() != async_nats::connection::State::Connected {
            if !wait(100).await {
                return;
            }
            continue;
        }
        let consumer = async {
            let stream = js.get_stream(&d.stream).await.map_err(|e| {
                format!(
                    "JetStream stream {:?} for import {:?}: {e}; an exporting instance with the same [nats] stream creates it",
                    d.stream, d.filter
                )
            })?;
            stream
                .get_or_create_consumer::<pull::Config>(
                    &d.name,
                    pull::Config {
                        durable_name: Some(d.name.clone()),
                        filter_subject: d.filter.clone(),
                        ack_policy: AckPolicy::Explicit,
                        deliver_policy: DeliverPolicy::All,
                        ack_wait: Duration::from_secs(30),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| {
                    format!(
                        "JetStream consumer {:?} on stream {:?} for import {:?}: {e}; the import pattern must be within the stream's subjects",
                        d.name, d.stream, d.filter
                    )
                })
        }
        .await;
        let consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                if !warned {
                    tracing::warn!("{e}; retrying");
                    warned = true;
                }
                if let Ok(mut l) = stats.last_error.lock() {
                    *l = Some(e);
                }
                if !wait(500).await {
                    return;
                }
                continue;
            }
        };
        let messages = consumer
            .stream()
            .max_messages_per_batch(512)
            .expires(Duration::from_secs(10))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(consumer = %d.name, "JetStream pull: {e}; retrying");
                if !wait(500).await {
                    return;
                }
                continue;
            }
        };
        if warned {
            tracing::info!(consumer = %d.name, stream = %d.stream, "durable import reading");
            warned = false;
        }
        loop {
            let first = tokio::select! {
                _ = token.cancelled() => return,
                m = messages.next() => m,
            };
            let mut batch = vec![first];
            while batch.len() < 512 {
                match messages.next().now_or_never() {
                    Some(m) => batch.push(m),
                    None => break,
                }
            }
            let mut to_ack = Vec::with_capacity(batch.len());
            let mut broken = false;
            for m in batch {
                let m = match m {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::debug!(consumer = %d.name, "JetStream pull: {e}; re-subscribing");
                        broken = true;
                        break;
                    }
                    None => {
                        broken = true;
                        break;
                    }
                };
                let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                if seq != 0 && seq <= last_seq {
                    stats.redelivered.fetch_add(1, Ordering::Relaxed);
                    to_ack.push(m);
                    continue;
                }
                let topic = m.subject.to_string();
                if wire::check_topic(&topic, false).is_err() {
                    to_ack.push(m);
                    continue;
                }
                let data = as_json(&m.payload);
                if exports.iter().any(|p| wire::matches(p, &topic)) {
                    echo.note(&topic, &data);
                }
                link.send(pub_line(&topic, &data));
                stats.imported.fetch_add(1, Ordering::Relaxed);
                last_seq = last_seq.max(seq);
                to_ack.push(m);
            }
            if !to_ack.is_empty() {
                // The session handles lines in order: its answer to this ping means every
                // publish above has been routed.
                if link.call(br#""cmd":"ping""#).await.is_err() {
                    return;
                }
                for m in to_ack {
                    if let Err(e) = m.ack().await {
                        tracing::debug!(consumer = %d.name, "JetStream ack: {e}");
                    }
                }
            }
            if broken {
                if !wait(200).await {
                    return;
                }
                continue 'outer;
            }
        }
    }
}

/// Every hub event, as `<prefix>$sys.<kind>`.
async fn export_events(hub: Hub, buffer: Arc<Buffer>, prefix: String, token: CancellationToken) {
    let mut rx = hub.subscribe();
    loop {
        let ev = tokio::select! {
            _ = token.cancelled() => return,
            ev = rx.recv() => ev,
        };
        match ev {
            Ok(ev) => {
                if let Ok(data) = serde_json::to_vec(&*ev) {
                    buffer.push(format!("{prefix}$sys.{}", ev.kind()), data.into());
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "NATS event export fell behind the event hub");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The monitor's `metrics` reply, every `every`, as `<prefix>metrics`.
async fn export_metrics(
    commands: Arc<Commands>,
    buffer: Arc<Buffer>,
    subject: String,
    every: Duration,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        match commands.dispatch("metrics", Default::default()).await {
            Ok(v) => {
                if let Ok(data) = serde_json::to_vec(&v) {
                    buffer.push(subject.clone(), data.into());
                }
            }
            Err(e) => tracing::debug!("metrics not exported: {}", e.message),
        }
    }
}

/// An error body from a NATS reply that carries [`ERROR_HEADER`].
pub fn reply_error(msg: &async_nats::Message) -> Option<ErrorBody> {
    let code = msg.headers.as_ref()?.get(ERROR_HEADER)?.to_string();
    Some(
        serde_json::from_slice::<ErrorBody>(&msg.payload)
            .unwrap_or_else(|_| ErrorBody::new(ErrorCode::Internal, code)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_is_consumed_once_per_delivery() {
        let e = Echo::default();
        e.note("a.b", b"1");
        e.note("a.b", b"1");
        assert!(e.take("a.b", b"1"));
        assert!(!e.take("a.b", b"2"));
        assert!(e.take("a.b", b"1"));
        assert!(!e.take("a.b", b"1"));
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(redact_url("nats://u:p@h:4222"), "nats://h:4222");
        assert_eq!(redact_url("tok@h:4222"), "h:4222");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
    }

    #[test]
    fn payloads_become_json() {
        assert_eq!(&as_json(b"{\"a\":1}")[..], b"{\"a\":1}");
        assert_eq!(&as_json(b"hello")[..], b"\"hello\"");
        assert_eq!(&as_json(b"")[..], b"null");
    }
}
