//! The upload stage: sends ready items through the pipeline's uploader, at most its
//! concurrency at once, holds failed ones until their backoff is over, and dead-letters those
//! the server refuses for good.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use majordomo_core::backoff::full_jitter;
use majordomo_core::hub::Event;
use majordomo_platform::fsops;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::PipelineConfig;
use crate::item::{self, ItemName, State};
use crate::pipe::Pipe;
use crate::store;
use crate::upload::Attempt;

/// What the upload scheduler is told.
pub(crate) enum Sched {
    /// Upload this item as soon as a slot is free.
    Ready(ItemName),
    /// Upload this item once its backoff is over.
    At(Instant, ItemName),
    /// Retry every waiting item now (`queue retry`).
    RetryNow,
}

/// The delay before retry number `attempt` (1 for the first): capped exponential backoff with
/// full jitter, from the pipeline's `retry_base` and `retry_max`.
pub(crate) fn retry_delay(cfg: &PipelineConfig, attempt: u32) -> Duration {
    full_jitter(cfg.retry_base.get(), cfg.retry_max.get(), attempt)
}

/// What an upload task reports back to the scheduler.
enum Outcome {
    Finished,
    RetryAt(Instant, ItemName),
}

/// The upload stage: sends ready items, at most the uploader's concurrency at once, and holds
/// failed ones until their backoff is over.
pub(crate) async fn run(
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
    let reached = if matches!(attempt, Attempt::Transient(_)) {
        2
    } else {
        1
    };
    pipe.metrics.last_upload.store(reached, Ordering::Relaxed);
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
            let age_ms = item::age(item.id, SystemTime::now()).as_millis() as u64;
            pipe.emit(Event::FileUploaded {
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
            let delay = retry_delay(&pipe.cfg, attempts);
            pipe.metrics.retries.fetch_add(1, Ordering::Relaxed);
            pipe.emit(Event::UploadRetry {
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
    pipe.emit(Event::FileDeadLettered {
        pipeline: pipe.cfg.name.clone(),
        id: item.id.to_string(),
        file: item.orig.clone(),
        reason: reason.to_string(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use majordomo_core::Dur;

    #[test]
    fn retry_delays_are_capped_and_jittered() {
        let cfg = PipelineConfig {
            retry_base: Dur::secs(1),
            retry_max: Dur::secs(1800),
            ..PipelineConfig::default()
        };
        for a in 1..100 {
            let d = retry_delay(&cfg, a);
            assert!(d <= cfg.retry_max.get());
            assert!(d <= Duration::from_secs(1) * 2u32.pow((a - 1).min(20)));
        }
    }
}
