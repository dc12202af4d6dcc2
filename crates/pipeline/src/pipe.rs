//! One running pipeline: its config, folders, counters and channels; opening it and starting
//! its three stages after the work folder is recovered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use majordomo_core::Ctx;
use majordomo_core::hub::{Event, Hub};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::{PipelineConfig, PipelineSection};
use crate::item::ItemName;
use crate::schedule::{self, Sched};
use crate::store::Syncer;
use crate::upload::Uploader;
use crate::{convert, intake, recover};

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
    /// The last upload attempt: 0 none yet, 1 the server answered (uploaded or refused for
    /// good), 2 it failed in transit or with a retryable status.
    pub last_upload: std::sync::atomic::AtomicU8,
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
    pub(crate) syncer: Syncer,
    hub: Hub,
    pub(crate) uploader: Arc<Uploader>,
    pub(crate) sched: mpsc::UnboundedSender<Sched>,
    /// Set while intake is paused by backpressure, with the reason.
    pub(crate) paused: Mutex<Option<String>>,
}

/// Every pipeline of the section, by name.
pub type Pipes = Arc<BTreeMap<String, Arc<Pipe>>>;

impl Pipe {
    /// The path of `item` in the work folder.
    pub(crate) fn path(&self, item: &ItemName) -> PathBuf {
        self.work.join(item.file_name())
    }

    /// Whether a file of this name is one the pipeline takes.
    pub(crate) fn takes(&self, name: &str) -> bool {
        !is_temp_name(name) && self.patterns.iter().any(|p| p.matches(name))
    }

    /// Logs `event` and hands it to the hub.
    pub(crate) fn emit(&self, event: Event) {
        crate::events::log(&event);
        self.hub.emit(event);
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

/// Resolves a pipeline's folders (creating them), its uploader and patterns.
pub(crate) fn open(
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
pub(crate) async fn start(
    ctx: &Ctx<PipelineSection>,
    pipe: Arc<Pipe>,
    sched_rx: mpsc::UnboundedReceiver<Sched>,
) -> Result<(), String> {
    let (conv_tx, conv_rx) = mpsc::channel::<ItemName>(pipe.cfg.concurrency * 4);
    let recovered = {
        let p = pipe.clone();
        tokio::task::spawn_blocking(move || recover::recover(&p))
            .await
            .map_err(|e| {
                format!(
                    "pipeline {:?}: the work folder recovery task failed: {e}",
                    pipe.cfg.name
                )
            })??
    };
    let span = tracing::info_span!("pipeline", name = %pipe.cfg.name);
    tracing::info!(parent: &span, queued = recovered.ready.len(), waiting = recovered.delayed.len(), inputs = recovered.inputs.len(), "work folder recovered");
    for it in recovered.ready {
        let _ = pipe.sched.send(Sched::Ready(it));
    }
    for it in recovered.delayed {
        let delay = schedule::retry_delay(&pipe.cfg, it.attempts);
        let _ = pipe.sched.send(Sched::At(Instant::now() + delay, it));
    }
    ctx.tracker
        .spawn(schedule::run(pipe.clone(), sched_rx, ctx.token.clone()).instrument(span.clone()));
    ctx.tracker
        .spawn(convert::run(pipe.clone(), conv_rx, ctx.token.clone()).instrument(span.clone()));
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
