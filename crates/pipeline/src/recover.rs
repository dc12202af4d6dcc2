//! Reading the work folder back after a stop or a crash, and pruning old done items.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use majordomo_platform::fsops;

use crate::convert::post_action;
use crate::item::{ItemName, State};
use crate::pipe::Pipe;

/// What the work folder held, by what must happen next.
pub(crate) struct Recovered {
    /// Queued items, to upload now.
    pub ready: Vec<ItemName>,
    /// Items whose last upload failed, to retry after a backoff.
    pub delayed: Vec<ItemName>,
    /// Claimed inputs not converted yet.
    pub inputs: Vec<ItemName>,
}

/// Reads the work folder back. The instance lock guarantees no other process owns it, so
/// whatever is `processing` was left by a previous run: back to `queued`. Nothing here looks at
/// modification times.
pub(crate) fn recover(pipe: &Pipe) -> Result<Recovered, String> {
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
            // Folders (the default error and dead folders live here) are left; a file that is
            // not an item is moved aside so it neither sits there unseen nor is taken for one.
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                move_aside(pipe, &entry.path());
            }
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
                // Folders, never a work-folder file name (the parser refuses them).
                State::Dead | State::Failed => {}
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
pub(crate) fn prune_done(pipe: &Pipe, mut done: Vec<ItemName>) {
    if done.len() <= pipe.cfg.keep_done {
        return;
    }
    done.sort_by_key(|d| d.id);
    let extra = done.len() - pipe.cfg.keep_done;
    for d in done.into_iter().take(extra) {
        let _ = std::fs::remove_file(pipe.path(&d));
    }
}

/// A file in the work folder that is not an item goes to the error folder with its reason.
fn move_aside(pipe: &Pipe, path: &std::path::Path) {
    let reason = format!(
        "found in the work folder {} at start-up, and it is not an item of this pipeline (item \
         names are ULID.aN.NAME.STATE); nothing the pipeline did put it there. Drop it into a \
         watch folder to process it, or delete it",
        pipe.work.display()
    );
    crate::convert::refuse_to_error_dir(pipe, path, &reason, "");
}
