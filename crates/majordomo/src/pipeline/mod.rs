//! The `pipeline` subsystem: drop folders whose files are taken when complete, converted,
//! queued on disk and uploaded, with nothing lost and nothing sent under two keys.
//!
//! Per `[[pipeline]]` three stages run, linked by bounded channels and by the work folder:
//! - **intake** (`intake.rs`) watches (or polls) the folders, waits until a file has kept its
//!   size, mtime and file id for `settle`, and claims it by a durable rename into the work folder,
//!   where it gets its ULID;
//! - **convert** runs the converter (`concurrency` at once) and queues the output durably, then
//!   applies the input's `post_action`;
//! - **upload** sends queued items through their `[[uploader]]`, retries transient failures with
//!   capped exponential backoff and full jitter, and dead-letters permanent ones.
//!
//! Every state is a file name (`item.rs`); every change is one rename (`store.rs`). At start-up
//! the work folder is read back: items left `processing` return to `queued`, half-written
//! conversions are redone, inputs whose item is already queued get their post action.

pub mod cli;
pub mod config;
mod intake;
pub mod item;
pub mod store;
pub mod upload;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::config::{Converter, PipelineConfig, PostAction};
use self::item::{ItemName, State};
use self::store::Syncer;
use self::upload::{Attempt, Uploader};
use crate::commands::parse_args;
use crate::config::Config;
use crate::hub::{Event, Hub};
use crate::lifecycle::{BoxFuture, Change, Ctx, Subsystem};
use crate::platform::fsops;
use majordomo_proto::{ErrorBody, ErrorCode};

pub use self::config::{UploaderConfig, validate};

pub struct Pipeline;

impl Subsystem for Pipeline {
    fn name(&self) -> &'static str {
        "pipeline"
    }

    fn enabled(&self, config: &Config) -> bool {
        !config.pipeline.is_empty()
    }

    fn change(&self, old: &Config, new: &Config) -> Change {
        // Restarting is always safe (the queue is on disk), and simple to reason about.
        if old.pipeline != new.pipeline || old.uploader != new.uploader || old.paths != new.paths {
            Change::Restart
        } else {
            Change::None
        }
    }

    fn run(&self, ctx: Ctx) -> BoxFuture {
        Box::pin(run(ctx))
    }
}

/// Counters of one pipeline since start.
#[derive(Default)]
pub struct Metrics {
    pub claimed: AtomicU64,
    pub converted: AtomicU64,
    pub convert_failed: AtomicU64,
    pub convert_ms_total: AtomicU64,
    pub uploaded: AtomicU64,
    pub upload_ms_total: AtomicU64,
    pub upload_ms_max: AtomicU64,
    pub retries: AtomicU64,
    pub dead_letters: AtomicU64,
    pub rescans: AtomicU64,
    /// Items in the work folder that are not done yet (the high-water mark counts these).
    pub pending: AtomicU64,
}

/// What the upload scheduler is told.
enum Sched {
    Ready(ItemName),
    At(Instant, ItemName),
    /// Retry every waiting item now (`queue retry`).
    RetryNow,
}

/// One running pipeline: its config, folders and channels.
pub struct Pipe {
    pub cfg: PipelineConfig,
    pub work: PathBuf,
    pub error_dir: PathBuf,
    pub dead_dir: PathBuf,
    pub done_dir: Option<PathBuf>,
    pub metrics: Metrics,
    patterns: Vec<glob::Pattern>,
    syncer: Syncer,
    hub: Hub,
    uploader: Arc<Uploader>,
    sched: mpsc::UnboundedSender<Sched>,
    /// Set while intake is paused by backpressure, with the reason.
    paused: Mutex<Option<String>>,
}

impl Pipe {
    fn path(&self, item: &ItemName) -> PathBuf {
        self.work.join(item.file_name())
    }

    fn takes(&self, name: &str) -> bool {
        !is_temp_name(name) && self.patterns.iter().any(|p| p.matches(name))
    }
}

/// Names a producer is still writing, or hidden ones: never taken.
pub fn is_temp_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.starts_with('.')
        || name.starts_with('~')
        || name.ends_with('~')
        || [".tmp", ".part", ".partial", ".crdownload", ".swp", ".temp"]
            .iter()
            .any(|s| lower.ends_with(s))
}

type Pipes = Arc<BTreeMap<String, Arc<Pipe>>>;

async fn run(ctx: Ctx) -> Result<(), String> {
    let cfg = ctx.config.borrow().clone();
    let state_dir = ctx
        .shared
        .layout
        .clone()
        .with_overrides(&cfg.paths)
        .state_dir;
    let mut uploaders = BTreeMap::new();
    for u in &cfg.uploader {
        uploaders.insert(u.name.clone(), Arc::new(Uploader::new(u)?));
    }
    let syncer = Syncer::spawn(&ctx.tracker);
    let mut pipes = BTreeMap::new();
    let mut receivers = Vec::new();
    for p in &cfg.pipeline {
        let (pipe, rx) = open_pipe(p, &state_dir, &uploaders, &syncer, &ctx.shared.hub)?;
        receivers.push((pipe.clone(), rx));
        pipes.insert(p.name.clone(), pipe);
    }
    let pipes: Pipes = Arc::new(pipes);
    for (pipe, rx) in receivers {
        start_pipe(&ctx, pipe, rx).await?;
    }
    cli::register(&ctx, pipes.clone());
    ctx.ready();
    let names: Vec<&str> = pipes.keys().map(|s| s.as_str()).collect();
    ctx.detail(format!("pipelines: {}", names.join(", ")));
    ctx.token.cancelled().await;
    Ok(())
}

fn open_pipe(
    p: &PipelineConfig,
    state_dir: &Path,
    uploaders: &BTreeMap<String, Arc<Uploader>>,
    syncer: &Syncer,
    hub: &Hub,
) -> Result<(Arc<Pipe>, mpsc::UnboundedReceiver<Sched>), String> {
    let at = |m: String| format!("pipeline {:?}: {m}", p.name);
    let work = p
        .work_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("pipeline").join(&p.name));
    let error_dir = p.error_dir.clone().unwrap_or_else(|| work.join("error"));
    let dead_dir = p.dead_dir.clone().unwrap_or_else(|| work.join("dead"));
    for w in &p.watch {
        if w.starts_with(&work) {
            return Err(at(format!(
                "watch folder {} is inside the work folder {}; set work_dir elsewhere",
                w.display(),
                work.display()
            )));
        }
    }
    let mut dirs = vec![&work, &error_dir, &dead_dir];
    dirs.extend(p.watch.iter());
    dirs.extend(p.done_dir.iter());
    for d in dirs {
        std::fs::create_dir_all(d).map_err(|e| {
            at(format!(
                "cannot create {}: {e}; check the path and permissions",
                d.display()
            ))
        })?;
    }
    let uploader = uploaders
        .get(&p.upload)
        .cloned()
        .ok_or_else(|| at(format!("no uploader named {:?}", p.upload)))?;
    let patterns = p
        .patterns
        .iter()
        .map(|s| glob::Pattern::new(s).map_err(|e| at(format!("bad pattern {s:?}: {e}"))))
        .collect::<Result<_, _>>()?;
    let (tx, rx) = mpsc::unbounded_channel();
    Ok((
        Arc::new(Pipe {
            cfg: p.clone(),
            work,
            error_dir,
            dead_dir,
            done_dir: p.done_dir.clone(),
            metrics: Metrics::default(),
            patterns,
            syncer: syncer.clone(),
            hub: hub.clone(),
            uploader,
            sched: tx,
            paused: Mutex::new(None),
        }),
        rx,
    ))
}

/// Recovers the work folder, then starts the pipeline's three stages.
async fn start_pipe(
    ctx: &Ctx,
    pipe: Arc<Pipe>,
    sched_rx: mpsc::UnboundedReceiver<Sched>,
) -> Result<(), String> {
    let (conv_tx, conv_rx) = mpsc::channel::<ItemName>(pipe.cfg.concurrency * 4);
    let recovered = {
        let pipe = pipe.clone();
        tokio::task::spawn_blocking(move || recover(&pipe))
            .await
            .map_err(|e| e.to_string())??
    };
    let span = tracing::info_span!("pipeline", name = %pipe.cfg.name);
    tracing::info!(parent: &span, queued = recovered.ready.len(), waiting = recovered.delayed.len(), inputs = recovered.inputs.len(), "work folder recovered");
    for it in recovered.ready {
        let _ = pipe.sched.send(Sched::Ready(it));
    }
    for it in recovered.delayed {
        let delay = upload::backoff(
            it.attempts,
            pipe.cfg.retry_base.get(),
            pipe.cfg.retry_max.get(),
        );
        let _ = pipe.sched.send(Sched::At(Instant::now() + delay, it));
    }
    ctx.tracker
        .spawn(scheduler(pipe.clone(), sched_rx, ctx.token.clone()).instrument(span.clone()));
    ctx.tracker
        .spawn(converter(pipe.clone(), conv_rx, ctx.token.clone()).instrument(span.clone()));
    {
        let conv_tx = conv_tx.clone();
        let token = ctx.token.clone();
        let inputs = recovered.inputs;
        ctx.tracker.spawn(async move {
            for it in inputs {
                tokio::select! {
                    _ = token.cancelled() => return,
                    r = conv_tx.send(it) => if r.is_err() { return },
                }
            }
        });
    }
    ctx.tracker
        .spawn(intake::run(pipe.clone(), conv_tx, ctx.token.clone()).instrument(span));
    Ok(())
}

struct Recovered {
    ready: Vec<ItemName>,
    delayed: Vec<ItemName>,
    inputs: Vec<ItemName>,
}

/// Reads the work folder back after a stop or a crash. The instance lock guarantees no other
/// process owns it, so whatever is `processing` was left by a previous run: back to `queued`.
/// Nothing here looks at modification times.
fn recover(pipe: &Pipe) -> Result<Recovered, String> {
    let read = std::fs::read_dir(&pipe.work).map_err(|e| {
        format!(
            "pipeline {:?}: cannot read the work folder {}: {e}",
            pipe.cfg.name,
            pipe.work.display()
        )
    })?;
    let mut by_id: HashMap<ulid::Ulid, Vec<ItemName>> = HashMap::new();
    for entry in read.flatten() {
        let name = entry.file_name();
        let Some(item) = name.to_str().and_then(ItemName::parse) else {
            continue;
        };
        by_id.entry(item.id).or_default().push(item);
    }
    let mut out = Recovered {
        ready: vec![],
        delayed: vec![],
        inputs: vec![],
    };
    let mut done = Vec::new();
    let mut pending = 0u64;
    let mut changed = false;
    let mut ids: Vec<_> = by_id.into_iter().collect();
    ids.sort_by_key(|(id, _)| *id);
    for (_, items) in ids {
        let mut input = None;
        let mut has_item = false;
        for it in items {
            match it.state {
                State::Converting => {
                    let _ = std::fs::remove_file(pipe.path(&it));
                    changed = true;
                }
                State::Processing => {
                    let q = it.with_state(State::Queued);
                    match std::fs::rename(pipe.path(&it), pipe.path(&q)) {
                        Ok(()) => {
                            changed = true;
                            out.ready.push(q);
                            has_item = true;
                            pending += 1;
                        }
                        Err(e) => {
                            tracing::error!(file = %pipe.path(&it).display(), "cannot return the item to the queue: {e}")
                        }
                    }
                }
                State::Queued => {
                    out.ready.push(it);
                    has_item = true;
                    pending += 1;
                }
                State::Error => {
                    out.delayed.push(it);
                    has_item = true;
                    pending += 1;
                }
                State::Done => {
                    done.push(it);
                    has_item = true;
                }
                State::Kept => has_item = true,
                State::Input => input = Some(it),
            }
        }
        if let Some(input) = input {
            if has_item {
                // Converted before the stop: only the post action was left to do.
                if let Err(e) = post_action(pipe, &input) {
                    tracing::error!(file = %pipe.path(&input).display(), "post action failed: {e}");
                }
            } else {
                pending += 1;
                out.inputs.push(input);
            }
        }
    }
    prune_done(pipe, done);
    pipe.metrics.pending.store(pending, Ordering::Relaxed);
    if changed {
        fsops::sync_dir(&pipe.work)
            .map_err(|e| format!("cannot fsync {}: {e}", pipe.work.display()))?;
    }
    Ok(out)
}

/// Keeps the newest `keep_done` done items (by ULID, i.e. claim order), removes the rest.
fn prune_done(pipe: &Pipe, mut done: Vec<ItemName>) {
    if done.len() <= pipe.cfg.keep_done {
        return;
    }
    done.sort_by_key(|d| d.id);
    let extra = done.len() - pipe.cfg.keep_done;
    for d in done.into_iter().take(extra) {
        let _ = std::fs::remove_file(pipe.path(&d));
    }
}

/// What happens to an input once its converted item is safely queued.
fn post_action(pipe: &Pipe, input: &ItemName) -> std::io::Result<()> {
    let src = pipe.path(input);
    match pipe.cfg.post_action {
        PostAction::Delete => match std::fs::remove_file(&src) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        PostAction::Keep => {
            fsops::rename_noreplace(&src, &pipe.path(&input.with_state(State::Kept)))
        }
        PostAction::Move | PostAction::Archive => {
            let Some(done) = &pipe.done_dir else {
                return Err(std::io::Error::other("done_dir is not set"));
            };
            let dir = if pipe.cfg.post_action == PostAction::Archive {
                let day = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
                done.join(day.get(..10).unwrap_or("undated"))
            } else {
                done.clone()
            };
            let to = store::move_noclobber(&src, &dir, &input.orig)?;
            if let Some(parent) = to.parent() {
                fsops::sync_dir(parent)?;
            }
            Ok(())
        }
    }
}

/// The convert stage: `concurrency` conversions at once.
async fn converter(pipe: Arc<Pipe>, mut rx: mpsc::Receiver<ItemName>, token: CancellationToken) {
    let mut running = JoinSet::new();
    loop {
        while running.len() >= pipe.cfg.concurrency {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = running.join_next() => {}
            }
        }
        let input = tokio::select! {
            _ = token.cancelled() => return,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            it = rx.recv() => match it { Some(it) => it, None => return },
        };
        let pipe = pipe.clone();
        running.spawn(async move { convert_one(&pipe, input).await });
    }
}

async fn convert_one(pipe: &Pipe, input: ItemName) {
    let started = Instant::now();
    let queued = input.with_state(State::Queued);
    let result = match &pipe.cfg.converter {
        Converter::Named(_) => {
            // Passthrough: the queued item is a second name for the input's bytes.
            match std::fs::hard_link(pipe.path(&input), pipe.path(&queued)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(format!("cannot queue the input: {e}")),
            }
        }
        Converter::Command(c) => run_converter(pipe, c, &input, &queued).await,
    };
    match result {
        Ok(()) => {
            if let Err(e) = pipe.syncer.sync(vec![pipe.work.clone()]).await {
                tracing::error!(file = %input.orig, "{e}");
            }
            pipe.metrics.converted.fetch_add(1, Ordering::Relaxed);
            pipe.metrics
                .convert_ms_total
                .fetch_add(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            if let Err(e) = post_action(pipe, &input) {
                tracing::error!(file = %pipe.path(&input).display(), action = ?pipe.cfg.post_action, "post action failed (the item is queued; retried at next start): {e}");
            }
            pipe.hub.emit(Event::FileQueued {
                pipeline: pipe.cfg.name.clone(),
                id: queued.id.to_string(),
                file: queued.orig.clone(),
            });
            let _ = pipe.sched.send(Sched::Ready(queued));
        }
        Err(reason) => {
            pipe.metrics.convert_failed.fetch_add(1, Ordering::Relaxed);
            pipe.metrics.pending.fetch_sub(1, Ordering::Relaxed);
            let moved = to_error_dir(pipe, &input, &reason);
            pipe.hub.emit(Event::FileFailed {
                pipeline: pipe.cfg.name.clone(),
                file: input.orig.clone(),
                reason: match moved {
                    Ok(p) => format!("{reason} (moved to {})", p.display()),
                    Err(e) => {
                        format!("{reason} (and it could not be moved to the error folder: {e})")
                    }
                },
            });
        }
    }
}

/// The input of a failed conversion goes to the error folder, after its `.reason` file.
fn to_error_dir(pipe: &Pipe, input: &ItemName, reason: &str) -> std::io::Result<PathBuf> {
    let text = format!(
        "pipeline: {}\nfile: {}\nid: {}\nat: {}\nreason: {reason}\n",
        pipe.cfg.name,
        input.orig,
        input.id,
        humantime::format_rfc3339_seconds(SystemTime::now())
    );
    // Reason first (durably), then the input, under the same (suffixed) base name.
    let reason_path =
        store::write_durable(&pipe.error_dir, &format!("{}.reason", input.orig), &text)?;
    let base = reason_path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".reason"))
        .unwrap_or(&input.orig)
        .to_string();
    let to = store::move_noclobber(&pipe.path(input), &pipe.error_dir, &base)?;
    fsops::sync_dir(&pipe.error_dir)?;
    Ok(to)
}

async fn run_converter(
    pipe: &Pipe,
    c: &config::CommandConverter,
    input: &ItemName,
    queued: &ItemName,
) -> Result<(), String> {
    let out = pipe.path(&input.with_state(State::Converting));
    let _ = std::fs::remove_file(&out);
    let inp = pipe.path(input);
    let subst = |a: &str| {
        a.replace("{input}", &inp.to_string_lossy())
            .replace("{output}", &out.to_string_lossy())
    };
    let mut cmd = tokio::process::Command::new(&c.command);
    cmd.args(c.args.iter().map(|a| subst(a)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    fsops::own_process_group(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start converter {:?}: {e}", c.command))?;
    let pid = child.id();
    let mut stderr = child.stderr.take();
    let err_text = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(4096).read_to_end(&mut buf).await;
        }
        String::from_utf8_lossy(&buf).trim().to_string()
    });
    let status = match tokio::time::timeout(c.timeout.get(), child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("converter {:?}: {e}", c.command)),
        Err(_) => {
            if let Some(pid) = pid {
                fsops::kill_tree(pid);
            }
            let _ = child.kill().await;
            let _ = std::fs::remove_file(&out);
            return Err(format!(
                "converter {:?} did not finish within {}; it and its children were killed",
                c.command, c.timeout
            ));
        }
    };
    let stderr_text = err_text.await.unwrap_or_default();
    let detail = if stderr_text.is_empty() {
        String::new()
    } else {
        format!("; its stderr: {stderr_text}")
    };
    if !status.success() {
        let _ = std::fs::remove_file(&out);
        return Err(format!(
            "converter {:?} failed ({status}){detail}",
            c.command
        ));
    }
    match std::fs::metadata(&out) {
        Ok(m) if m.is_file() => {}
        _ => {
            return Err(format!(
                "converter {:?} exited successfully but wrote no output at {{output}}{detail}",
                c.command
            ));
        }
    }
    store::sync_file(out.clone())
        .await
        .map_err(|e| format!("cannot fsync the converted output: {e}"))?;
    fsops::rename_noreplace(&out, &pipe.path(queued))
        .map_err(|e| format!("cannot queue the converted output: {e}"))
}

/// What an upload task reports back to the scheduler.
enum Outcome {
    Finished,
    RetryAt(Instant, ItemName),
}

/// The upload stage: sends ready items, at most the uploader's concurrency at once, and holds
/// failed ones until their backoff is over.
async fn scheduler(
    pipe: Arc<Pipe>,
    mut rx: mpsc::UnboundedReceiver<Sched>,
    token: CancellationToken,
) {
    let mut ready: VecDeque<ItemName> = VecDeque::new();
    let mut delayed: BTreeMap<(Instant, u64), ItemName> = BTreeMap::new();
    let mut seq = 0u64;
    let mut running = JoinSet::new();
    let limit = pipe.uploader.concurrency;
    loop {
        while running.len() < limit
            && let Some(it) = ready.pop_front()
        {
            let pipe = pipe.clone();
            running.spawn(async move { upload_one(&pipe, it).await });
        }
        let next = delayed.first_key_value().map(|(k, _)| k.0);
        tokio::select! {
            _ = token.cancelled() => return,
            msg = rx.recv() => match msg {
                None => return,
                Some(Sched::Ready(it)) => ready.push_back(it),
                Some(Sched::At(at, it)) => { seq += 1; delayed.insert((at, seq), it); }
                Some(Sched::RetryNow) => ready.extend(std::mem::take(&mut delayed).into_values()),
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(Outcome::RetryAt(at, it)) = done {
                    seq += 1;
                    delayed.insert((at, seq), it);
                }
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {
                let now = Instant::now();
                while let Some(entry) = delayed.first_entry() {
                    if entry.key().0 > now { break; }
                    ready.push_back(entry.remove());
                }
            }
        }
    }
}

async fn upload_one(pipe: &Pipe, item: ItemName) -> Outcome {
    let processing = item.with_state(State::Processing);
    // Not made durable: after a crash either name means "queued".
    if let Err(e) = std::fs::rename(pipe.path(&item), pipe.path(&processing)) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::error!(file = %pipe.path(&item).display(), "cannot mark the item processing: {e}");
            return Outcome::RetryAt(
                Instant::now() + pipe.cfg.retry_max.get().min(Duration::from_secs(60)),
                item,
            );
        }
        // Purged or retried by an operator meanwhile.
        return Outcome::Finished;
    }
    let path = pipe.path(&processing);
    // Small items are read right here; big ones off the async threads.
    let small = std::fs::metadata(&path).is_ok_and(|m| m.len() <= 256 * 1024);
    let read = if small {
        std::fs::read(&path)
    } else {
        tokio::fs::read(&path).await
    };
    let body = match read {
        Ok(b) => b,
        Err(e) => {
            let reason = format!("cannot read the queued item: {e}");
            dead_letter(pipe, &processing, &reason).await;
            return Outcome::Finished;
        }
    };
    let key = item.id.to_string();
    let started = Instant::now();
    let attempt = {
        let Ok(_permit) = pipe.uploader.limit.acquire().await else {
            return Outcome::Finished;
        };
        pipe.uploader.send(&key, &item.orig, body).await
    };
    let ms = started.elapsed().as_millis() as u64;
    match attempt {
        Attempt::Uploaded => {
            let done = processing.with_state(State::Done);
            if let Err(e) = std::fs::rename(pipe.path(&processing), pipe.path(&done)) {
                tracing::error!(file = %pipe.path(&processing).display(), "uploaded, but cannot mark the item done: {e}");
            }
            pipe.metrics.pending.fetch_sub(1, Ordering::Relaxed);
            pipe.metrics.uploaded.fetch_add(1, Ordering::Relaxed);
            pipe.metrics
                .upload_ms_total
                .fetch_add(ms, Ordering::Relaxed);
            pipe.metrics.upload_ms_max.fetch_max(ms, Ordering::Relaxed);
            let age_ms = SystemTime::now()
                .duration_since(item.id.datetime())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            pipe.hub.emit(Event::FileUploaded {
                pipeline: pipe.cfg.name.clone(),
                id: key,
                file: item.orig.clone(),
                attempts: item.attempts + 1,
                upload_ms: ms,
                age_ms,
            });
            // Losing this rename in a power cut only means one more upload under the same key.
            pipe.syncer.sync_soon(vec![pipe.work.clone()]);
            Outcome::Finished
        }
        Attempt::Permanent(reason) => {
            dead_letter(pipe, &processing, &reason).await;
            Outcome::Finished
        }
        Attempt::Transient(reason) => {
            let attempts = item.attempts + 1;
            if pipe.cfg.max_attempts > 0 && attempts >= pipe.cfg.max_attempts {
                let reason = format!("{reason} (gave up after {attempts} attempts)");
                dead_letter(pipe, &processing, &reason).await;
                return Outcome::Finished;
            }
            let mut waiting = processing.with_state(State::Error);
            waiting.attempts = attempts;
            if let Err(e) = std::fs::rename(pipe.path(&processing), pipe.path(&waiting)) {
                tracing::error!(file = %pipe.path(&processing).display(), "cannot mark the item for retry: {e}");
                waiting = processing.clone();
            } else {
                let _ = pipe.syncer.sync(vec![pipe.work.clone()]).await;
            }
            let delay = upload::backoff(
                attempts,
                pipe.cfg.retry_base.get(),
                pipe.cfg.retry_max.get(),
            );
            pipe.metrics.retries.fetch_add(1, Ordering::Relaxed);
            pipe.hub.emit(Event::UploadRetry {
                pipeline: pipe.cfg.name.clone(),
                id: key,
                file: item.orig.clone(),
                attempt: attempts,
                reason,
                delay_ms: delay.as_millis() as u64,
            });
            Outcome::RetryAt(Instant::now() + delay, waiting)
        }
    }
}

/// Moves an item the server refused for good into the dead-letter folder, after its `.reason`.
async fn dead_letter(pipe: &Pipe, item: &ItemName, reason: &str) {
    let text = format!(
        "pipeline: {}\nfile: {}\nid: {}\nattempts: {}\nat: {}\nreason: {reason}\n",
        pipe.cfg.name,
        item.orig,
        item.id,
        item.attempts + 1,
        humantime::format_rfc3339_seconds(SystemTime::now())
    );
    let stem = item.stem();
    let result = (|| -> std::io::Result<PathBuf> {
        store::write_durable(&pipe.dead_dir, &format!("{stem}.reason"), &text)?;
        let to = store::move_noclobber(&pipe.path(item), &pipe.dead_dir, &stem)?;
        fsops::sync_dir(&pipe.dead_dir)?;
        Ok(to)
    })();
    pipe.metrics.pending.fetch_sub(1, Ordering::Relaxed);
    pipe.metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = &result {
        tracing::error!(file = %pipe.path(item).display(), "cannot dead-letter the item: {e}");
    }
    let _ = pipe.syncer.sync(vec![pipe.work.clone()]).await;
    pipe.hub.emit(Event::FileDeadLettered {
        pipeline: pipe.cfg.name.clone(),
        id: item.id.to_string(),
        file: item.orig.clone(),
        reason: reason.to_string(),
    });
}

/// Arguments of the `queue.*` socket commands.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueArgs {
    pub pipeline: Option<String>,
    pub state: Option<String>,
    pub ids: Vec<String>,
    pub limit: Option<usize>,
}

fn select<'a>(pipes: &'a Pipes, args: &QueueArgs) -> Result<Vec<&'a Arc<Pipe>>, ErrorBody> {
    match &args.pipeline {
        None => Ok(pipes.values().collect()),
        Some(name) => pipes.get(name).map(|p| vec![p]).ok_or_else(|| {
            ErrorBody::new(
                ErrorCode::BadRequest,
                format!(
                    "no pipeline named {name:?}; pipelines: {}",
                    pipes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        }),
    }
}

fn list_dir(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// Items of one pipeline as JSON rows: work folder states, plus `dead` and `failed` folders.
fn items_of(pipe: &Pipe) -> Vec<Value> {
    let now = SystemTime::now();
    let mut rows = Vec::new();
    for n in list_dir(&pipe.work) {
        if let Some(it) = ItemName::parse(&n) {
            let age = now
                .duration_since(it.id.datetime())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            rows.push(json!({"pipeline": pipe.cfg.name, "id": it.id.to_string(), "file": it.orig, "state": it.state.ext(), "attempts": it.attempts, "age_s": age, "path": pipe.work.join(&n)}));
        }
    }
    for n in list_dir(&pipe.dead_dir) {
        if n.ends_with(".reason") {
            continue;
        }
        if let Some(it) = ItemName::parse_stem(&n, State::Error) {
            let reason = std::fs::read_to_string(pipe.dead_dir.join(format!("{n}.reason")))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("reason: ").map(String::from))
                });
            let age = now
                .duration_since(it.id.datetime())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            rows.push(json!({"pipeline": pipe.cfg.name, "id": it.id.to_string(), "file": it.orig, "state": "dead", "attempts": it.attempts, "age_s": age, "path": pipe.dead_dir.join(&n), "reason": reason}));
        }
    }
    for n in list_dir(&pipe.error_dir) {
        if n.ends_with(".reason") {
            continue;
        }
        let reason = std::fs::read_to_string(pipe.error_dir.join(format!("{n}.reason")))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("reason: ").map(String::from))
            });
        rows.push(json!({"pipeline": pipe.cfg.name, "id": null, "file": n, "state": "failed", "path": pipe.error_dir.join(&n), "reason": reason}));
    }
    rows
}

fn stats_of(pipe: &Pipe) -> Value {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for s in [
        "input",
        "queued",
        "processing",
        "error",
        "done",
        "kept",
        "dead",
        "failed",
    ] {
        counts.insert(s, 0);
    }
    let mut oldest: Option<ulid::Ulid> = None;
    for n in list_dir(&pipe.work) {
        if let Some(it) = ItemName::parse(&n) {
            if let Some(c) = counts.get_mut(it.state.ext()) {
                *c += 1;
            }
            if matches!(
                it.state,
                State::Queued | State::Processing | State::Error | State::Input
            ) {
                oldest = Some(oldest.map_or(it.id, |o| o.min(it.id)));
            }
        }
    }
    counts.insert(
        "dead",
        list_dir(&pipe.dead_dir)
            .iter()
            .filter(|n| !n.ends_with(".reason"))
            .count() as u64,
    );
    counts.insert(
        "failed",
        list_dir(&pipe.error_dir)
            .iter()
            .filter(|n| !n.ends_with(".reason"))
            .count() as u64,
    );
    let m = &pipe.metrics;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let avg = |total: u64, n: u64| if n == 0 { 0.0 } else { total as f64 / n as f64 };
    let oldest_age_s = oldest
        .and_then(|o| SystemTime::now().duration_since(o.datetime()).ok())
        .map(|d| d.as_secs());
    json!({
        "pipeline": pipe.cfg.name,
        "work_dir": pipe.work,
        "counts": counts,
        "oldest_pending_age_s": oldest_age_s,
        "paused": pipe.paused.lock().ok().and_then(|p| p.clone()),
        "since_start": {
            "claimed": get(&m.claimed),
            "converted": get(&m.converted),
            "convert_failed": get(&m.convert_failed),
            "convert_ms_avg": avg(get(&m.convert_ms_total), get(&m.converted)),
            "uploaded": get(&m.uploaded),
            "upload_ms_avg": avg(get(&m.upload_ms_total), get(&m.uploaded)),
            "upload_ms_max": get(&m.upload_ms_max),
            "retries": get(&m.retries),
            "dead_letters": get(&m.dead_letters),
            "rescans": get(&m.rescans),
        },
    })
}

/// `queue retry`: waiting items now, dead letters back into the queue (same id, attempts 0).
fn retry(pipe: &Pipe, ids: &[String]) -> Result<u64, String> {
    let mut n = 0;
    for name in list_dir(&pipe.dead_dir) {
        if name.ends_with(".reason") {
            continue;
        }
        let Some(mut it) = ItemName::parse_stem(&name, State::Queued) else {
            continue;
        };
        if !ids.is_empty()
            && !ids
                .iter()
                .any(|i| i.eq_ignore_ascii_case(&it.id.to_string()))
        {
            continue;
        }
        it.attempts = 0;
        fsops::rename_noreplace(&pipe.dead_dir.join(&name), &pipe.path(&it))
            .map_err(|e| format!("cannot requeue {name}: {e}"))?;
        let _ = std::fs::remove_file(pipe.dead_dir.join(format!("{name}.reason")));
        pipe.metrics.pending.fetch_add(1, Ordering::Relaxed);
        let _ = pipe.sched.send(Sched::Ready(it));
        n += 1;
    }
    fsops::sync_dir(&pipe.work).map_err(|e| e.to_string())?;
    let _ = pipe.sched.send(Sched::RetryNow);
    Ok(n)
}

/// `queue purge --state done|dead|failed|kept`.
fn purge(pipe: &Pipe, state: &str) -> Result<u64, String> {
    let mut n = 0;
    match state {
        "done" | "kept" => {
            for name in list_dir(&pipe.work) {
                if ItemName::parse(&name).is_some_and(|it| it.state.ext() == state) {
                    std::fs::remove_file(pipe.work.join(&name))
                        .map_err(|e| format!("{name}: {e}"))?;
                    n += 1;
                }
            }
        }
        "dead" | "failed" => {
            let dir = if state == "dead" {
                &pipe.dead_dir
            } else {
                &pipe.error_dir
            };
            for name in list_dir(dir) {
                std::fs::remove_file(dir.join(&name)).map_err(|e| format!("{name}: {e}"))?;
                if !name.ends_with(".reason") {
                    n += 1;
                }
            }
        }
        other => {
            return Err(format!(
                "cannot purge {other:?}: only done, kept, dead and failed items can be purged (queued ones are still owed to the server)"
            ));
        }
    }
    Ok(n)
}

/// Socket command handlers (`queue.ls`, `queue.stats`, `queue.retry`, `queue.purge`).
pub(crate) fn handle(
    pipes: &Pipes,
    cmd: &str,
    args: crate::commands::Args,
) -> crate::commands::Reply {
    let a: QueueArgs = parse_args(cmd, args)?;
    let sel = select(pipes, &a)?;
    let bad = |m: String| ErrorBody::new(ErrorCode::BadRequest, m);
    match cmd {
        "queue.ls" => {
            let mut rows: Vec<Value> = sel.iter().flat_map(|p| items_of(p)).collect();
            if let Some(s) = &a.state {
                rows.retain(|r| r["state"] == s.as_str());
            }
            rows.sort_by(|x, y| x["id"].as_str().cmp(&y["id"].as_str()));
            let total = rows.len();
            rows.truncate(a.limit.unwrap_or(1000));
            Ok(json!({"total": total, "items": rows}))
        }
        "queue.stats" => {
            Ok(json!({"pipelines": sel.iter().map(|p| stats_of(p)).collect::<Vec<_>>()}))
        }
        "queue.retry" => {
            let mut n = 0;
            for p in sel {
                n += retry(p, &a.ids).map_err(bad)?;
            }
            Ok(json!({"requeued": n}))
        }
        "queue.purge" => {
            let state = a
                .state
                .as_deref()
                .ok_or_else(|| bad("say which items: state = done, kept, dead or failed".into()))?;
            let mut n = 0;
            for p in sel {
                n += purge(p, state).map_err(bad)?;
            }
            Ok(json!({"purged": n}))
        }
        _ => Err(bad(format!("unknown queue command {cmd:?}"))),
    }
}
