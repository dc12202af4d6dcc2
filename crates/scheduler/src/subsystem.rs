//! The `scheduler` subsystem: one timer task per job, runs under the daemon-wide cap, the
//! socket commands `job.*`, `state.*`, `lock.*` and `notify.send`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use majordomo_bus::{Router, Wakes};
use majordomo_core::{BoxFuture, Change, ConnScope, Ctx, Subsystem};
use majordomo_proto::scheduler::*;
use majordomo_proto::{ErrorBody, ErrorCode, Event};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{JobConfig, NotifyOn, Overlap, SchedulerSection};
use crate::locks::{self, NamedLock};
use crate::plan::Plan;
use crate::record::{self, JobRecord};
use crate::runner::{self, Publisher, rfc3339};
use crate::store::Store;

/// The scheduler subsystem; it publishes `publish` jobs and state changes on the bus.
pub struct Scheduler {
    router: Arc<Router>,
}

impl Scheduler {
    pub fn new(router: Arc<Router>) -> Self {
        Self { router }
    }
}

impl Subsystem for Scheduler {
    type Config = SchedulerSection;

    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn change(&self, old: &SchedulerSection, new: &SchedulerSection) -> Change {
        if old == new {
            Change::None
        } else {
            Change::Live
        }
    }

    fn run(&self, ctx: Ctx<SchedulerSection>) -> BoxFuture {
        let router = self.router.clone();
        Box::pin(run(ctx, router))
    }
}

struct Job {
    cfg: Arc<JobConfig>,
    plan: Plan,
    timer: tokio::task::AbortHandle,
}

/// What every run of a job shares, kept across reloads while the job exists.
#[derive(Default)]
struct JobRt {
    slot: Arc<tokio::sync::Mutex<()>>,
    kill: Mutex<CancellationToken>,
    running: AtomicBool,
    paused: AtomicBool,
    next_ms: Mutex<Option<i64>>,
    last: Mutex<Option<Run>>,
    /// Jobs that are not persistent: the record, kept here and written in batches (`dirty`).
    mem: Mutex<Option<JobRecord>>,
    dirty: AtomicBool,
}

struct Shared {
    dir: PathBuf,
    by: String,
    hub: majordomo_core::Hub,
    token: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
    sem: Arc<Semaphore>,
    max: AtomicUsize,
    cap: AtomicUsize,
    running: AtomicUsize,
    publish: Publisher,
    jobs: RwLock<BTreeMap<String, Job>>,
    rts: RwLock<HashMap<String, Arc<JobRt>>>,
    store: Store,
    held: Mutex<HashMap<u64, NamedLock>>,
    next_token: AtomicU64,
}

/// Kept in the connection's scope: releases a `lock.acquire` lock when the connection closes.
struct Release {
    sh: std::sync::Weak<Shared>,
    token: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some(sh) = self.sh.upgrade() {
            let l = sh.held.lock().ok().and_then(|mut h| h.remove(&self.token));
            if let Some(l) = l {
                tracing::debug!(
                    lock = l.name(),
                    token = self.token,
                    "lock released: its connection closed"
                );
            }
        }
    }
}

fn internal(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::Internal, e.to_string())
}

fn bad(e: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::BadRequest, e.to_string())
}

fn paused_marker(dir: &Path, name: &str) -> PathBuf {
    record::jobs_dir(dir).join(format!("{name}.paused"))
}

/// Whether `job pause` holds the job (a marker file, so the daemon and `check` agree).
pub fn is_paused(dir: &Path, name: &str) -> bool {
    paused_marker(dir, name).exists()
}

async fn run(ctx: Ctx<SchedulerSection>, router: Arc<Router>) -> Result<(), String> {
    let dir = ctx.state_dir().to_path_buf();
    std::fs::create_dir_all(record::jobs_dir(&dir)).map_err(|e| {
        format!(
            "cannot create {}: {e}; check permissions",
            record::jobs_dir(&dir).display()
        )
    })?;
    let section = ctx.config.borrow().clone();
    let r = router.clone();
    let publish: Publisher = Arc::new(move |topic: &str, data: &[u8]| {
        let limits = r.limits();
        let mut wakes = Wakes::default();
        r.publish(topic, None, data, &limits, &mut wakes);
        wakes.flush();
        Ok(())
    });
    let sh = Arc::new(Shared {
        dir: dir.clone(),
        by: runner::by_label("daemon"),
        hub: ctx.hub.clone(),
        token: ctx.token.clone(),
        tracker: ctx.tracker.clone(),
        sem: Arc::new(Semaphore::new(section.scheduler.max_concurrent)),
        max: AtomicUsize::new(section.scheduler.max_concurrent),
        cap: AtomicUsize::new(section.scheduler.history),
        running: AtomicUsize::new(0),
        publish,
        jobs: RwLock::new(BTreeMap::new()),
        rts: RwLock::new(HashMap::new()),
        store: Store::new(&dir),
        held: Mutex::new(HashMap::new()),
        next_token: AtomicU64::new(1),
    });
    register(&ctx, &sh);
    // Start-up: interrupted runs and missed occurrences of persistent jobs, once each.
    for j in section.job.iter().filter(|j| j.persistent) {
        start_up(&sh, j).await;
    }
    let flusher = sh.clone();
    ctx.tracker.spawn(async move {
        loop {
            let stop = tokio::select! {
                _ = flusher.token.cancelled() => true,
                _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            };
            let f = flusher.clone();
            let _ = tokio::task::spawn_blocking(move || flush(&f)).await;
            if stop {
                return;
            }
        }
    });
    reconcile(&sh, &section);
    ctx.ready();
    ctx.detail(format!("{} jobs", section.job.len()));
    let mut cfg = ctx.config.clone();
    loop {
        tokio::select! {
            _ = ctx.token.cancelled() => break,
            r = cfg.changed() => {
                if r.is_err() { break; }
                let section = cfg.borrow_and_update().clone();
                reconcile(&sh, &section);
                ctx.detail(format!("{} jobs", section.job.len()));
            }
        }
    }
    if let Ok(jobs) = sh.jobs.read() {
        for j in jobs.values() {
            j.timer.abort();
        }
    }
    if let Ok(mut h) = sh.held.lock() {
        h.clear();
    }
    Ok(())
}

fn rt(sh: &Shared, name: &str) -> Arc<JobRt> {
    if let Some(r) = sh.rts.read().ok().and_then(|m| m.get(name).cloned()) {
        return r;
    }
    let Ok(mut m) = sh.rts.write() else {
        return Arc::new(JobRt::default());
    };
    m.entry(name.to_string())
        .or_insert_with(|| {
            let r = JobRt::default();
            r.paused.store(is_paused(&sh.dir, name), Ordering::Relaxed);
            Arc::new(r)
        })
        .clone()
}

/// Applies a (new) section: new and changed jobs get a new timer; running runs are left alone
/// and the new schedule applies from the next occurrence.
fn reconcile(sh: &Arc<Shared>, section: &SchedulerSection) {
    sh.cap.store(section.scheduler.history, Ordering::Relaxed);
    let want = section.scheduler.max_concurrent;
    let had = sh.max.swap(want, Ordering::Relaxed);
    if want > had {
        sh.sem.add_permits(want - had);
    } else if want < had {
        let _ = sh.sem.forget_permits(had - want);
    }
    let Ok(mut jobs) = sh.jobs.write() else {
        return;
    };
    jobs.retain(|name, j| {
        let keep = section.job.iter().any(|c| &c.name == name && *c == *j.cfg);
        if !keep {
            j.timer.abort();
        }
        keep
    });
    for c in &section.job {
        if jobs.contains_key(&c.name) {
            continue;
        }
        let Ok(plan) = c.plan() else { continue };
        let cfg = Arc::new(c.clone());
        let timer = tokio::spawn(timer(sh.clone(), cfg.clone(), plan.clone())).abort_handle();
        jobs.insert(c.name.clone(), Job { cfg, plan, timer });
    }
    if let Ok(mut rts) = sh.rts.write() {
        rts.retain(|name, _| section.job.iter().any(|c| &c.name == name));
    }
}

/// Sleeps until `t` by the wall clock, re-reading it at least every 30 s (suspend, clock steps).
async fn sleep_until_wall(t: Timestamp) {
    loop {
        let left = t.as_millisecond() - Timestamp::now().as_millisecond();
        let left_us = t.as_microsecond() - Timestamp::now().as_microsecond();
        if left_us <= 0 {
            return;
        }
        let d = if left > 30_000 {
            Duration::from_secs(30)
        } else {
            Duration::from_micros(left_us as u64)
        };
        tokio::time::sleep(d).await;
    }
}

async fn timer(sh: Arc<Shared>, cfg: Arc<JobConfig>, plan: Plan) {
    let rt = rt(&sh, &cfg.name);
    let mut after = Timestamp::now();
    loop {
        let Some(next) = plan.next_after(after) else {
            if let Ok(mut n) = rt.next_ms.lock() {
                *n = None;
            }
            return;
        };
        if let Ok(mut n) = rt.next_ms.lock() {
            *n = Some(next.as_millisecond());
        }
        let jitter = cfg.jitter.get();
        let start = if jitter.is_zero() {
            next
        } else {
            let ms = fastrand::u64(0..jitter.as_millis().max(1) as u64);
            next + jiff::SignedDuration::from_millis(ms as i64)
        };
        sleep_until_wall(start).await;
        let now = Timestamp::now();
        after = next.max(now);
        if rt.paused.load(Ordering::Relaxed) {
            continue;
        }
        let sh2 = sh.clone();
        let cfg2 = cfg.clone();
        sh.tracker.spawn(async move {
            fire(sh2, cfg2, next, Trigger::Schedule).await;
        });
    }
}

/// One occurrence: overlap policy, the daemon-wide cap, the claim, the run.
async fn fire(
    sh: Arc<Shared>,
    cfg: Arc<JobConfig>,
    planned: Timestamp,
    trigger: Trigger,
) -> String {
    let rt = rt(&sh, &cfg.name);
    let _slot = match cfg.overlap {
        Overlap::Skip => match rt.slot.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => {
                tracing::info!(job = %cfg.name, planned = %planned, "skipped: the previous run still runs (overlap = \"skip\")");
                return "skipped: the previous run still runs (overlap = \"skip\")".into();
            }
        },
        Overlap::Queue => rt.slot.clone().lock_owned().await,
        Overlap::KillPrevious => {
            if let Ok(k) = rt.kill.lock() {
                k.cancel();
            }
            rt.slot.clone().lock_owned().await
        }
    };
    let Ok(_permit) = sh.sem.clone().acquire_owned().await else {
        return "the scheduler is stopping".into();
    };
    let kill = sh.token.child_token();
    if let Ok(mut k) = rt.kill.lock() {
        *k = kill.clone();
    }
    if !cfg.persistent {
        return run_mem(&sh, &rt, &cfg, planned, trigger, &kill).await;
    }
    // Runs of this job in this daemon are serialized by the slot above: a busy job lock is
    // another process (`majordomo check` catching up). Wait for it, then the record decides.
    let held = loop {
        match record::hold(&sh.dir, &cfg.name, cfg.persistent) {
            Ok(Some(h)) => break h,
            Ok(None) => {
                tokio::select! {
                    _ = kill.cancelled() => return "the scheduler is stopping".into(),
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            Err(e) => {
                tracing::error!(job = %cfg.name, error = %e, "cannot claim the run");
                return format!("cannot claim the run: {e}");
            }
        }
    };
    run_held(&sh, &rt, &cfg, held, planned, trigger, 1, &kill).await
}

#[allow(clippy::too_many_arguments)]
async fn run_held(
    sh: &Arc<Shared>,
    rt: &JobRt,
    cfg: &JobConfig,
    mut held: record::Held,
    planned: Timestamp,
    trigger: Trigger,
    attempt: u32,
    kill: &CancellationToken,
) -> String {
    let cap = sh.cap.load(Ordering::Relaxed);
    if trigger == Trigger::Schedule
        && held
            .record
            .last_planned_ms
            .is_some_and(|l| l >= planned.as_millisecond())
    {
        return "skipped: this occurrence already ran".into();
    }
    let _ = held.record.take_interrupted(cap);
    let run = runner::new_run(planned, trigger, &sh.by, attempt);
    if let Err(e) = held.start(&run) {
        tracing::error!(job = %cfg.name, error = %e, "cannot record the claim; not running");
        return format!("cannot record the claim: {e}");
    }
    rt.running.store(true, Ordering::Relaxed);
    sh.running.fetch_add(1, Ordering::Relaxed);
    tracing::info!(job = %cfg.name, planned = %run.planned, trigger = ?trigger, late_ms = run.late_ms, "job started");
    sh.hub.emit(Event::JobStarted {
        job: cfg.name.clone(),
        run: run.clone(),
    });
    if cfg.notify_on.contains(&NotifyOn::Start) {
        notice(sh, cfg, "started", &run);
    }
    let done = runner::execute(cfg, &sh.dir, Some(held), run, kill, Some(&sh.publish), cap).await;
    ended(sh, rt, cfg, done);
    "started".into()
}

/// A job that is not persistent: only this daemon runs it (the backup task runs persistent jobs
/// only), so its record lives in memory and is written in batches by `flush`; no file work on
/// the hot path.
async fn run_mem(
    sh: &Arc<Shared>,
    rt: &JobRt,
    cfg: &JobConfig,
    planned: Timestamp,
    trigger: Trigger,
    kill: &CancellationToken,
) -> String {
    let cap = sh.cap.load(Ordering::Relaxed);
    {
        let Ok(mut mem) = rt.mem.lock() else {
            return "internal error".into();
        };
        let rec = mem.get_or_insert_with(|| JobRecord::load(&sh.dir, &cfg.name));
        if trigger == Trigger::Schedule
            && rec
                .last_planned_ms
                .is_some_and(|l| l >= planned.as_millisecond())
        {
            return "skipped: this occurrence already ran".into();
        }
        if trigger != Trigger::Manual {
            rec.last_planned_ms = Some(planned.as_millisecond());
        }
    }
    let run = runner::new_run(planned, trigger, &sh.by, 1);
    rt.running.store(true, Ordering::Relaxed);
    sh.running.fetch_add(1, Ordering::Relaxed);
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!(job = %cfg.name, planned = %run.planned, late_ms = run.late_ms, "job started");
    }
    sh.hub.emit(Event::JobStarted {
        job: cfg.name.clone(),
        run: run.clone(),
    });
    if cfg.notify_on.contains(&NotifyOn::Start) {
        notice(sh, cfg, "started", &run);
    }
    let done = runner::execute(cfg, &sh.dir, None, run, kill, Some(&sh.publish), cap).await;
    if let Ok(mut mem) = rt.mem.lock()
        && let Some(rec) = mem.as_mut()
    {
        rec.push(done.clone(), cap);
        rt.dirty.store(true, Ordering::Relaxed);
    }
    ended(sh, rt, cfg, done);
    "started".into()
}

/// Writes the in-memory records that changed (not fsync'd: history of non-persistent jobs).
fn flush(sh: &Shared) {
    let rts: Vec<(String, Arc<JobRt>)> = match sh.rts.read() {
        Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Err(_) => return,
    };
    for (name, rt) in rts {
        if !rt.dirty.swap(false, Ordering::Relaxed) {
            continue;
        }
        let rec = rt.mem.lock().ok().and_then(|m| m.clone());
        if let Some(rec) = rec
            && let Err(e) = rec.save(&sh.dir, &name, false)
        {
            tracing::warn!(job = %name, error = %e, "cannot write the job's history");
        }
    }
}

/// The end of a run: counters, log, notifications, event.
fn ended(sh: &Arc<Shared>, rt: &JobRt, cfg: &JobConfig, done: Run) {
    rt.running.store(false, Ordering::Relaxed);
    sh.running.fetch_sub(1, Ordering::Relaxed);
    let ok = done.outcome == Some(RunOutcome::Ok);
    if ok && !cfg.persistent && cfg.command.is_empty() {
        tracing::debug!(job = %cfg.name, duration_ms = ?done.duration_ms, "job succeeded");
    } else if ok {
        tracing::info!(job = %cfg.name, duration_ms = ?done.duration_ms, "job succeeded");
    } else {
        tracing::warn!(job = %cfg.name, outcome = ?done.outcome, error = ?done.error, "job failed");
    }
    if (ok && cfg.notify_on.contains(&NotifyOn::Success))
        || (!ok && cfg.notify_on.contains(&NotifyOn::Failure))
    {
        notice(sh, cfg, if ok { "succeeded" } else { "failed" }, &done);
    }
    if let Ok(mut l) = rt.last.lock() {
        *l = Some(done.clone());
    }
    sh.hub.emit(Event::JobFinished {
        job: cfg.name.clone(),
        run: done,
    });
}

fn notice(sh: &Shared, cfg: &JobConfig, what: &str, run: &Run) {
    let mut body = run.error.clone().unwrap_or_default();
    if !run.output_tail.is_empty() {
        let t = &run.output_tail;
        let start = (t.len().saturating_sub(500)..t.len())
            .find(|i| t.is_char_boundary(*i))
            .unwrap_or(0);
        body = format!("{body}\n{}", &t[start..]).trim().to_string();
    }
    sh.hub.emit(Event::Notice(Notice {
        id: format!("job:{}:{what}", cfg.name),
        source: "job".into(),
        title: format!("job {} {what}", cfg.name),
        body,
        severity: if what == "failed" {
            cfg.severity
        } else {
            majordomo_proto::monitor::Severity::Info
        },
        notifier: None,
        at: rfc3339(Timestamp::now()),
    }));
}

/// At start-up: a run found in progress was interrupted (retried once for persistent jobs);
/// a persistent job's missed occurrence runs once.
async fn start_up(sh: &Arc<Shared>, cfg: &JobConfig) {
    let rt = rt(sh, &cfg.name);
    let cfg = Arc::new(cfg.clone());
    let sh2 = sh.clone();
    let publish = sh.publish.clone();
    let by = sh.by.clone();
    let cap = sh.cap.load(Ordering::Relaxed);
    let kill = sh.token.child_token();
    let (c2, k2) = (cfg.clone(), kill.clone());
    let rt2 = rt.clone();
    sh.tracker.spawn(async move {
        let _slot = rt2.slot.clone().lock_owned().await;
        let _permit = sh2.sem.clone().acquire_owned().await;
        let hub = sh2.hub.clone();
        let ran = crate::offline::due_once(
            &sh2.dir,
            &c2,
            &by,
            Trigger::CatchUp,
            cap,
            Some(&publish),
            &k2,
            &|ev| hub.emit(ev),
        )
        .await;
        if let Some(r) = ran
            && let Ok(mut l) = rt2.last.lock()
        {
            *l = Some(r);
        }
    });
}

fn row(sh: &Shared, c: &JobConfig, plan: Option<&Plan>) -> JobRow {
    let rt = rt(sh, &c.name);
    let paused = rt.paused.load(Ordering::Relaxed);
    let last = rt
        .last
        .lock()
        .ok()
        .and_then(|l| l.clone())
        .or_else(|| JobRecord::load(&sh.dir, &c.name).history.back().cloned());
    let next = if paused {
        None
    } else {
        rt.next_ms
            .lock()
            .ok()
            .and_then(|n| *n)
            .or_else(|| {
                plan.and_then(|p| p.next_after(Timestamp::now()))
                    .map(|t| t.as_millisecond())
            })
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .map(rfc3339)
    };
    JobRow {
        name: c.name.clone(),
        schedule: c.describe(),
        paused,
        running: rt.running.load(Ordering::Relaxed),
        next,
        last,
        persistent: c.persistent,
    }
}

fn find(sh: &Shared, name: &str) -> Result<(Arc<JobConfig>, Plan), ErrorBody> {
    let jobs = sh.jobs.read().map_err(internal)?;
    jobs.get(name)
        .map(|j| (j.cfg.clone(), j.plan.clone()))
        .ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::NotFound,
                format!(
                    "no job named {name:?}; jobs: {}",
                    jobs.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })
}

fn state_topic(key: &str) -> String {
    let clean: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("state.{clean}")
}

fn publish_state(sh: &Shared, v: &StateValue) {
    if let Ok(data) = serde_json::to_vec(v) {
        let _ = (sh.publish)(&state_topic(&v.key), &data);
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ErrorBody> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidInput => Err(bad(e)),
        Ok(Err(e)) => Err(internal(e)),
        Err(e) => Err(internal(e)),
    }
}

fn register(ctx: &Ctx<SchedulerSection>, sh: &Arc<Shared>) {
    let s = sh.clone();
    ctx.handle::<JobLsCmd, _, _>(move |_| {
        let sh = s.clone();
        async move {
            let jobs: Vec<(Arc<JobConfig>, Plan)> = sh
                .jobs
                .read()
                .map_err(internal)?
                .values()
                .map(|j| (j.cfg.clone(), j.plan.clone()))
                .collect();
            Ok(JobList {
                jobs: jobs.iter().map(|(c, p)| row(&sh, c, Some(p))).collect(),
                running: sh.running.load(Ordering::Relaxed),
                max_concurrent: sh.max.load(Ordering::Relaxed),
            })
        }
    });
    let s = sh.clone();
    ctx.handle::<JobRunCmd, _, _>(move |a: JobArgs| {
        let sh = s.clone();
        async move {
            let (cfg, _) = find(&sh, &a.name)?;
            let rt = rt(&sh, &cfg.name);
            if cfg.overlap == Overlap::Skip && rt.running.load(Ordering::Relaxed) {
                return Ok(JobRunReply {
                    name: a.name,
                    result: "skipped: it is running (overlap = \"skip\")".into(),
                });
            }
            let sh2 = sh.clone();
            sh.tracker.spawn(async move {
                fire(sh2, cfg, Timestamp::now(), Trigger::Manual).await;
            });
            Ok(JobRunReply {
                name: a.name,
                result: "started".into(),
            })
        }
    });
    let s = sh.clone();
    ctx.handle::<JobHistoryCmd, _, _>(move |a: JobHistoryArgs| {
        let sh = s.clone();
        async move {
            let known = find(&sh, &a.name).is_ok();
            let dir = sh.dir.clone();
            let name = a.name.clone();
            let mem = rt(&sh, &a.name).mem.lock().ok().and_then(|m| m.clone());
            let rec = match mem {
                Some(r) => r,
                None => blocking(move || Ok(JobRecord::load(&dir, &name))).await?,
            };
            if !known && rec.history.is_empty() {
                find(&sh, &a.name)?;
            }
            let mut runs: Vec<Run> = rec.running.into_iter().collect();
            runs.extend(rec.history.into_iter().rev());
            runs.truncate(a.limit.unwrap_or(20));
            Ok(runs)
        }
    });
    for pause in [true, false] {
        let s = sh.clone();
        let f = move |a: JobArgs| {
            let sh = s.clone();
            async move {
                let (cfg, plan) = find(&sh, &a.name)?;
                let marker = paused_marker(&sh.dir, &a.name);
                blocking(move || {
                    if pause {
                        std::fs::write(&marker, b"paused\n")
                    } else {
                        match std::fs::remove_file(&marker) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                            _ => Ok(()),
                        }
                    }
                })
                .await?;
                rt(&sh, &a.name).paused.store(pause, Ordering::Relaxed);
                Ok(row(&sh, &cfg, Some(&plan)))
            }
        };
        if pause {
            ctx.handle::<JobPauseCmd, _, _>(f);
        } else {
            ctx.handle::<JobResumeCmd, _, _>(f);
        }
    }
    let s = sh.clone();
    ctx.handle::<StateGetCmd, _, _>(move |a: KeyArgs| {
        let st = s.store.clone();
        async move { blocking(move || st.get(&a.key)).await }
    });
    let s = sh.clone();
    ctx.handle::<StateSetCmd, _, _>(move |a: StateSetArgs| {
        let sh = s.clone();
        async move {
            let st = sh.store.clone();
            let v = blocking(move || st.set(&a.key, a.value)).await?;
            publish_state(&sh, &v);
            Ok(v)
        }
    });
    let s = sh.clone();
    ctx.handle::<StateDelCmd, _, _>(move |a: KeyArgs| {
        let sh = s.clone();
        async move {
            let st = sh.store.clone();
            let v = blocking(move || st.del(&a.key)).await?;
            publish_state(&sh, &v);
            Ok(v)
        }
    });
    let s = sh.clone();
    ctx.handle::<StateCasCmd, _, _>(move |a: StateCasArgs| {
        let sh = s.clone();
        async move {
            let st = sh.store.clone();
            let (swapped, current) =
                blocking(move || st.cas(&a.key, a.expected.as_ref(), a.value)).await?;
            if swapped {
                publish_state(&sh, &current);
            }
            Ok(CasReply { swapped, current })
        }
    });
    let s = sh.clone();
    ctx.handle::<StateWatchCmd, _, _>(move |a: KeyArgs| {
        let st = s.store.clone();
        async move {
            let topic = state_topic(&a.key);
            let current = blocking(move || st.get(&a.key)).await?;
            Ok(WatchReply { topic, current })
        }
    });
    let s = sh.clone();
    ctx.handle::<LockAcquireCmd, _, _>(move |a: LockArgs| {
        let sh = s.clone();
        async move {
            let wait = Duration::from_millis(a.wait_ms.unwrap_or(0));
            let l = locks::acquire_async(&sh.dir, &a.name, Some(wait))
                .await
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::InvalidInput {
                        bad(e)
                    } else {
                        internal(e)
                    }
                })?;
            let Some(l) = l else {
                return Ok(LockReply {
                    name: a.name,
                    acquired: false,
                    token: 0,
                });
            };
            let token = sh.next_token.fetch_add(1, Ordering::Relaxed);
            sh.held.lock().map_err(internal)?.insert(token, l);
            // Released when the connection closes, if the carrier has connections.
            if let Some(scope) = ConnScope::current() {
                scope.hold(
                    format!("lock.{token}"),
                    Release {
                        sh: Arc::downgrade(&sh),
                        token,
                    },
                );
            }
            Ok(LockReply {
                name: a.name,
                acquired: true,
                token,
            })
        }
    });
    let s = sh.clone();
    ctx.handle::<LockReleaseCmd, _, _>(move |a: LockReleaseArgs| {
        let sh = s.clone();
        async move {
            let released = {
                let mut held = sh.held.lock().map_err(internal)?;
                match held.get(&a.token) {
                    Some(l) if l.name() == a.name => held.remove(&a.token),
                    _ => None,
                }
            };
            if released.is_none() {
                return Err(ErrorBody::new(
                    ErrorCode::NotFound,
                    format!("lock {:?} is not held with token {}", a.name, a.token),
                ));
            }
            drop(released);
            if let Some(scope) = ConnScope::current() {
                scope.take(&format!("lock.{}", a.token));
            }
            Ok(LockReply {
                name: a.name,
                acquired: false,
                token: a.token,
            })
        }
    });
    let s = sh.clone();
    ctx.handle::<NotifySendCmd, _, _>(move |a: NotifySendArgs| {
        let sh = s.clone();
        async move {
            if a.title.trim().is_empty() {
                return Err(bad("a notification needs a title (--title)"));
            }
            let id = format!("notify:{}", a.title);
            tracing::info!(title = %a.title, severity = a.severity.as_str(), "notification raised");
            sh.hub.emit(Event::Notice(Notice {
                id: id.clone(),
                source: "program".into(),
                title: a.title,
                body: a.body,
                severity: a.severity,
                notifier: a.notifier,
                at: rfc3339(Timestamp::now()),
            }));
            Ok(NotifySendReply { id })
        }
    });
}
