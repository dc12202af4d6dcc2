//! Intake: find complete files in the watch folders and claim them.
//!
//! Watch events are only hints that say "look at this path now"; the truth comes from full
//! scans at start-up, after a watcher overflow or error, every `rescan`, and every
//! `poll_interval` in polling mode. A file is taken when its size, mtime and file id are the
//! same at two looks at least `settle` apart. It is claimed by a rename without replace into the
//! work folder (fsync of the file before, of both folders after), which is also when it gets
//! its ULID.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use majordomo_core::Size;
use majordomo_core::hub::Event;
use majordomo_platform::fsops;

use crate::config::PostAction;
use crate::item::{ItemName, State};
use crate::pipe::Pipe;
use crate::schedule::Sched;
use crate::store;

/// Claims in flight at once: enough for the folder fsyncs to batch well.
const MAX_CLAIMS: usize = 128;

/// What makes a file "unchanged".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signature {
    size: u64,
    mtime: Option<SystemTime>,
    id: (u64, u64),
}

struct Candidate {
    sig: Signature,
    since: Instant,
}

enum Hint {
    Path(PathBuf),
    Rescan(&'static str),
}

fn signature(path: &Path) -> Option<Signature> {
    let m = std::fs::symlink_metadata(path).ok()?;
    if !m.is_file() {
        return None;
    }
    Some(Signature {
        size: m.len(),
        mtime: m.modified().ok(),
        id: fsops::file_id(&m),
    })
}

pub(crate) async fn run(
    pipe: Arc<Pipe>,
    to_convert: mpsc::Sender<ItemName>,
    token: CancellationToken,
) {
    let (tx, mut hints) = mpsc::unbounded_channel::<Hint>();
    let mut _watcher = None;
    if !pipe.cfg.poll {
        match start_watcher(&pipe, tx.clone()) {
            Ok(w) => _watcher = Some(w),
            Err(e) => tracing::warn!(
                "cannot watch the folders ({e}); polling every {} instead",
                pipe.cfg.poll_interval
            ),
        }
    }
    let polling = _watcher.is_none();
    let settle = pipe.cfg.settle.get();
    let tick_every = (settle / 4).clamp(Duration::from_millis(10), Duration::from_millis(500));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cands: HashMap<PathBuf, Candidate> = HashMap::new();
    let mut claiming: HashSet<PathBuf> = HashSet::new();
    let mut claims: JoinSet<PathBuf> = JoinSet::new();
    let mut last_scan = Instant::now();
    let mut space = SpaceCheck::default();
    let mut noted: HashSet<PathBuf> = HashSet::new();
    scan(&pipe, &mut cands, &mut noted, "start-up");
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            Some(h) = hints.recv() => match h {
                Hint::Path(p) => observe(&pipe, &mut cands, &p),
                Hint::Rescan(why) => { scan(&pipe, &mut cands, &mut noted, why); last_scan = Instant::now(); }
            },
            Some(done) = claims.join_next(), if !claims.is_empty() => {
                if let Ok(p) = done { claiming.remove(&p); }
            }
            _ = tick.tick() => {
                let every = if polling { pipe.cfg.poll_interval.get() } else { pipe.cfg.rescan.get() };
                if last_scan.elapsed() >= every {
                    scan(&pipe, &mut cands, &mut noted, if polling { "poll" } else { "periodic" });
                    last_scan = Instant::now();
                    if !polling { prune(&pipe); }
                }
                let paused = backpressure(&pipe, &mut space);
                set_paused(&pipe, paused);
                if pipe.metrics.pending.load(Ordering::Relaxed) as usize >= pipe.cfg.high_water || space.low {
                    continue;
                }
                let now = Instant::now();
                let due: Vec<PathBuf> = cands
                    .iter()
                    .filter(|(p, c)| now.duration_since(c.since) >= settle && !claiming.contains(*p))
                    .map(|(p, _)| p.clone())
                    // Only as many as can be claimed now: a backlog of thousands stays put.
                    .take(MAX_CLAIMS.saturating_sub(claiming.len()))
                    .collect();
                for path in due {
                    if claiming.len() >= MAX_CLAIMS
                        || pipe.metrics.pending.load(Ordering::Relaxed) as usize >= pipe.cfg.high_water
                    {
                        break;
                    }
                    let Some(c) = cands.get_mut(&path) else { continue };
                    match signature(&path) {
                        None => { cands.remove(&path); }
                        Some(sig) if sig != c.sig => { c.sig = sig; c.since = now; }
                        Some(_) => {
                            cands.remove(&path);
                            claiming.insert(path.clone());
                            pipe.metrics.pending.fetch_add(1, Ordering::Relaxed);
                            let (pipe, to_convert) = (pipe.clone(), to_convert.clone());
                            claims.spawn(async move {
                                claim(&pipe, &path, &to_convert).await;
                                path
                            });
                        }
                    }
                }
            }
        }
    }
}

fn start_watcher(
    pipe: &Pipe,
    tx: mpsc::UnboundedSender<Hint>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(ev) if ev.need_rescan() => {
            let _ = tx.send(Hint::Rescan("watcher overflow"));
        }
        Ok(ev) => {
            use notify::EventKind;
            use notify::event::{AccessKind, AccessMode};
            // Close-after-write starts the settle check early; plain opens and reads (our own
            // fsync included) say nothing new.
            if matches!(
                ev.kind,
                EventKind::Create(_)
                    | EventKind::Modify(_)
                    | EventKind::Access(AccessKind::Close(AccessMode::Write))
            ) {
                for p in ev.paths {
                    let _ = tx.send(Hint::Path(p));
                }
            }
        }
        Err(_) => {
            let _ = tx.send(Hint::Rescan("watcher error"));
        }
    })?;
    let mode = if pipe.cfg.recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    for dir in &pipe.cfg.watch {
        w.watch(dir, mode)?;
    }
    Ok(w)
}

/// Whether a path in a watch folder is one this pipeline may take. A name that is not UTF-8 is
/// matched as printed (invalid bytes as U+FFFD): if it matches, the pipeline takes it only to
/// refuse it with a reason (see [`claim`]).
fn eligible(pipe: &Pipe, path: &Path) -> bool {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy()) else {
        return false;
    };
    if !pipe.takes(&name) {
        return false;
    }
    let Some(parent) = path.parent() else {
        return false;
    };
    pipe.cfg.watch.iter().any(|w| {
        if pipe.cfg.recursive {
            // Never from a dot-folder or one of the pipeline's own folders.
            parent.starts_with(w)
                && parent
                    .strip_prefix(w)
                    .map(|rel| {
                        !rel.components()
                            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
                    })
                    .unwrap_or(false)
                && !own_folder(pipe, parent)
        } else {
            parent == w.as_path()
        }
    })
}

fn own_folder(pipe: &Pipe, dir: &Path) -> bool {
    [
        Some(&pipe.work),
        Some(&pipe.error_dir),
        Some(&pipe.dead_dir),
        pipe.done_dir.as_ref(),
    ]
    .into_iter()
    .flatten()
    .any(|d| dir.starts_with(d))
}

/// A hint about `path`: (re)start its settle clock if it is new or changed.
fn observe(pipe: &Pipe, cands: &mut HashMap<PathBuf, Candidate>, path: &Path) {
    if !eligible(pipe, path) {
        return;
    }
    match signature(path) {
        Some(sig) => match cands.get_mut(path) {
            Some(c) if c.sig == sig => {}
            Some(c) => {
                c.sig = sig;
                c.since = Instant::now();
            }
            None => {
                cands.insert(
                    path.to_path_buf(),
                    Candidate {
                        sig,
                        since: Instant::now(),
                    },
                );
            }
        },
        None => {
            cands.remove(path);
        }
    }
}

/// What a drop-folder entry that is neither a file nor a folder is, to say why it is left.
fn special_kind(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_block_device() || ft.is_char_device() {
            return "a device";
        }
    }
    if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// A full look at every watch folder. Entries that are neither regular files nor folders
/// (symbolic links, FIFOs, sockets, devices) are never followed or read: each is logged once
/// while it stays (`noted`), and left where it is.
fn scan(
    pipe: &Pipe,
    cands: &mut HashMap<PathBuf, Candidate>,
    noted: &mut HashSet<PathBuf>,
    why: &'static str,
) {
    let mut found = 0u64;
    let mut special: HashSet<PathBuf> = HashSet::new();
    let mut stack: Vec<PathBuf> = pipe.cfg.watch.clone();
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                let hidden = e.file_name().to_string_lossy().starts_with('.');
                if pipe.cfg.recursive && !hidden && !own_folder(pipe, &path) {
                    stack.push(path);
                }
            } else if ft.is_file() {
                if eligible(pipe, &path) {
                    found += 1;
                    observe(pipe, cands, &path);
                }
            } else if eligible(pipe, &path) {
                if !noted.contains(&path) {
                    tracing::warn!(pipeline = %pipe.cfg.name, file = %path.display(),
                        "left in the drop folder: it is {}, which the pipeline never follows or reads; drop a regular file instead",
                        special_kind(&ft));
                }
                special.insert(path);
            }
        }
    }
    // Forget what is gone, so that one put back is reported again.
    *noted = special;
    pipe.metrics.rescans.fetch_add(1, Ordering::Relaxed);
    // Periodic polls are routine; say only when something is there or the scan had a cause.
    if why != "poll" || found > 0 {
        pipe.emit(Event::PipelineRescan {
            pipeline: pipe.cfg.name.clone(),
            reason: why.to_string(),
            found,
        });
    }
}

fn prune(pipe: &Pipe) {
    let done: Vec<ItemName> = std::fs::read_dir(&pipe.work)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(ItemName::parse))
                .filter(|i| i.state == State::Done)
                .collect()
        })
        .unwrap_or_default();
    crate::recover::prune_done(pipe, done);
}

#[derive(Default)]
struct SpaceCheck {
    at: Option<Instant>,
    low: bool,
    free: u64,
}

/// `Some(reason)` while intake must pause.
fn backpressure(pipe: &Pipe, space: &mut SpaceCheck) -> Option<String> {
    if space
        .at
        .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
    {
        space.at = Some(Instant::now());
        match fsops::free_space(&pipe.work) {
            Ok(free) => {
                space.free = free;
                space.low = free < pipe.cfg.min_free.bytes();
            }
            Err(_) => space.low = false,
        }
    }
    let pending = pipe.metrics.pending.load(Ordering::Relaxed) as usize;
    if pending >= pipe.cfg.high_water {
        Some(format!(
            "{pending} items pending (high_water {})",
            pipe.cfg.high_water
        ))
    } else if space.low {
        Some(format!(
            "{} free on the work folder's file system (min_free {})",
            Size(space.free),
            pipe.cfg.min_free
        ))
    } else {
        None
    }
}

fn set_paused(pipe: &Pipe, now: Option<String>) {
    let Ok(mut cur) = pipe.paused.lock() else {
        return;
    };
    if cur.is_some() != now.is_some() {
        pipe.emit(Event::PipelineBackpressure {
            pipeline: pipe.cfg.name.clone(),
            paused: now.is_some(),
            reason: now
                .clone()
                .unwrap_or_else(|| "below the limits again".into()),
        });
    }
    *cur = now;
}

/// Claims one settled file: fsync it, rename it (never replacing) into the work folder, fsync
/// both folders, then hand it on.
async fn claim(pipe: &Pipe, src: &Path, to_convert: &mpsc::Sender<ItemName>) {
    let Some(raw) = src.file_name() else {
        pipe.metrics.pending.fetch_sub(1, Ordering::Relaxed);
        return;
    };
    let orig = match crate::item::intake_name(raw) {
        Ok(orig) => orig,
        Err(reason) => {
            pipe.metrics.pending.fetch_sub(1, Ordering::Relaxed);
            refuse(pipe, src, &reason);
            return;
        }
    };
    // Passthrough with delete: the input is the queued item, no conversion step.
    let direct = pipe.cfg.converter.is_passthrough() && pipe.cfg.post_action == PostAction::Delete;
    let item = ItemName::new(orig, if direct { State::Queued } else { State::Input });
    // Unreadable files cannot be fsynced; they are still claimed and fail later with a reason.
    let _ = store::sync_file(src.to_path_buf()).await;
    let dst = pipe.path(&item);
    if let Err(e) = fsops::rename_noreplace(src, &dst) {
        pipe.metrics.pending.fetch_sub(1, Ordering::Relaxed);
        if e.kind() == std::io::ErrorKind::InvalidFilename {
            // A file system with a shorter limit than the usual 255 bytes: retrying never helps.
            refuse(
                pipe,
                src,
                &format!(
                    "the work folder refuses its item name {}: {e}; rename it shorter and drop it again",
                    dst.display()
                ),
            );
        } else if e.kind() != std::io::ErrorKind::NotFound {
            let hint = if e.kind() == std::io::ErrorKind::CrossesDevices
                || e.raw_os_error() == Some(18)
            {
                "; the work folder must be on the same file system as the watch folders: set work_dir"
            } else {
                ""
            };
            tracing::error!(file = %src.display(), to = %dst.display(), "cannot claim the file: {e}{hint}; it stays in the drop folder");
        }
        return;
    }
    let mut dirs = vec![pipe.work.clone()];
    if let Some(p) = src.parent() {
        dirs.push(p.to_path_buf());
    }
    if let Err(e) = pipe.syncer.sync(dirs).await {
        tracing::error!(file = %dst.display(), "{e}");
    }
    pipe.metrics.claimed.fetch_add(1, Ordering::Relaxed);
    if direct {
        pipe.metrics.converted.fetch_add(1, Ordering::Relaxed);
        pipe.emit(Event::FileQueued {
            pipeline: pipe.cfg.name.clone(),
            id: item.id.to_string(),
            file: item.orig.clone(),
        });
        let _ = pipe.sched.send(Sched::Ready(item));
    } else {
        let _ = to_convert.send(item).await;
    }
}

/// An input the pipeline cannot take goes to the error folder with its reason (under a
/// printable, short name), so that it neither stays in the drop folder forever nor is retried
/// at every rescan.
fn refuse(pipe: &Pipe, src: &Path, reason: &str) {
    crate::convert::refuse_to_error_dir(
        pipe,
        src,
        &format!("not taken: {reason}"),
        " in the drop folder",
    );
}
