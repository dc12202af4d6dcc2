//! The convert stage: runs the converter (`concurrency` at once), queues the output durably,
//! then applies the input's `post_action`. A failed conversion moves the input to the error
//! folder with its reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use majordomo_core::hub::Event;
use majordomo_core::procs::{Procs, Spawned};
use majordomo_platform::fsops;
use majordomo_platform::process::SpawnOpts;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{CommandConverter, Converter, PostAction};
use crate::item::{ItemName, State};
use crate::pipe::Pipe;
use crate::schedule::Sched;
use crate::store;

/// The convert stage: `concurrency` conversions at once.
pub(crate) async fn run(
    pipe: Arc<Pipe>,
    mut rx: mpsc::Receiver<ItemName>,
    token: CancellationToken,
) {
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
            pipe.emit(Event::FileQueued {
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
            pipe.emit(Event::FileFailed {
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
    move_to_error_dir(
        pipe,
        &pipe.path(input),
        &input.orig,
        &input.orig,
        Some(input.id),
        reason,
    )
}

/// Moves `src` into the error folder as `name` (suffixed if taken), after a `.reason` file
/// saying why: the one way a file the pipeline gives up on ends there (a failed conversion, an
/// input it cannot take, a stray file in the work folder). `file` is how the reason names it.
pub(crate) fn move_to_error_dir(
    pipe: &Pipe,
    src: &Path,
    name: &str,
    file: &str,
    id: Option<ulid::Ulid>,
    reason: &str,
) -> std::io::Result<PathBuf> {
    let id = id.map(|i| format!("id: {i}\n")).unwrap_or_default();
    let text = format!(
        "pipeline: {}\nfile: {file}\n{id}at: {}\nreason: {reason}\n",
        pipe.cfg.name,
        humantime::format_rfc3339_seconds(SystemTime::now())
    );
    // Reason first (durably), then the file, under the same (suffixed) base name.
    let reason_path = store::write_durable(&pipe.error_dir, &format!("{name}.reason"), &text)?;
    let base = reason_path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".reason"))
        .unwrap_or(name)
        .to_string();
    let to = store::move_noclobber(src, &pipe.error_dir, &base)?;
    fsops::sync_dir(&pipe.error_dir)?;
    Ok(to)
}

/// Gives up on a file that is not (or no longer) an item: moves it to the error folder under a
/// printable, short name with its `.reason`, and emits `FileFailed` saying where it went, or,
/// when the move failed, why and that it stays where it is (`stays`: "in the drop folder").
/// The one place refused inputs and stray work files end (intake and recovery).
pub(crate) fn refuse_to_error_dir(pipe: &Pipe, src: &Path, reason: &str, stays: &str) {
    let Some(raw) = src.file_name() else { return };
    let name = crate::item::refused_name(raw);
    let file = raw.to_string_lossy();
    let moved = move_to_error_dir(pipe, src, &name, &file, None, reason);
    pipe.emit(Event::FileFailed {
        pipeline: pipe.cfg.name.clone(),
        file: file.into_owned(),
        reason: match moved {
            Ok(p) => format!("{reason} (moved to {})", p.display()),
            Err(e) => format!(
                "{reason} (and it could not be moved to the error folder {}: {e}; it stays{stays})",
                pipe.error_dir.display()
            ),
        },
    });
}

/// How long a converter's stderr may stay open after it exited.
const STDERR_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The process registry of every converter of this daemon (its own guard process).
fn procs() -> &'static Arc<Procs> {
    static PROCS: std::sync::OnceLock<Arc<Procs>> = std::sync::OnceLock::new();
    PROCS.get_or_init(Procs::new)
}

async fn run_converter(
    pipe: &Pipe,
    c: &CommandConverter,
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
    let mut cmd = std::process::Command::new(&c.command);
    majordomo_platform::process::scrub_daemon_env(&mut cmd);
    cmd.args(c.args.iter().map(|a| subst(a)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // Owned like a program: own session and group, parent-death signal, the guard, its own
    // cgroup where possible; killed as a whole tree on timeout and when it exits.
    let procs = procs();
    procs.sweep();
    let Spawned { mut child, group } = procs
        .spawn(cmd, &SpawnOpts::default())
        .map_err(|e| format!("cannot start converter {:?}: {e}", c.command))?;
    let tree = group.id();
    let mut stderr = child.stderr.take();
    let mut err_text = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(4096).read_to_end(&mut buf).await;
        }
        String::from_utf8_lossy(&buf).trim().to_string()
    });
    let status = match tokio::time::timeout(c.timeout.get(), child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            procs.kill_tree(tree);
            err_text.abort();
            return Err(format!("converter {:?}: {e}", c.command));
        }
        Err(_) => {
            procs.kill_tree(tree);
            let _ = child.kill().await;
            err_text.abort();
            let _ = std::fs::remove_file(&out);
            return Err(format!(
                "converter {:?} did not finish within {}; it and its children were killed",
                c.command, c.timeout
            ));
        }
    };
    // The converter is done: anything it left running in its tree goes with it.
    procs.kill_tree(tree);
    // Its stderr ends at once, unless something outside the tree (no cgroup here, a setsid
    // grandchild) still holds it: then it is not waited for.
    let stderr_text = match tokio::time::timeout(STDERR_GRACE, &mut err_text).await {
        Ok(r) => r.unwrap_or_default(),
        Err(_) => {
            err_text.abort();
            String::new()
        }
    };
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

/// What happens to an input once its converted item is safely queued.
pub(crate) fn post_action(pipe: &Pipe, input: &ItemName) -> std::io::Result<()> {
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
