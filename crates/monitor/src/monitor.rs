//! The `monitor` subsystem: collection, history, checks and alerts, and the `metrics`,
//! `alerts` and `report` commands.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use majordomo_core::hub::Event;
use majordomo_core::{BoxFuture, Ctx, Subsystem};
use majordomo_proto::monitor::{
    AlertsCmd, AlertsReply, CheckBrief, Counts, MetricsArgs, MetricsCmd, MetricsHistory,
    MetricsNow, MetricsReply, ProgramSeen, Report, ReportAlerts, ReportCmd, ReportDaemon,
    ReportHistory, Series,
};
use majordomo_proto::{AlertBrief, AlertSummary, ErrorBody, ErrorCode, NoArgs};
use tokio::sync::broadcast::error::RecvError;

use crate::alerts::{self, Alert, AlertState};
use crate::config::{CheckConfig, MonitorSection};
use crate::{checks, collect, history, metrics, notify, unix_now};

/// The `monitor` subsystem. Its section is [`MonitorSection`] (`[monitor]` and `[[check]]`).
pub struct Monitor {
    /// When the daemon started (the report's uptime).
    started: Instant,
}

impl Monitor {
    /// Made once at daemon start: the report counts the daemon's uptime from here.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
        }
    }
}

impl Default for Monitor {
    fn default() -> Self {
        Self::new()
    }
}

impl Subsystem for Monitor {
    type Config = MonitorSection;

    fn name(&self) -> &'static str {
        "monitor"
    }

    fn enabled(&self, config: &MonitorSection) -> bool {
        config.monitor.enabled
    }

    fn run(&self, ctx: Ctx<MonitorSection>) -> BoxFuture {
        Box::pin(run(ctx, self.started))
    }
}

/// What the monitor's tasks and commands share.
pub struct State {
    pub engine: Mutex<alerts::Engine>,
    pub latest: Mutex<metrics::Snapshot>,
    pub programs: Mutex<BTreeMap<String, ProgramSeen>>,
    pub notifications: Mutex<BTreeMap<String, Counts>>,
    /// Each job's last run and last success, from the hub (for job checks).
    pub jobs: Mutex<BTreeMap<String, JobSeen>>,
    /// When this monitor started: a job that has not succeeded since counts from here.
    pub started: SystemTime,
    pub history_dir: PathBuf,
    pub alert_log: PathBuf,
    /// When the daemon started.
    pub daemon_started: Instant,
}

/// What the monitor knows of a job, from `JobFinished` events.
#[derive(Debug, Clone, Default)]
pub struct JobSeen {
    /// The last run: whether it succeeded, and how it ended in words.
    pub last: Option<(bool, String)>,
    /// When it last succeeded.
    pub last_ok: Option<SystemTime>,
}

impl JobSeen {
    fn record(&mut self, run: &majordomo_proto::scheduler::Run) {
        use majordomo_proto::scheduler::RunOutcome as O;
        let ok = run.outcome == Some(O::Ok);
        let mut what = match run.outcome {
            Some(O::Ok) => "succeeded".to_string(),
            Some(O::Failed) => "failed".to_string(),
            Some(O::TimedOut) => "timed out".to_string(),
            Some(O::Killed) => "was killed".to_string(),
            Some(O::Interrupted) => "was interrupted".to_string(),
            None => "ended without an outcome".to_string(),
        };
        if let Some(code) = run.exit_code.filter(|_| !ok) {
            what.push_str(&format!(" (exit code {code})"));
        }
        if let Some(e) = run.error.as_deref().filter(|e| !ok && !e.is_empty()) {
            what.push_str(&format!(": {e}"));
        }
        if let Some(ended) = &run.ended {
            what.push_str(&format!(" at {ended}"));
        }
        if ok {
            self.last_ok = Some(
                run.ended
                    .as_deref()
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                    .unwrap_or_else(SystemTime::now),
            );
        }
        self.last = Some((ok, what));
    }
}

/// The alert summary `status` shows.
fn summary(active: &[Alert]) -> AlertSummary {
    let count = |s: AlertState| active.iter().filter(|a| a.state == s).count() as u32;
    AlertSummary {
        firing: count(AlertState::Firing),
        pending: count(AlertState::Pending),
        active: active
            .iter()
            .map(|a| AlertBrief {
                id: a.id.clone(),
                state: a.state.as_str().to_string(),
                severity: a.severity.as_str().to_string(),
                since: a.since.clone(),
                summary: a.summary.clone(),
            })
            .collect(),
    }
}

/// Records, logs and emits alert transitions, and publishes the new summary.
fn publish(ctx: &Ctx<MonitorSection>, st: &State, transitions: Vec<Alert>) {
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
    crate::append_rotating(&st.alert_log, &lines);
    // Under the engine's lock, so that concurrent checks publish their summaries in order.
    if let Ok(e) = st.engine.lock() {
        ctx.publish(&summary(&e.active()));
    }
    for a in transitions {
        crate::log_alert(&a);
        ctx.hub.emit(Event::Alert(a));
    }
}

async fn run(ctx: Ctx<MonitorSection>, daemon_started: Instant) -> Result<(), String> {
    let cfg = ctx.config.borrow().clone();
    let dir = ctx.state_dir().join("monitor");
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create {}: {e}; check permissions", dir.display()))?;
    let st = Arc::new(State {
        engine: Mutex::default(),
        latest: Mutex::default(),
        programs: Mutex::default(),
        notifications: Mutex::default(),
        jobs: Mutex::default(),
        started: SystemTime::now(),
        history_dir: dir.join("history"),
        alert_log: dir.join("alerts.jsonl"),
        daemon_started,
    });
    for p in [st.alert_log.with_extension("1.jsonl"), st.alert_log.clone()] {
        crate::repair_jsonl(&p, "the alert log");
    }
    ctx.publish(&AlertSummary::default());
    register_commands(&ctx, &st);
    let checks: Arc<Vec<CheckConfig>> = Arc::new(cfg.check.clone());
    let metric_checks: Vec<CheckConfig> = checks
        .iter()
        .filter(|c| c.metric.is_some())
        .cloned()
        .collect();
    // Watch channels, not a `Notify`: every check of the kind must wake, and `notify_one`
    // would wake only one of several program checks.
    let (program_tx, program_rx) = tokio::sync::watch::channel(0u64);
    let (job_tx, job_rx) = tokio::sync::watch::channel(0u64);
    listen(&ctx, &st, program_tx, job_tx);

    // Alerts raised before the notifiers subscribed would never be notified: let every
    // subsystem starting alongside (at start-up or on a reload) get going first.
    ctx.ready();
    ctx.others_started(Duration::from_secs(10)).await;

    // Command, tcp, http and program checks: one task each.
    for check in checks.iter().filter(|c| c.metric.is_none()).cloned() {
        let every = check.interval.unwrap_or(cfg.monitor.interval).get();
        let span = tracing::info_span!("check", name = %check.name);
        let task = run_check(
            ctx.clone(),
            st.clone(),
            check,
            every,
            program_rx.clone(),
            job_rx.clone(),
        );
        ctx.tracker
            .spawn(tracing::Instrument::instrument(task, span));
    }

    let mut collector = collect::Collector::new(cfg.monitor.top);
    let mut history = cfg.monitor.history.then(|| {
        history::History::open(
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
        // What other subsystems publish (the bus's gauges), beside the collector's own.
        ctx.hub.gauges().read(&mut |name, label, value| {
            if metrics::lookup(name).is_some() {
                scratch.push(name, label, value);
            }
        });
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
        let transitions = evaluate(&st, &metric_checks, &scratch);
        publish(&ctx, &st, transitions);
        if let Ok(mut latest) = st.latest.lock() {
            std::mem::swap(&mut *latest, &mut scratch);
        }
    }
}

/// Keeps the programs' states (for program checks, program metrics and the report), the jobs'
/// last runs (for job checks; each one bumps `jobs_changed`) and the notifications' outcomes
/// (for the report) from the hub.
fn listen(
    ctx: &Ctx<MonitorSection>,
    st: &Arc<State>,
    programs_changed: tokio::sync::watch::Sender<u64>,
    jobs_changed: tokio::sync::watch::Sender<u64>,
) {
    let record = {
        let st = st.clone();
        move |ev: &Event| {
            let Event::ProgramState {
                name,
                state,
                pid,
                restarts,
                ..
            } = ev
            else {
                return;
            };
            if let Ok(mut p) = st.programs.lock() {
                let since = match p.get(name) {
                    Some(s) if s.state == *state => s.since.clone(),
                    _ => alerts::rfc3339(SystemTime::now()),
                };
                p.insert(
                    name.clone(),
                    ProgramSeen {
                        state: *state,
                        pid: *pid,
                        since,
                        restarts: *restarts,
                    },
                );
            }
        }
    };
    // Subscribe first, then take the states programs reached before this subsystem started
    // (the supervisor may have reported them already): nothing falls in between.
    let mut rx = ctx.hub.subscribe();
    for ev in ctx.hub.program_states() {
        record(&ev);
    }
    let record_job = {
        let st = st.clone();
        move |job: &str, run: &majordomo_proto::scheduler::Run| {
            if let Ok(mut j) = st.jobs.lock() {
                j.entry(job.to_string()).or_default().record(run);
            }
        }
    };
    for (job, runs) in ctx.hub.job_runs() {
        // The last success first, then the last run (which may be the same).
        for ev in [runs.last_ok, runs.last].into_iter().flatten() {
            if let Event::JobFinished { run, .. } = &*ev {
                record_job(&job, run);
            }
        }
    }
    let st = st.clone();
    let token = ctx.token.clone();
    ctx.tracker.spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = token.cancelled() => return,
                ev = rx.recv() => ev,
            };
            match ev {
                Ok(ev) => match &*ev {
                    Event::ProgramState { .. } => {
                        record(&ev);
                        programs_changed.send_modify(|n| *n += 1);
                    }
                    Event::JobFinished { job, run } => {
                        record_job(job, run);
                        jobs_changed.send_modify(|n| *n += 1);
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

/// One command, tcp, http, program or job check, run every `every` (and, for a program check,
/// whenever a program changes state; for a job check, whenever a job run ends) until the
/// subsystem stops.
async fn run_check(
    ctx: Ctx<MonitorSection>,
    st: Arc<State>,
    check: CheckConfig,
    every: Duration,
    mut programs_changed: tokio::sync::watch::Receiver<u64>,
    mut jobs_changed: tokio::sync::watch::Receiver<u64>,
) {
    let client = checks::http_client(&check);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.token.cancelled() => return,
            _ = tick.tick() => {}
            r = programs_changed.changed(), if check.program.is_some() => {
                if r.is_err() {
                    return;
                }
            }
            r = jobs_changed.changed(), if check.job.is_some() => {
                if r.is_err() {
                    return;
                }
            }
        }
        let (ok, detail) = tokio::select! {
            _ = ctx.token.cancelled() => return,
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
            // A program check carries the restart count: a crash loop that gets worse is a
            // new notification, not a duplicate.
            value: check.program.as_ref().and_then(|name| {
                st.programs
                    .lock()
                    .ok()
                    .and_then(|p| p.get(name).map(|s| s.restarts as f64))
            }),
            detail,
        };
        let t = st
            .engine
            .lock()
            .map(|mut e| e.observe(obs, Instant::now(), SystemTime::now()))
            .unwrap_or_default();
        publish(&ctx, &st, t);
    }
}

/// Evaluates the metric checks against one collection; returns the transitions.
fn evaluate(st: &State, metric_checks: &[CheckConfig], snap: &metrics::Snapshot) -> Vec<Alert> {
    let mut transitions = Vec::new();
    let mut seen = HashSet::new();
    let Ok(mut engine) = st.engine.lock() else {
        return transitions;
    };
    let now = Instant::now();
    let wall = SystemTime::now();
    for c in metric_checks {
        for s in &snap.samples {
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
                (Some(a), _) => format!("{} is {:.1} (threshold: above {a})", s.key(), s.value),
                (_, Some(b)) => format!("{} is {:.1} (threshold: below {b})", s.key(), s.value),
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
    transitions
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

/// The values of `s` whose series key starts with `prefix`.
fn current(s: &metrics::Snapshot, prefix: &str) -> MetricsNow {
    MetricsNow {
        at: s.at,
        values: s
            .samples
            .iter()
            .map(|x| (x.key(), x.value))
            .filter(|(k, _)| k.starts_with(prefix))
            .collect(),
        top_cpu: s.top_cpu.clone(),
        top_mem: s.top_mem.clone(),
    }
}

fn register_commands(ctx: &Ctx<MonitorSection>, st: &Arc<State>) {
    let s = st.clone();
    ctx.handle::<MetricsCmd, _, _>(move |a: MetricsArgs| {
        let st = s.clone();
        async move {
            let prefix = a.name.unwrap_or_default();
            let Some(since) = a.since else {
                let snap = st.latest.lock().map(|l| l.clone()).unwrap_or_default();
                if snap.at == 0 {
                    return Err(ErrorBody::new(
                        ErrorCode::Busy,
                        "no collection has run yet; try again in a moment",
                    ));
                }
                return Ok(MetricsReply::Now(current(&snap, &prefix)));
            };
            let d = parse_since(&since)?;
            let from = unix_now().saturating_sub(d.as_secs());
            let dir = st.history_dir.clone();
            let series =
                tokio::task::spawn_blocking(move || history::History::query(&dir, from, &prefix))
                    .await
                    .unwrap_or_default();
            let series = series
                .into_iter()
                .map(|(k, points)| {
                    let stats = history::stats(&points);
                    (k, Series { stats, points })
                })
                .collect();
            Ok(MetricsReply::History(MetricsHistory {
                since: from,
                series,
            }))
        }
    });
    let s = st.clone();
    ctx.handle::<AlertsCmd, _, _>(move |_: NoArgs| {
        let st = s.clone();
        async move {
            let (active, recent) = st
                .engine
                .lock()
                .map(|e| (e.active(), e.recent()))
                .unwrap_or_default();
            Ok(AlertsReply { active, recent })
        }
    });
    let s = st.clone();
    let cfg_rx = ctx.config.clone();
    let instance = ctx.daemon.instance().to_string();
    ctx.handle::<ReportCmd, _, _>(move |_: NoArgs| {
        let st = s.clone();
        let cfg = cfg_rx.borrow().clone();
        let instance = instance.clone();
        async move { Ok(report(&st, &cfg, instance).await) }
    });
}

/// The JSON health report.
async fn report(st: &Arc<State>, cfg: &MonitorSection, instance: String) -> Report {
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
        let mut hist: Vec<Alert> = Vec::new();
        for p in [log.with_extension("1.jsonl"), log] {
            // Corrupt lines were counted and logged when the monitor opened the log.
            if let Ok(text) = std::fs::read_to_string(&p) {
                let (alerts, _) = majordomo_core::jsonl::parse_lines::<Alert>(&text);
                hist.extend(
                    alerts
                        .into_iter()
                        .filter(|a| matches!(a.state, AlertState::Firing | AlertState::Resolved)),
                );
            }
        }
        let skip = hist.len().saturating_sub(500);
        (series, collect::listening_ports(), hist.split_off(skip))
    })
    .await
    .unwrap_or_default();
    let checks = cfg
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
            CheckBrief {
                name: c.name.clone(),
                kind: c.kind().to_string(),
                severity: c.severity,
                state: state.to_string(),
            }
        })
        .collect();
    let programs = st.programs.lock().map(|p| p.clone()).unwrap_or_default();
    let notifications = st
        .notifications
        .lock()
        .map(|n| n.clone())
        .unwrap_or_default();
    Report {
        generated_at: alerts::rfc3339(SystemTime::now()),
        instance,
        host: majordomo_platform::host_name(),
        daemon: ReportDaemon {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: st.daemon_started.elapsed().as_secs(),
        },
        current: current(&snap, ""),
        ports,
        history: ReportHistory {
            since: from,
            window_s: window,
            series,
        },
        checks,
        alerts: ReportAlerts {
            active,
            recent,
            history: alert_history,
        },
        programs,
        notifications,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_firing_and_pending() {
        let alert = |id: &str, state| Alert {
            id: id.into(),
            check: id.into(),
            source: "metric".into(),
            state,
            severity: crate::Severity::Warning,
            labels: BTreeMap::new(),
            value: None,
            summary: String::new(),
            since: String::new(),
            fired_at: None,
            resolved_at: None,
        };
        let s = summary(&[
            alert("a", AlertState::Firing),
            alert("b", AlertState::Pending),
            alert("c", AlertState::Firing),
        ]);
        assert_eq!((s.firing, s.pending, s.active.len()), (2, 1, 3));
        assert_eq!(s.active[1].state, "pending");
    }
}
