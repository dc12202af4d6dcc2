//! The `queue.*` socket commands: list, count, retry and purge items, over the work, dead-letter
//! and error folders. Their argument and reply types are the contract's
//! (`majordomo_proto::pipeline`); handlers run off the async threads (they read folders).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use majordomo_core::Ctx;
use majordomo_platform::fsops;
use majordomo_proto::pipeline::{
    ItemCounts, ItemState, PipelineStats, Purged, QueueItem, QueueList, QueueLs, QueueLsArgs,
    QueuePurge, QueuePurgeArgs, QueueRetry, QueueRetryArgs, QueueStats, QueueStatsArgs,
    QueueStatsCmd, Requeued, SinceStart,
};
use majordomo_proto::{ErrorBody, ErrorCode};

use crate::config::PipelineSection;
use crate::item::{self, ItemName, State};
use crate::pipe::{Pipe, Pipes};
use crate::schedule::Sched;

/// Most rows `queue.ls` returns when the request sets no `limit`.
const DEFAULT_LIMIT: usize = 1000;

/// Registers `queue.ls`, `queue.stats`, `queue.retry` and `queue.purge`.
pub(crate) fn register(ctx: &Ctx<PipelineSection>, pipes: Pipes) {
    let p = pipes.clone();
    ctx.handle::<QueueLs, _, _>(move |a: QueueLsArgs| {
        blocking(p.clone(), "queue.ls", move |pipes| ls(pipes, a))
    });
    let p = pipes.clone();
    ctx.handle::<QueueStatsCmd, _, _>(move |a: QueueStatsArgs| {
        blocking(p.clone(), "queue.stats", move |pipes| {
            let pipelines = select(pipes, a.pipeline.as_deref())?
                .into_iter()
                .map(|p| stats_of(p))
                .collect();
            Ok(QueueStats { pipelines })
        })
    });
    let p = pipes.clone();
    ctx.handle::<QueueRetry, _, _>(move |a: QueueRetryArgs| {
        blocking(p.clone(), "queue.retry", move |pipes| {
            let mut requeued = 0;
            for p in select(pipes, a.pipeline.as_deref())? {
                requeued += retry(p, &a.ids).map_err(bad_request)?;
            }
            Ok(Requeued { requeued })
        })
    });
    ctx.handle::<QueuePurge, _, _>(move |a: QueuePurgeArgs| {
        blocking(pipes.clone(), "queue.purge", move |pipes| {
            let sel = select(pipes, a.pipeline.as_deref())?;
            let mut purged = 0;
            for p in sel {
                purged += purge(p, a.state).map_err(bad_request)?;
            }
            Ok(Purged { purged })
        })
    });
}

/// Runs `f` on the blocking pool; a panic in it is an internal error naming the command.
async fn blocking<T: Send + 'static>(
    pipes: Pipes,
    cmd: &'static str,
    f: impl FnOnce(&Pipes) -> Result<T, ErrorBody> + Send + 'static,
) -> Result<T, ErrorBody> {
    tokio::task::spawn_blocking(move || f(&pipes))
        .await
        .unwrap_or_else(|e| {
            Err(ErrorBody::new(
                ErrorCode::Internal,
                format!("{cmd} failed: {e}"),
            ))
        })
}

fn bad_request(message: String) -> ErrorBody {
    ErrorBody::new(ErrorCode::BadRequest, message)
}

/// The pipelines a request names: one, or all when it names none.
fn select<'a>(pipes: &'a Pipes, name: Option<&str>) -> Result<Vec<&'a Arc<Pipe>>, ErrorBody> {
    match name {
        None => Ok(pipes.values().collect()),
        Some(name) => pipes.get(name).map(|p| vec![p]).ok_or_else(|| {
            bad_request(format!(
                "no pipeline named {name:?}; pipelines: {}",
                pipes.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        }),
    }
}

fn ls(pipes: &Pipes, a: QueueLsArgs) -> Result<QueueList, ErrorBody> {
    let mut rows: Vec<QueueItem> = select(pipes, a.pipeline.as_deref())?
        .into_iter()
        .flat_map(|p| items_of(p))
        .collect();
    if let Some(s) = a.state {
        rows.retain(|r| r.state == s);
    }
    rows.sort_by(|x, y| x.id.cmp(&y.id));
    let total = rows.len();
    rows.truncate(a.limit.unwrap_or(DEFAULT_LIMIT));
    Ok(QueueList { total, items: rows })
}

/// The names in `dir`, dot-files left out; none when it cannot be read.
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

/// The `reason: ` line of a `.reason` file next to `dir/name`.
fn reason_of(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(format!("{name}.reason")))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("reason: ").map(String::from))
        })
}

/// Items of one pipeline: work folder states, plus the dead-letter and error folders.
fn items_of(pipe: &Pipe) -> Vec<QueueItem> {
    let now = SystemTime::now();
    let mut rows = Vec::new();
    for n in list_dir(&pipe.work) {
        if let Some(it) = ItemName::parse(&n) {
            rows.push(QueueItem {
                pipeline: pipe.cfg.name.clone(),
                id: Some(it.id.to_string()),
                file: it.orig,
                state: it.state,
                attempts: Some(it.attempts),
                age_s: Some(item::age(it.id, now).as_secs()),
                path: pipe.work.join(&n),
                reason: None,
            });
        }
    }
    for n in list_dir(&pipe.dead_dir) {
        if n.ends_with(".reason") {
            continue;
        }
        if let Some(it) = ItemName::parse_stem(&n, State::Dead) {
            rows.push(QueueItem {
                pipeline: pipe.cfg.name.clone(),
                id: Some(it.id.to_string()),
                file: it.orig,
                state: ItemState::Dead,
                attempts: Some(it.attempts),
                age_s: Some(item::age(it.id, now).as_secs()),
                path: pipe.dead_dir.join(&n),
                reason: reason_of(&pipe.dead_dir, &n),
            });
        }
    }
    for n in list_dir(&pipe.error_dir) {
        if n.ends_with(".reason") {
            continue;
        }
        rows.push(QueueItem {
            pipeline: pipe.cfg.name.clone(),
            id: None,
            reason: reason_of(&pipe.error_dir, &n),
            path: pipe.error_dir.join(&n),
            file: n,
            state: ItemState::Failed,
            attempts: None,
            age_s: None,
        });
    }
    rows
}

fn stats_of(pipe: &Pipe) -> PipelineStats {
    let mut counts = ItemCounts::default();
    let mut oldest: Option<ulid::Ulid> = None;
    for n in list_dir(&pipe.work) {
        if let Some(it) = ItemName::parse(&n) {
            if let Some(c) = counts.get_mut(it.state) {
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
    let files = |dir: &Path| {
        list_dir(dir)
            .iter()
            .filter(|n| !n.ends_with(".reason"))
            .count() as u64
    };
    counts.dead = files(&pipe.dead_dir);
    counts.failed = files(&pipe.error_dir);
    let m = &pipe.metrics;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let avg = |total: u64, n: u64| if n == 0 { 0.0 } else { total as f64 / n as f64 };
    PipelineStats {
        pipeline: pipe.cfg.name.clone(),
        work_dir: pipe.work.clone(),
        counts,
        oldest_pending_age_s: oldest.map(|o| item::age(o, SystemTime::now()).as_secs()),
        paused: pipe.paused.lock().ok().and_then(|p| p.clone()),
        uploads_reach_server: match m.last_upload.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        },
        since_start: SinceStart {
            claimed: get(&m.claimed),
            converted: get(&m.converted),
            convert_failed: get(&m.convert_failed),
            convert_ms_avg: avg(get(&m.convert_ms_total), get(&m.converted)),
            uploaded: get(&m.uploaded),
            upload_ms_avg: avg(get(&m.upload_ms_total), get(&m.uploaded)),
            upload_ms_max: get(&m.upload_ms_max),
            retries: get(&m.retries),
            dead_letters: get(&m.dead_letters),
            rescans: get(&m.rescans),
        },
    }
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
    fsops::sync_dir(&pipe.work)
        .map_err(|e| format!("cannot fsync {}: {e}", pipe.work.display()))?;
    let _ = pipe.sched.send(Sched::RetryNow);
    Ok(n)
}

/// `queue purge --state done|kept|dead|failed`.
fn purge(pipe: &Pipe, state: ItemState) -> Result<u64, String> {
    let mut n = 0;
    match state {
        ItemState::Done | ItemState::Kept => {
            for name in list_dir(&pipe.work) {
                if ItemName::parse(&name).is_some_and(|it| it.state == state) {
                    std::fs::remove_file(pipe.work.join(&name))
                        .map_err(|e| format!("{name}: {e}"))?;
                    n += 1;
                }
            }
        }
        ItemState::Dead | ItemState::Failed => {
            let dir = if state == ItemState::Dead {
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
                "cannot purge {:?}: only done, kept, dead and failed items can be purged (queued ones are still owed to the server)",
                other.as_str()
            ));
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use majordomo_core::Commands;
    use majordomo_core::hub::Hub;
    use serde_json::{Value, json};

    use crate::config::{PipelineConfig, UploaderConfig};
    use crate::store::Syncer;
    use crate::upload::Uploader;

    /// One pipeline over temporary folders, with an uploader that is never called.
    fn pipes(dir: &Path) -> Pipes {
        let up = UploaderConfig {
            name: "up".into(),
            url: "http://127.0.0.1:9/".into(),
            ..UploaderConfig::default()
        };
        let cfg = PipelineConfig {
            name: "p".into(),
            watch: vec![dir.join("in")],
            upload: "up".into(),
            ..PipelineConfig::default()
        };
        let uploaders = BTreeMap::from([("up".to_string(), Arc::new(Uploader::new(&up).unwrap()))]);
        let syncer = Syncer::spawn(&tokio_util::task::TaskTracker::new());
        let (pipe, _rx) =
            crate::pipe::open(&cfg, &dir.join("state"), &uploaders, &syncer, &Hub::new()).unwrap();
        Arc::new(BTreeMap::from([("p".to_string(), pipe)]))
    }

    fn args(v: Value) -> majordomo_core::commands::Args {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn lists_counts_and_purges_by_typed_state() {
        let dir = tempfile::tempdir().unwrap();
        let pipes = pipes(dir.path());
        let pipe = &pipes["p"];
        let queued = ItemName::new("a.csv", State::Queued);
        let done = ItemName::new("b.csv", State::Done);
        std::fs::write(pipe.path(&queued), "a").unwrap();
        std::fs::write(pipe.path(&done), "b").unwrap();
        std::fs::write(pipe.error_dir.join("c.csv"), "c").unwrap();
        std::fs::write(pipe.error_dir.join("c.csv.reason"), "reason: boom\n").unwrap();

        let all = ls(&pipes, QueueLsArgs::default()).unwrap();
        assert_eq!(all.total, 3);
        let failed = &all.items[0];
        assert_eq!(
            (failed.state, failed.id.as_deref()),
            (ItemState::Failed, None)
        );
        assert_eq!(failed.reason.as_deref(), Some("boom"));
        let only_done = ls(
            &pipes,
            QueueLsArgs {
                state: Some(ItemState::Done),
                ..QueueLsArgs::default()
            },
        )
        .unwrap();
        assert_eq!(only_done.total, 1);
        assert_eq!(only_done.items[0].id, Some(done.id.to_string()));

        let stats = stats_of(pipe);
        assert_eq!(
            (stats.counts.queued, stats.counts.done, stats.counts.failed),
            (1, 1, 1)
        );
        assert!(stats.oldest_pending_age_s.is_some());

        let refused = purge(pipe, ItemState::Queued).unwrap_err();
        assert!(refused.contains("still owed to the server"), "{refused}");
        assert_eq!(purge(pipe, ItemState::Done).unwrap(), 1);
        assert_eq!(purge(pipe, ItemState::Failed).unwrap(), 1);
        assert_eq!(ls(&pipes, QueueLsArgs::default()).unwrap().total, 1);
        let unknown = ls(
            &pipes,
            QueueLsArgs {
                pipeline: Some("nope".into()),
                ..QueueLsArgs::default()
            },
        )
        .unwrap_err();
        assert_eq!(unknown.code, ErrorCode::BadRequest);
    }

    /// What `ctx.handle` does with bad arguments: `bad_request`, naming the field.
    #[tokio::test]
    async fn bad_arguments_are_bad_requests_naming_the_field() {
        let commands = Commands::default();
        commands.register_typed::<QueueLs, _, _>("pipeline", |_| async {
            Ok(QueueList {
                total: 0,
                items: vec![],
            })
        });
        commands
            .register_typed::<QueuePurge, _, _>("pipeline", |_| async { Ok(Purged { purged: 0 }) });
        for (cmd, a, field) in [
            ("queue.ls", json!({"state": "bogus"}), "`state`"),
            ("queue.ls", json!({"limit": "ten"}), "`limit`"),
            ("queue.ls", json!({"pipeline": 3}), "`pipeline`"),
            ("queue.purge", json!({}), "`state`"),
            ("queue.ls", json!({"nope": 1}), "`nope`"),
        ] {
            let e = commands.dispatch(cmd, args(a.clone())).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{cmd} {a}");
            assert!(e.message.contains(field), "{cmd} {a}: {}", e.message);
        }
        let ok = commands
            .dispatch("queue.ls", args(json!({"state": "dead", "pipeline": null})))
            .await
            .unwrap();
        assert_eq!(ok, json!({"total": 0, "items": []}));
    }
}
