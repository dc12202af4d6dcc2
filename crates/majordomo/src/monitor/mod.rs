//! Health monitor: the metrics collector and its history, checks, alerts (the `monitor`
//! subsystem) and notifiers (the `notify` subsystem).
//!
//! The monitor collects every `[monitor] interval`, appends to the on-disk history, evaluates
//! the metric checks, and runs each command/tcp/http/program check in its own task. Alert
//! transitions (pending → firing → resolved) are published as [`crate::hub::Event::Alert`];
//! the notify subsystem subscribes to them, so the two never call each other.

pub mod alerts;
pub mod checks;
pub mod cli;
pub mod collect;
pub mod config;
pub mod history;
pub mod metrics;
pub mod notify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use majordomo_proto::{AlertBrief, AlertSummary, ErrorBody, ErrorCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::commands::parse_args;
use crate::config::Config;
use crate::hub::Event;
use crate::lifecycle::{BoxFuture, Change, Ctx, Subsystem};

pub use alerts::{Alert, AlertState};
pub use config::{CheckConfig, MonitorConfig, NotifierConfig, Severity};

/// The alert summary `status` shows; the monitor keeps it current.
#[derive(Default)]
pub struct AlertBoard(Mutex<AlertSummary>);

impl AlertBoard {
    pub fn summary(&self) -> AlertSummary {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn set(&self, active: &[Alert]) {
        if let Ok(mut s) = self.0.lock() {
            s.firing = active
                .iter()
                .filter(|a| a.state == AlertState::Firing)
                .count() as u32;
            s.pending = active
                .iter()
                .filter(|a| a.state == AlertState::Pending)
                .count() as u32;
            s.active = active
                .iter()
                .map(|a| AlertBrief {
                    id: a.id.clone(),
                    state: a.state.as_str().to_string(),
                    severity: a.severity.as_str().to_string(),
                    since: a.since.clone(),
                    summary: a.summary.clone(),
                })
                .collect();
        }
    }
}

/// A program's last reported state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProgramSeen {
    pub state: String,
    pub pid: Option<u32>,
    pub since: String,
}

impl ProgramSeen {
    pub fn running(&self) -> bool {
        matches!(self.state.as_str(), "running" | "ready")
    }
}

/// What the monitor's tasks and commands share.
pub struct State {
    pub engine: Mutex<alerts::Engine>,
    pub latest: Mutex<metrics::Snapshot>,
    pub programs: Mutex<BTreeMap<String, ProgramSeen>>,
    pub notifications: Mutex<BTreeMap<String, notify::Counts>>,
    pub history_dir: PathBuf,
    pub alert_log: PathBuf,
    pub started: SystemTime,
}

/// The instance's state folder, with `[paths]` applied.
pub fn state_dir(ctx: &Ctx, cfg: &Config) -> PathBuf {
    ctx.shared
        .layout
        .clone()
        .with_overrides(&cfg.paths)
        .state_dir
}

pub struct Monitor;

impl Subsystem for Monitor {
    fn name(&self) -> &'static str {
        "monitor"
    }

    fn enabled(&self, config: &Config) -> bool {
        config.monitor.enabled
    }

    fn change(&self, old: &Config, new: &Config) -> Change {
        if old.monitor != new.monitor
            || old.check != new.check
            || old.paths.state_dir != new.paths.state_dir
        {
            Change::Restart
        } else {
            Change::None
        }
    }

    fn run(&self, ctx: Ctx) -> BoxFuture {
        Box::pin(run_monitor(ctx))
    }
}

fn publish(ctx: &Ctx, st: &State, transitions: Vec<Alert>) {
    if transitions.is_empty() {
        return;
    }
    let mut lines = String::new();
    for a in &transitions {
        if let Ok(l) = serde_json::to_string(a) {
            lines.push_str(&l);
            lines.push('\n');
        }
    }
    append_rotating(&st.alert_log, &lines);
    if let Ok(e) = st.engine.lock() {
        ctx.shared.alerts.set(&e.active());
    }
    for a in transitions {
        ctx.shared.hub.emit(Event::Alert(a));
    }
}

/// Appends to a JSON-lines file, keeping it under 1 MB (the previous part is kept as `.1.jsonl`).
pub fn append_rotating(path: &std::path::Path, text: &str) {
    use std::io::Write;
    if std::fs::metadata(path).is_ok_and(|m| m.len() > 1_000_000) {
        let _ = std::fs::rename(path, path.with_extension("1.jsonl"));
    }
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = res {
        tracing::warn!(path = %path.display(), error = %e, "cannot append");
    }
}

async fn run_monitor(ctx: Ctx) -> Result<(), String> {
    let cfg = ctx.config.borrow().clone();
    let dir = state_dir(&ctx, &cfg).join("monitor");
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create {}: {e}; check permissions", dir.display()))?;
    let st = Arc::new(State {
        engine: Mutex::default(),
        latest: Mutex::default(),
        programs: Mutex::default(),
        notifications: Mutex::default(),
        history_dir: dir.join("history"),
        alert_log: dir.join("alerts.jsonl"),
        started: SystemTime::now(),
    });
    register_commands(&ctx, &st);
    let checks: Arc<Vec<CheckConfig>> = Arc::new(cfg.check.clone());
    let metric_checks: Vec<CheckConfig> = checks
        .iter()
        .filter(|c| c.metric.is_some())
        .cloned()
        .collect();
    let program_wake = Arc::new(tokio::sync::Notify::new());

    // Hub listener: program states (for program checks, program metrics and the report) and
    // notification outcomes (for the report).
    {
        let record = {
            let st = st.clone();
            move |name: &String, state: &String, pid: &Option<u32>| {
                if let Ok(mut p) = st.programs.lock() {
                    let since = match p.get(name) {
                        Some(s) if s.state == *state => s.since.clone(),
                        _ => alerts::rfc3339(SystemTime::now()),
                    };
                    p.insert(
                        name.clone(),
                        ProgramSeen {
                            state: state.clone(),
                            pid: *pid,
                            since,
                        },
                    );
                }
            }
        };
        let st = st.clone();
        // Subscribe first, then take the states programs reached before this subsystem started
        // (the supervisor may have reported them already): nothing falls in between.
        let mut rx = ctx.shared.hub.subscribe();
        for ev in ctx.shared.hub.program_states() {
            if let Event::ProgramState {
                name, state, pid, ..
            } = &*ev
            {
                record(name, state, pid);
            }
        }
        let token = ctx.token.clone();
        let wake = program_wake.clone();
        ctx.tracker.spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = token.cancelled() => return,
                    ev = rx.recv() => ev,
                };
                match ev {
                    Ok(ev) => match &*ev {
                        Event::ProgramState {
                            name, state, pid, ..
                        } => {
                            record(name, state, pid);
                            wake.notify_one();
                        }
                        Event::Notification(d) => {
                            if let Ok(mut n) = st.notifications.lock() {
                                let c = n.entry(d.notifier.clone()).or_default();
                                match d.outcome {
                                    notify::Outcome::Delivered => c.delivered += 1,
                                    notify::Outcome::Failed => c.failed += 1,
                                    notify::Outcome::Suppressed => c.suppressed += 1,
                                }
                                c.attempts += d.attempts.len() as u64;
                            }
                        }
                        _ => {}
                    },
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "monitor fell behind the event hub")
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    // Alerts raised before the notifiers subscribed would never be notified: let every
    // subsystem starting alongside (at start-up or on a reload) get going first.
    ctx.ready();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && ctx
            .shared
            .board
            .snapshot()
            .values()
            .any(|s| s.state == "starting")
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Command, tcp, http and program checks: one task each.
    for check in checks.iter().filter(|c| c.metric.is_none()).cloned() {
        let ctx2 = ctx.clone();
        let st = st.clone();
        let every = check.interval.unwrap_or(cfg.monitor.interval).get();
        let wake = program_wake.clone();
        let span = tracing::info_span!("check", name = %check.name);
        ctx.tracker.spawn(tracing::Instrument::instrument(
            async move {
                let client = checks::http_client(&check);
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ctx2.token.cancelled() => return,
                        _ = tick.tick() => {}
                        _ = wake.notified(), if check.program.is_some() => {}
                    }
                    let (ok, detail) = tokio::select! {
                        _ = ctx2.token.cancelled() => return,
                        r = checks::run(&check, &st, client.as_ref()) => r,
                    };
                    let obs = alerts::Observation {
                        check: &check,
                        id: check.name.clone(),
                        labels: BTreeMap::new(),
                        cond: if ok {
                            alerts::Cond::Clear
                        } else {
                            alerts::Cond::Trip
                        },
                        value: None,
                        detail,
                    };
                    let t = st
                        .engine
                        .lock()
                        .map(|mut e| e.observe(obs, Instant::now(), SystemTime::now()))
                        .unwrap_or_default();
                    publish(&ctx2, &st, t);
                }
            },
            span,
        ));
    }

    let mut collector = collect::Collector::new(cfg.monitor.top);
    let mut history = cfg.monitor.history.then(|| {
        history::History::new(
            st.history_dir.clone(),
            cfg.monitor.full_resolution.get().as_secs(),
            cfg.monitor.downsample.get().as_secs(),
            cfg.monitor.retention.get().as_secs(),
        )
    });
    let mut scratch = metrics::Snapshot::default();
    let mut programs = collect::Programs::default();
    let mut tick = tokio::time::interval(cfg.monitor.interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut history_failed = false;
    ctx.detail(format!(
        "every {} · {} checks",
        cfg.monitor.interval,
        checks.len()
    ));
    loop {
        tokio::select! {
            _ = ctx.token.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        programs.pids.clear();
        if let Ok(p) = st.programs.lock() {
            for (name, s) in p.iter() {
                if let (true, Some(pid)) = (s.running(), s.pid) {
                    programs.pids.insert(name.clone(), pid);
                }
            }
        }
        collector.collect(&programs, &mut scratch);
        if let Some(h) = history.as_mut() {
            match h.append(&scratch) {
                Ok(()) => history_failed = false,
                Err(e) if !history_failed => {
                    history_failed = true;
                    tracing::error!(error = %e, "metrics history not written; collection and checks go on");
                }
                Err(_) => {}
            }
        }
        let mut transitions = Vec::new();
        let mut seen = std::collections::HashSet::new();
        if let Ok(mut engine) = st.engine.lock() {
            let now = Instant::now();
            let wall = SystemTime::now();
            for c in &metric_checks {
                for s in &scratch.samples {
                    if Some(s.name) != c.metric.as_deref() {
                        continue;
                    }
                    let labels: BTreeMap<String, String> = match (s.label_key(), &s.label) {
                        (Some(k), Some(v)) => BTreeMap::from([(k.to_string(), v.to_string())]),
                        _ => BTreeMap::new(),
                    };
                    if c.labels.iter().any(|(k, v)| labels.get(k) != Some(v)) {
                        continue;
                    }
                    let cond = alerts::metric_cond(c, s.value);
                    let id = match labels.iter().next() {
                        Some((k, v)) => format!("{}{{{k}={v}}}", c.name),
                        None => c.name.clone(),
                    };
                    let detail = match (c.above, c.below) {
                        (Some(a), _) => {
                            format!("{} is {:.1} (threshold: above {a})", s.key(), s.value)
                        }
                        (_, Some(b)) => {
                            format!("{} is {:.1} (threshold: below {b})", s.key(), s.value)
                        }
                        _ => String::new(),
                    };
                    seen.insert(id.clone());
                    transitions.extend(engine.observe(
                        alerts::Observation {
                            check: c,
                            id,
                            labels,
                            cond,
                            value: Some(s.value),
                            detail,
                        },
                        now,
                        wall,
                    ));
                }
            }
            transitions.extend(engine.sweep_metric(&seen, wall));
        }
        publish(&ctx, &st, transitions);
        if let Ok(mut latest) = st.latest.lock() {
            std::mem::swap(&mut *latest, &mut scratch);
        }
    }
}

fn bad(msg: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::BadRequest, msg.into())
}

fn parse_since(s: &str) -> Result<Duration, ErrorBody> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        bad(format!(
            "invalid --since {s:?}: {e}; write it like \"1h\" or \"30m\""
        ))
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn current_json(s: &metrics::Snapshot, prefix: &str) -> Value {
    let mut m = serde_json::Map::new();
    for x in &s.samples {
        let k = x.key();
        if k.starts_with(prefix) {
            m.insert(k, json!(x.value));
        }
    }
    json!({"at": s.at, "values": m, "top_cpu": s.top_cpu, "top_mem": s.top_mem})
}

fn register_commands(ctx: &Ctx, st: &Arc<State>) {
    #[derive(Deserialize)]
    struct MetricsArgs {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        since: Option<String>,
    }
    let s = st.clone();
    ctx.command("metrics", move |args| {
        let st = s.clone();
        async move {
            let a: MetricsArgs = parse_args("metrics", args)?;
            let prefix = a.name.unwrap_or_default();
            match a.since {
                None => {
                    let snap = st.latest.lock().map(|l| l.clone()).unwrap_or_default();
                    if snap.at == 0 {
                        return Err(ErrorBody::new(
                            ErrorCode::Busy,
                            "no collection has run yet; try again in a moment",
                        ));
                    }
                    Ok(current_json(&snap, &prefix))
                }
                Some(since) => {
                    let d = parse_since(&since)?;
                    let from = unix_now().saturating_sub(d.as_secs());
                    let dir = st.history_dir.clone();
                    let series = tokio::task::spawn_blocking(move || {
                        history::History::query(&dir, from, &prefix)
                    })
                    .await
                    .unwrap_or_default();
                    let out: serde_json::Map<String, Value> = series
                        .into_iter()
                        .map(|(k, pts)| {
                            let stats = history::stats(&pts);
                            (k, json!({"stats": stats, "points": pts}))
                        })
                        .collect();
                    Ok(json!({"since": from, "series": out}))
                }
            }
        }
    });
    let s = st.clone();
    ctx.command("alerts", move |_| {
        let st = s.clone();
        async move {
            let (active, recent) = st
                .engine
                .lock()
                .map(|e| (e.active(), e.recent()))
                .unwrap_or_default();
            Ok(json!({"active": active, "recent": recent}))
        }
    });
    let s = st.clone();
    let shared = ctx.shared.clone();
    let cfg_rx = ctx.config.clone();
    ctx.command("report", move |_| {
        let st = s.clone();
        let shared = shared.clone();
        let cfg = cfg_rx.borrow().clone();
        async move { Ok(report(&st, &shared, &cfg).await) }
    });
}

/// The JSON health report.
async fn report(st: &Arc<State>, shared: &crate::daemon::Shared, cfg: &Config) -> Value {
    let snap = st.latest.lock().map(|l| l.clone()).unwrap_or_default();
    let (active, recent) = st
        .engine
        .lock()
        .map(|e| (e.active(), e.recent()))
        .unwrap_or_default();
    let dir = st.history_dir.clone();
    let log = st.alert_log.clone();
    let window = cfg.monitor.full_resolution.get().as_secs();
    let from = unix_now().saturating_sub(window);
    let (series, ports, alert_history) = tokio::task::spawn_blocking(move || {
        let series: BTreeMap<String, history::Stats> = history::History::query(&dir, from, "")
            .into_iter()
            .filter_map(|(k, pts)| Some((k, history::stats(&pts)?)))
            .collect();
        let mut hist: Vec<Value> = Vec::new();
        for p in [log.with_extension("1.jsonl"), log] {
            if let Ok(text) = std::fs::read_to_string(&p) {
                for line in text.lines() {
                    if let Ok(v) = serde_json::from_str::<Value>(line)
                        && matches!(v["state"].as_str(), Some("firing" | "resolved"))
                    {
                        hist.push(v);
                    }
                }
            }
        }
        let skip = hist.len().saturating_sub(500);
        (series, collect::listening_ports(), hist.split_off(skip))
    })
    .await
    .unwrap_or_default();
    let checks: Vec<Value> = cfg
        .check
        .iter()
        .map(|c| {
            let state = active
                .iter()
                .filter(|a| a.check == c.name)
                .map(|a| a.state)
                .max_by_key(|s| *s == AlertState::Firing)
                .map(|s| s.as_str())
                .unwrap_or("ok");
            json!({"name": c.name, "kind": c.kind(), "severity": c.severity, "state": state})
        })
        .collect();
    let programs = st.programs.lock().map(|p| p.clone()).unwrap_or_default();
    let notifications = st
        .notifications
        .lock()
        .map(|n| n.clone())
        .unwrap_or_default();
    let status = shared.status();
    json!({
        "generated_at": alerts::rfc3339(SystemTime::now()),
        "instance": status.instance,
        "host": notify::hostname(),
        "daemon": {"pid": status.pid, "version": status.version, "uptime_s": status.uptime_s},
        "current": current_json(&snap, ""),
        "ports": ports,
        "history": {"since": from, "window_s": window, "series": series},
        "checks": checks,
        "alerts": {"active": active, "recent": recent, "history": alert_history},
        "programs": programs,
        "notifications": notifications,
    })
}

/// The notify subsystem: one task per `[[notifier]]`, fed from the hub's alert events.
pub struct Notify;

impl Subsystem for Notify {
    fn name(&self) -> &'static str {
        "notify"
    }

    fn enabled(&self, config: &Config) -> bool {
        !config.notifier.is_empty()
    }

    fn change(&self, old: &Config, new: &Config) -> Change {
        if old.notifier != new.notifier || old.paths.state_dir != new.paths.state_dir {
            Change::Restart
        } else {
            Change::None
        }
    }

    fn run(&self, ctx: Ctx) -> BoxFuture {
        Box::pin(run_notify(ctx))
    }
}

fn emit_delivery(ctx: &Ctx, record: &notify::SharedRecord, d: notify::Delivery) {
    if let Ok(mut r) = record.lock() {
        r.add(d.clone());
    }
    ctx.shared.hub.emit(Event::Notification(d));
}

async fn run_notify(ctx: Ctx) -> Result<(), String> {
    let cfg = ctx.config.borrow().clone();
    let dir = state_dir(&ctx, &cfg);
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create {}: {e}; check permissions", dir.display()))?;
    let record: notify::SharedRecord =
        Arc::new(Mutex::new(notify::Record::open(dir.join("notify.jsonl"))));
    let deliverer = notify::Deliverer::new(&cfg.notifier, ctx.shared.layout.instance.clone());
    let mut queues = Vec::new();
    for n in cfg.notifier.iter().cloned() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Alert>(64);
        queues.push((n.clone(), tx));
        let ctx2 = ctx.clone();
        let record = record.clone();
        let deliverer = deliverer.clone();
        let span = tracing::info_span!("notifier", name = %n.name);
        ctx.tracker.spawn(tracing::Instrument::instrument(
            async move {
                let mut gate = notify::Gate::default();
                loop {
                    let a = tokio::select! {
                        _ = ctx2.token.cancelled() => return,
                        a = rx.recv() => match a { Some(a) => a, None => return },
                    };
                    if let Some(reason) = gate.check(&n, &a, Instant::now(), jiff::Timestamp::now())
                    {
                        emit_delivery(
                            &ctx2,
                            &record,
                            notify::Delivery {
                                at: alerts::rfc3339(SystemTime::now()),
                                notifier: n.name.clone(),
                                kind: n.kind,
                                alert: a.id.clone(),
                                state: a.state,
                                severity: a.severity,
                                outcome: notify::Outcome::Suppressed,
                                reason: Some(reason),
                                attempts: vec![],
                                test: false,
                            },
                        );
                        continue;
                    }
                    let d = tokio::select! {
                        _ = ctx2.token.cancelled() => return,
                        d = deliverer.deliver(&n, &a, false) => d,
                    };
                    emit_delivery(&ctx2, &record, d);
                }
            },
            span,
        ));
    }
    {
        #[derive(Deserialize)]
        struct LogArgs {
            #[serde(default)]
            notifier: Option<String>,
            #[serde(default)]
            limit: Option<usize>,
        }
        let record = record.clone();
        ctx.command("notify.log", move |args| {
            let record = record.clone();
            async move {
                let a: LogArgs = parse_args("notify.log", args)?;
                let r = record.lock().map_err(|_| bad("delivery record unavailable"))?;
                let counts: BTreeMap<&String, Value> = r
                    .counts()
                    .iter()
                    .filter(|(k, _)| a.notifier.as_ref().is_none_or(|n| n == *k))
                    .map(|(k, c)| {
                        let tried = c.delivered + c.failed;
                        let rate = if tried > 0 { Some(c.delivered as f64 / tried as f64 * 100.0) } else { None };
                        (k, json!({"delivered": c.delivered, "failed": c.failed, "suppressed": c.suppressed, "attempts": c.attempts, "delivery_rate_pct": rate}))
                    })
                    .collect();
                Ok(json!({
                    "counts": counts,
                    "deliveries": r.recent(a.notifier.as_deref(), a.limit.unwrap_or(20)),
                }))
            }
        });
    }
    {
        #[derive(Deserialize)]
        struct TestArgs {
            name: String,
        }
        let ctx2 = ctx.clone();
        let notifiers = cfg.notifier.clone();
        let record = record.clone();
        let deliverer = deliverer.clone();
        ctx.command("notify.test", move |args| {
            let (ctx2, notifiers, record, deliverer) = (
                ctx2.clone(),
                notifiers.clone(),
                record.clone(),
                deliverer.clone(),
            );
            async move {
                let a: TestArgs = parse_args("notify.test", args)?;
                let Some(n) = notifiers.iter().find(|n| n.name == a.name) else {
                    let names: Vec<&str> = notifiers.iter().map(|n| n.name.as_str()).collect();
                    return Err(ErrorBody::new(
                        ErrorCode::BadRequest,
                        format!(
                            "no notifier named {:?}; configured: {}",
                            a.name,
                            names.join(", ")
                        ),
                    ));
                };
                let now = alerts::rfc3339(SystemTime::now());
                let alert = Alert {
                    id: "test".into(),
                    check: "test".into(),
                    source: "test".into(),
                    state: AlertState::Firing,
                    severity: Severity::Info,
                    labels: BTreeMap::new(),
                    value: None,
                    summary: format!("test notification from majordomo via notifier {:?}", n.name),
                    since: now.clone(),
                    fired_at: Some(now),
                    resolved_at: None,
                };
                let d = deliverer.deliver(n, &alert, true).await;
                emit_delivery(&ctx2, &record, d.clone());
                serde_json::to_value(d).map_err(|e| bad(e.to_string()))
            }
        });
    }
    let mut rx = ctx.shared.hub.subscribe();
    ctx.ready();
    ctx.detail(format!("{} notifiers", queues.len()));
    loop {
        let ev = tokio::select! {
            _ = ctx.token.cancelled() => return Ok(()),
            ev = rx.recv() => ev,
        };
        match ev {
            Ok(ev) => {
                if let Event::Alert(a) = &*ev {
                    for (n, tx) in &queues {
                        if !notify::routes(n, a) {
                            continue;
                        }
                        if tx.try_send(a.clone()).is_err() {
                            emit_delivery(
                                &ctx,
                                &record,
                                notify::Delivery {
                                    at: alerts::rfc3339(SystemTime::now()),
                                    notifier: n.name.clone(),
                                    kind: n.kind,
                                    alert: a.id.clone(),
                                    state: a.state,
                                    severity: a.severity,
                                    outcome: notify::Outcome::Failed,
                                    reason: Some(
                                        "the notifier's queue is full (it is failing or slow)"
                                            .into(),
                                    ),
                                    attempts: vec![],
                                    test: false,
                                },
                            );
                        }
                    }
                }
            }
            Err(RecvError::Lagged(n)) => tracing::warn!(
                missed = n,
                "notify fell behind the event hub; some alerts were not notified"
            ),
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}
