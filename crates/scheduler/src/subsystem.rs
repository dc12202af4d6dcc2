//! The `scheduler` subsystem: one timer loop over a min-heap of every job's next start; runs
//! under the daemon-wide cap; the socket commands `job.*`, `state.*` and `lock.*`.
//!
//! Costs per job are kept small because a daemon may hold 10,000 of them: the config is shared
//! (`SharedJob`), the timer is one heap entry, a run of a job that is not persistent is a 32-byte
//! [`Slim`] in memory and one line in the history log, appended in batches. A `publish` job
//! that is not persistent and takes no lock runs on the timer loop itself (publishing cannot
//! block): every due run of a burst starts first, their bookkeeping and events follow. Every
//! other run is a task of its own (command, HTTP, persistent claim, lock).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use majordomo_bus::{Router, Wakes};
use majordomo_core::{BoxFuture, Change, ConnScope, Ctx, Subsystem};
use majordomo_proto::scheduler::*;
use majordomo_proto::{ErrorBody, ErrorCode, Event};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{JobConfig, NotifyOn, Overlap, SchedulerSection, SharedJob};
use crate::history::{self, Extra, Slim};
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

/// One job of the config in force.
struct JobState {
    cfg: SharedJob,
    plan: Plan,
    rt: Arc<JobRt>,
}

impl JobState {
    /// Whether its runs go on the timer loop itself (see the module).
    fn inline(&self) -> bool {
        self.cfg.publish.is_some() && !self.cfg.persistent && self.cfg.lock.is_none()
    }
}

const NO_NEXT: i64 = i64::MIN;

/// What a job keeps across reloads while it exists.
struct JobRt {
    paused: AtomicBool,
    running: AtomicBool,
    /// The next occurrence, ms since the epoch ([`NO_NEXT`]: none).
    next_ms: AtomicI64,
    mem: Mutex<Mem>,
    /// Made at the first run that is a task of its own.
    spawned: OnceLock<Spawned>,
}

#[derive(Default)]
struct Mem {
    /// The last occurrence run by this daemon (schedule, catch-up, retry).
    last_planned_ms: Option<i64>,
    /// This daemon's finished runs, newest last: the last `history` for a job that is not
    /// persistent, the last one for a persistent job (its record file has the rest).
    runs: VecDeque<Slim>,
}

struct Spawned {
    slot: Arc<tokio::sync::Mutex<()>>,
    kill: Mutex<CancellationToken>,
}

impl JobRt {
    fn new(paused: bool) -> Self {
        Self {
            paused: AtomicBool::new(paused),
            running: AtomicBool::new(false),
            next_ms: AtomicI64::new(NO_NEXT),
            mem: Mutex::new(Mem::default()),
            spawned: OnceLock::new(),
        }
    }

    fn spawned(&self) -> &Spawned {
        self.spawned.get_or_init(|| Spawned {
            slot: Arc::new(tokio::sync::Mutex::new(())),
            kill: Mutex::new(CancellationToken::new()),
        })
    }

    fn last(&self) -> Option<Slim> {
        self.mem.lock().ok()?.runs.back().cloned()
    }
}

impl Mem {
    fn push(&mut self, s: Slim, cap: usize) {
        let cap = cap.max(1);
        if self.runs.capacity() == 0 {
            self.runs.reserve_exact(cap);
        }
        while self.runs.len() >= cap {
            self.runs.pop_front();
        }
        self.runs.push_back(s);
    }
}

/// The jobs in force, by index (the timer's heap holds indexes) and by name.
#[derive(Default)]
struct Table {
    jobs: Vec<Arc<JobState>>,
    /// Indexes sorted by job name.
    by_name: Vec<u32>,
}

impl Table {
    fn index(&self, name: &str) -> Option<usize> {
        self.by_name
            .binary_search_by(|i| self.jobs[*i as usize].cfg.name.as_str().cmp(name))
            .ok()
            .map(|k| self.by_name[k] as usize)
    }

    fn get(&self, name: &str) -> Option<&Arc<JobState>> {
        self.index(name).map(|i| &self.jobs[i])
    }
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
    table: RwLock<Arc<Table>>,
    /// Wakes the timer loop when the table changed.
    changed: Notify,
    /// Runs of jobs that are not persistent, for the next append to the history log.
    pending: Mutex<Vec<(SharedJob, Slim)>>,
    /// Wakes the history flusher when `pending` gets its first run (no timer while idle).
    pending_added: Notify,
    /// Lines in the history log (for its compaction).
    log_lines: AtomicUsize,
    store: Store,
    held: Mutex<HashMap<u64, NamedLock>>,
    next_token: AtomicU64,
}

impl Shared {
    fn table(&self) -> Arc<Table> {
        self.table
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
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
        table: RwLock::new(Arc::new(Table::default())),
        changed: Notify::new(),
        pending: Mutex::new(Vec::new()),
        pending_added: Notify::new(),
        log_lines: AtomicUsize::new(0),
        store: Store::new(&dir),
        held: Mutex::new(HashMap::new()),
        next_token: AtomicU64::new(1),
    });
    let jobs = section.job.len();
    {
        // The jobs, with the history the log has of them.
        let sh = sh.clone();
        let _ = tokio::task::spawn_blocking(move || {
            reconcile(&sh, &section);
            load_history(&sh);
        })
        .await;
    }
    register(&ctx, &sh);
    register_session(&ctx, router.clone());
    let section = ctx.config.borrow().clone();
    // Start-up: interrupted runs and missed occurrences of persistent jobs, once each.
    for j in section.job.iter().filter(|j| j.persistent) {
        start_up(&sh, j);
    }
    let flusher = sh.clone();
    ctx.tracker.spawn(async move {
        loop {
            // Idle until a run is pending, then batch for 2 s: an instance without runs has no
            // timer here.
            let stop = tokio::select! {
                _ = flusher.token.cancelled() => true,
                _ = async {
                    flusher.pending_added.notified().await;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                } => false,
            };
            let f = flusher.clone();
            let _ = tokio::task::spawn_blocking(move || flush(&f)).await;
            if stop {
                return;
            }
        }
    });
    ctx.tracker.spawn(timers(sh.clone()));
    ctx.ready();
    ctx.detail(format!("{jobs} jobs"));
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
    if let Ok(mut h) = sh.held.lock() {
        h.clear();
    }
    Ok(())
}

/// Applies a (new) section: a new table of jobs (an unchanged job keeps its state and its next
/// start; a changed one keeps its history and pause, and gets the new schedule from now on);
/// running runs are left alone.
fn reconcile(sh: &Arc<Shared>, section: &SchedulerSection) {
    sh.cap.store(section.scheduler.history, Ordering::Relaxed);
    let want = section.scheduler.max_concurrent;
    let had = sh.max.swap(want, Ordering::Relaxed);
    if want > had {
        sh.sem.add_permits(want - had);
    } else if want < had {
        let _ = sh.sem.forget_permits(had - want);
    }
    let old = sh.table();
    let mut jobs = Vec::with_capacity(section.job.len());
    for c in &section.job {
        let prev = old.get(&c.name);
        if let Some(p) = prev
            && p.cfg == *c
        {
            jobs.push(p.clone());
            continue;
        }
        let Ok(plan) = c.plan() else { continue };
        let rt = prev
            .map(|p| p.rt.clone())
            .unwrap_or_else(|| Arc::new(JobRt::new(is_paused(&sh.dir, &c.name))));
        jobs.push(Arc::new(JobState {
            cfg: c.clone(),
            plan,
            rt,
        }));
    }
    let mut by_name: Vec<u32> = (0..jobs.len() as u32).collect();
    by_name.sort_by(|a, b| jobs[*a as usize].cfg.name.cmp(&jobs[*b as usize].cfg.name));
    let table = Arc::new(Table { jobs, by_name });
    if let Ok(mut t) = sh.table.write() {
        *t = table;
    }
    sh.changed.notify_one();
}

/// Fills the jobs' memories from the history log (at start-up).
fn load_history(sh: &Shared) {
    let table = sh.table();
    let cap = sh.cap.load(Ordering::Relaxed);
    let path = history::log_path(&sh.dir);
    match history::load(&path, |job, s| {
        if let Some(j) = table.get(job)
            && !j.cfg.persistent
            && let Ok(mut m) = j.rt.mem.lock()
        {
            m.push(s, cap);
        }
    }) {
        Ok(n) => sh.log_lines.store(n, Ordering::Relaxed),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the job history log")
        }
    }
}

/// Appends the pending runs to the history log; compacts it when it holds about twice what
/// the jobs keep (not fsync'd: the history of jobs that are not persistent).
fn flush(sh: &Shared) {
    let batch = match sh.pending.lock() {
        Ok(mut p) if !p.is_empty() => std::mem::take(&mut *p),
        _ => return,
    };
    let path = history::log_path(&sh.dir);
    let lines: Vec<(&str, &Slim)> = batch.iter().map(|(j, s)| (j.name.as_str(), s)).collect();
    if let Err(e) = history::append(&path, &lines) {
        tracing::warn!(file = %path.display(), error = %e, "cannot append to the job history log");
        return;
    }
    let n = sh.log_lines.fetch_add(lines.len(), Ordering::Relaxed) + lines.len();
    let table = sh.table();
    let cap = sh.cap.load(Ordering::Relaxed).max(1);
    let live = table.jobs.iter().filter(|j| !j.cfg.persistent).count() * cap;
    if n > 2 * live + 1000 {
        let keep = |job: &str| match table.get(job) {
            Some(j) if !j.cfg.persistent => cap,
            _ => 0,
        };
        match history::compact(&path, keep) {
            Ok(kept) => sh.log_lines.store(kept, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot compact the job history log")
            }
        }
    }
}

/// A start in the timer's heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    /// When to start (the occurrence plus its jitter), ms.
    at_ms: i64,
    planned_ms: i64,
    idx: u32,
}

/// Pushes job `idx`'s first occurrence after `after` (and records it as its next).
fn schedule(heap: &mut BinaryHeap<Reverse<Due>>, table: &Table, idx: usize, after: Timestamp) {
    let j = &table.jobs[idx];
    let Some(next) = j.plan.next_after(after) else {
        j.rt.next_ms.store(NO_NEXT, Ordering::Relaxed);
        return;
    };
    let planned_ms = next.as_millisecond();
    j.rt.next_ms.store(planned_ms, Ordering::Relaxed);
    let jitter = j.cfg.jitter.get().as_millis() as u64;
    let at_ms = if jitter == 0 {
        planned_ms
    } else {
        planned_ms + fastrand::u64(0..jitter) as i64
    };
    heap.push(Reverse(Due {
        at_ms,
        planned_ms,
        idx: idx as u32,
    }));
}

/// The heap for a new table: an unchanged job keeps its pending start; the others are
/// scheduled from now.
fn rebuild(
    old: &Table,
    old_heap: BinaryHeap<Reverse<Due>>,
    new: &Table,
    now: Timestamp,
) -> BinaryHeap<Reverse<Due>> {
    let mut heap = BinaryHeap::with_capacity(new.jobs.len());
    let mut kept = vec![false; new.jobs.len()];
    for Reverse(d) in old_heap.into_vec() {
        let Some(oj) = old.jobs.get(d.idx as usize) else {
            continue;
        };
        if let Some(i) = new.index(&oj.cfg.name)
            && Arc::ptr_eq(&new.jobs[i], oj)
            && !kept[i]
        {
            kept[i] = true;
            heap.push(Reverse(Due { idx: i as u32, ..d }));
        }
    }
    for (i, k) in kept.iter().enumerate() {
        if !k {
            schedule(&mut heap, new, i, now);
        }
    }
    heap
}

/// Sleeps until `at_ms` by the wall clock, re-reading it at least every 30 s (suspend, clock
/// steps); forever when there is nothing to wait for. tokio's timer counts whole milliseconds
/// and rounds up, which would start every run about a millisecond late: it wakes the loop up
/// to a millisecond early, and the rest (less than a millisecond, once per distinct start
/// time) is slept on the worker with the OS's finer timer.
async fn sleep_until_ms(at_ms: Option<i64>) {
    let Some(at_ms) = at_ms else {
        return std::future::pending().await;
    };
    loop {
        let left_us = at_ms.saturating_mul(1000) - Timestamp::now().as_microsecond();
        if left_us <= 0 {
            return;
        }
        if left_us <= 1000 {
            std::thread::sleep(Duration::from_micros(left_us as u64));
            return;
        }
        let d = Duration::from_micros((left_us - 1000).min(30_000_000) as u64);
        tokio::time::sleep(d).await;
    }
}

/// The one timer of every job.
async fn timers(sh: Arc<Shared>) {
    let mut table = Arc::new(Table::default());
    let mut heap = BinaryHeap::new();
    // Runs on the loop itself in this burst: started first, recorded after.
    let mut burst: Vec<(u32, Slim)> = Vec::new();
    // The starts taken from the heap in this burst, scheduled again once all have started.
    let mut taken: Vec<Due> = Vec::new();
    loop {
        let at = heap.peek().map(|Reverse(d): &Reverse<Due>| d.at_ms);
        tokio::select! {
            biased;
            _ = sh.token.cancelled() => return,
            _ = sh.changed.notified() => {
                let new = sh.table();
                heap = rebuild(&table, std::mem::take(&mut heap), &new, Timestamp::now());
                table = new;
                continue;
            }
            _ = sleep_until_ms(at) => {}
        }
        let now = Timestamp::now();
        let now_ms = now.as_millisecond();
        while let Some(Reverse(d)) = heap.peek().copied()
            && d.at_ms <= now_ms
        {
            heap.pop();
            taken.push(d);
            let idx = d.idx as usize;
            let planned = Timestamp::from_millisecond(d.planned_ms).unwrap_or(now);
            let j = &table.jobs[idx];
            if j.rt.paused.load(Ordering::Relaxed) {
                continue;
            }
            if j.inline() {
                if let Some(s) = run_inline(&sh, j, d.planned_ms) {
                    burst.push((d.idx, s));
                }
            } else {
                let (sh2, cfg) = (sh.clone(), j.clone());
                sh.tracker.spawn(async move {
                    fire(sh2, cfg, planned, Trigger::Schedule).await;
                });
            }
        }
        // Every start of the burst is out: now their next occurrences, then the records.
        for d in taken.drain(..) {
            let planned = Timestamp::from_millisecond(d.planned_ms).unwrap_or(now);
            schedule(&mut heap, &table, d.idx as usize, planned.max(now));
        }
        for (idx, s) in burst.drain(..) {
            finish(&sh, &table.jobs[idx as usize], s);
        }
    }
}

/// A run on the timer loop: a `publish` job's message, now.
fn run_inline(sh: &Shared, j: &JobState, planned_ms: i64) -> Option<Slim> {
    if let Ok(mut m) = j.rt.mem.lock() {
        if m.last_planned_ms.is_some_and(|l| l >= planned_ms) {
            return None;
        }
        m.last_planned_ms = Some(planned_ms);
    }
    let p = j.cfg.publish.as_ref()?;
    let t0 = Instant::now();
    let started_ms = Timestamp::now().as_millisecond();
    let r = (sh.publish)(&p.topic, p.data.bytes());
    Some(Slim {
        planned_ms,
        late_ms: i32::try_from(started_ms - planned_ms).unwrap_or(i32::MAX),
        duration_ms: t0.elapsed().as_millis() as u32,
        exit: 0,
        has_exit: false,
        outcome: if r.is_ok() {
            RunOutcome::Ok
        } else {
            RunOutcome::Failed
        },
        trigger: Trigger::Schedule,
        attempt: 1,
        extra: r.err().map(|e| {
            Box::new(Extra {
                error: Some(e),
                ..Extra::default()
            })
        }),
    })
}

/// The end of a run: the job's memory, the history log (jobs that are not persistent), the
/// log line, notifications, the event.
fn finish(sh: &Shared, j: &JobState, s: Slim) {
    let cfg = &j.cfg;
    let cap = if cfg.persistent {
        1
    } else {
        sh.cap.load(Ordering::Relaxed)
    };
    if let Ok(mut m) = j.rt.mem.lock() {
        m.push(s.clone(), cap);
    }
    let ok = s.outcome == RunOutcome::Ok;
    let wants_notice = (ok && cfg.notify_on.contains(&NotifyOn::Success))
        || (!ok && cfg.notify_on.contains(&NotifyOn::Failure));
    if ok && j.inline() {
        tracing::debug!(job = %cfg.name, "job succeeded");
    } else if ok {
        tracing::info!(job = %cfg.name, duration_ms = s.duration_ms, "job succeeded");
    } else {
        tracing::warn!(job = %cfg.name, outcome = ?s.outcome, error = ?s.extra.as_ref().and_then(|e| e.error.as_deref()), "job failed");
    }
    let run = s.to_run(&sh.by);
    if !cfg.persistent
        && let Ok(mut p) = sh.pending.lock()
    {
        p.push((cfg.clone(), s));
        // A permit is stored if the flusher is mid-batch: it comes back for this run.
        sh.pending_added.notify_one();
    }
    if wants_notice {
        notice(sh, cfg, if ok { "succeeded" } else { "failed" }, &run);
    }
    sh.hub.emit(Event::JobFinished {
        job: cfg.name.clone(),
        run,
    });
}

/// One occurrence as a task of its own: overlap policy, the daemon-wide cap, the claim, the run.
async fn fire(sh: Arc<Shared>, j: Arc<JobState>, planned: Timestamp, trigger: Trigger) -> String {
    let cfg = &j.cfg;
    let sp = j.rt.spawned();
    let _slot = match cfg.overlap {
        Overlap::Skip => match sp.slot.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) => {
                tracing::info!(job = %cfg.name, planned = %planned, "skipped: the previous run still runs (overlap = \"skip\")");
                return "skipped: the previous run still runs (overlap = \"skip\")".into();
            }
        },
        Overlap::Queue => sp.slot.clone().lock_owned().await,
        Overlap::KillPrevious => {
            if let Ok(k) = sp.kill.lock() {
                k.cancel();
            }
            sp.slot.clone().lock_owned().await
        }
    };
    let Ok(_permit) = sh.sem.clone().acquire_owned().await else {
        return "the scheduler is stopping".into();
    };
    let kill = sh.token.child_token();
    if let Ok(mut k) = sp.kill.lock() {
        *k = kill.clone();
    }
    if !cfg.persistent {
        if trigger != Trigger::Manual
            && let Ok(mut m) = j.rt.mem.lock()
        {
            let planned_ms = planned.as_millisecond();
            if m.last_planned_ms.is_some_and(|l| l >= planned_ms) {
                return "skipped: this occurrence already ran".into();
            }
            m.last_planned_ms = Some(planned_ms);
        }
        let run = started(&sh, &j, planned, trigger, 1);
        let cap = sh.cap.load(Ordering::Relaxed);
        let done = runner::execute(cfg, &sh.dir, None, run, &kill, Some(&sh.publish), cap).await;
        ended(&sh, &j, done);
        return "started".into();
    }
    // Runs of this job in this daemon are serialized by the slot above: a busy job lock is
    // another process (`majordomo check` catching up). Wait for it, then the record decides.
    let mut held = loop {
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
    let run = runner::new_run(planned, trigger, &sh.by, 1);
    if let Err(e) = held.start(&run) {
        tracing::error!(job = %cfg.name, error = %e, "cannot record the claim; not running");
        return format!("cannot record the claim: {e}");
    }
    let run = announce(&sh, &j, run);
    let done = runner::execute(cfg, &sh.dir, Some(held), run, &kill, Some(&sh.publish), cap).await;
    ended(&sh, &j, done);
    "started".into()
}

/// A run that is a task of its own begins: counters, log, `job.started`.
fn started(sh: &Shared, j: &JobState, planned: Timestamp, trigger: Trigger, attempt: u32) -> Run {
    announce(sh, j, runner::new_run(planned, trigger, &sh.by, attempt))
}

fn announce(sh: &Shared, j: &JobState, run: Run) -> Run {
    let cfg = &j.cfg;
    j.rt.running.store(true, Ordering::Relaxed);
    sh.running.fetch_add(1, Ordering::Relaxed);
    tracing::info!(job = %cfg.name, planned = %run.planned, trigger = ?run.trigger, late_ms = run.late_ms, "job started");
    sh.hub.emit(Event::JobStarted {
        job: cfg.name.clone(),
        run: run.clone(),
    });
    if cfg.notify_on.contains(&NotifyOn::Start) {
        notice(sh, cfg, "started", &run);
    }
    run
}

/// The end of a run that was a task of its own.
fn ended(sh: &Shared, j: &JobState, done: Run) {
    j.rt.running.store(false, Ordering::Relaxed);
    sh.running.fetch_sub(1, Ordering::Relaxed);
    finish(sh, j, Slim::from_run(&done, &sh.by));
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
fn start_up(sh: &Arc<Shared>, cfg: &SharedJob) {
    let Some(j) = sh.table().get(&cfg.name).cloned() else {
        return;
    };
    let sh2 = sh.clone();
    let kill = sh.token.child_token();
    sh.tracker.spawn(async move {
        let sp = j.rt.spawned();
        let _slot = sp.slot.clone().lock_owned().await;
        let _permit = sh2.sem.clone().acquire_owned().await;
        let hub = sh2.hub.clone();
        let cap = sh2.cap.load(Ordering::Relaxed);
        let ran = crate::offline::due_once(
            &sh2.dir,
            &j.cfg,
            &sh2.by,
            Trigger::CatchUp,
            cap,
            Some(&sh2.publish),
            &kill,
            &|ev| hub.emit(ev),
        )
        .await;
        if let Some(r) = ran
            && let Ok(mut m) = j.rt.mem.lock()
        {
            m.last_planned_ms = Some(m.last_planned_ms.unwrap_or(i64::MIN).max(r.planned_ms));
            m.push(Slim::from_run(&r, &sh2.by), 1);
        }
    });
}

fn row(sh: &Shared, j: &JobState) -> JobRow {
    let c = &j.cfg;
    let paused = j.rt.paused.load(Ordering::Relaxed);
    let last = j.rt.last().map(|s| s.to_run(&sh.by)).or_else(|| {
        c.persistent
            .then(|| JobRecord::load(&sh.dir, &c.name).history.back().cloned())
            .flatten()
    });
    let next = if paused {
        None
    } else {
        match j.rt.next_ms.load(Ordering::Relaxed) {
            NO_NEXT => j.plan.next_after(Timestamp::now()),
            ms => Timestamp::from_millisecond(ms).ok(),
        }
        .map(rfc3339)
    };
    JobRow {
        name: c.name.clone(),
        schedule: c.describe(),
        paused,
        running: j.rt.running.load(Ordering::Relaxed),
        next,
        last,
        persistent: c.persistent,
    }
}

fn find(sh: &Shared, name: &str) -> Result<Arc<JobState>, ErrorBody> {
    let table = sh.table();
    table.get(name).cloned().ok_or_else(|| {
        let mut names: Vec<&str> = table.jobs.iter().map(|j| j.cfg.name.as_str()).collect();
        names.sort_unstable();
        let more = names.len().saturating_sub(20);
        names.truncate(20);
        ErrorBody::new(
            ErrorCode::NotFound,
            format!(
                "no job named {name:?}; jobs: {}{}",
                names.join(", "),
                if more > 0 {
                    format!(" and {more} more (`job ls`)")
                } else {
                    String::new()
                }
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

/// `session.show`: a desktop notification handed to the session agents, on a system topic
/// (clients cannot publish there); delivered when at least one agent received it.
fn register_session(ctx: &Ctx<SchedulerSection>, router: Arc<Router>) {
    let instance = ctx.daemon.instance().to_string();
    ctx.handle::<SessionShowCmd, _, _>(move |mut n: SessionNotification| {
        let router = router.clone();
        if n.instance.is_empty() {
            n.instance = instance.clone();
        }
        let instance = instance.clone();
        async move {
            if n.title.trim().is_empty() {
                return Err(bad("a notification needs a title"));
            }
            let data = serde_json::to_vec(&n).map_err(internal)?;
            let limits = router.limits();
            let mut wakes = Wakes::default();
            let delivered = router.publish(SESSION_TOPIC, None, &data, &limits, &mut wakes);
            wakes.flush();
            if delivered == 0 {
                return Err(ErrorBody::new(
                    ErrorCode::NoResponders,
                    format!(
                        "no session agent is connected to instance {instance:?}: run `majordomo session-agent` in the desktop session (`majordomo service install --session-agent` starts it at each logon)"
                    ),
                ));
            }
            Ok(SessionShowReply { delivered })
        }
    });
}

fn register(ctx: &Ctx<SchedulerSection>, sh: &Arc<Shared>) {
    let s = sh.clone();
    ctx.handle::<JobLsCmd, _, _>(move |_| {
        let sh = s.clone();
        async move {
            let table = sh.table();
            Ok(JobList {
                jobs: table
                    .by_name
                    .iter()
                    .map(|i| row(&sh, &table.jobs[*i as usize]))
                    .collect(),
                running: sh.running.load(Ordering::Relaxed),
                max_concurrent: sh.max.load(Ordering::Relaxed),
            })
        }
    });
    let s = sh.clone();
    ctx.handle::<JobRunCmd, _, _>(move |a: JobArgs| {
        let sh = s.clone();
        async move {
            let j = find(&sh, &a.name)?;
            if j.cfg.overlap == Overlap::Skip && j.rt.running.load(Ordering::Relaxed) {
                return Ok(JobRunReply {
                    name: a.name,
                    result: "skipped: it is running (overlap = \"skip\")".into(),
                });
            }
            let sh2 = sh.clone();
            sh.tracker.spawn(async move {
                fire(sh2, j, Timestamp::now(), Trigger::Manual).await;
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
            let limit = a.limit.unwrap_or(20);
            let job = find(&sh, &a.name);
            if let Ok(j) = &job
                && !j.cfg.persistent
            {
                let m = j.rt.mem.lock().map_err(internal)?;
                return Ok(m
                    .runs
                    .iter()
                    .rev()
                    .take(limit)
                    .map(|s| s.to_run(&sh.by))
                    .collect::<Vec<Run>>());
            }
            // A persistent job (or one no longer configured): its record file.
            let dir = sh.dir.clone();
            let name = a.name.clone();
            let rec = blocking(move || Ok(JobRecord::load(&dir, &name))).await?;
            if rec.history.is_empty() && rec.running.is_none() {
                job?;
            }
            let mut runs: Vec<Run> = rec.running.into_iter().collect();
            runs.extend(rec.history.into_iter().rev());
            runs.truncate(limit);
            Ok(runs)
        }
    });
    for pause in [true, false] {
        let s = sh.clone();
        let f = move |a: JobArgs| {
            let sh = s.clone();
            async move {
                let j = find(&sh, &a.name)?;
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
                j.rt.paused.store(pause, Ordering::Relaxed);
                Ok(row(&sh, &j))
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
}
