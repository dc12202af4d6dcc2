//! The catch-up shared by the daemon's start-up and `majordomo check` (the OS backup task):
//! for one job, a run found interrupted is retried once, and a `persistent` job's latest missed
//! occurrence runs once. The job's lock and its durable record decide, so the daemon and the
//! backup task never both run an occurrence, even when they start at the same moment.

use std::path::Path;

use jiff::Timestamp;
use majordomo_proto::Event;
use majordomo_proto::scheduler::{Run, Trigger};
use tokio_util::sync::CancellationToken;

use crate::config::JobConfig;
use crate::plan::{CatchUp, catch_up};
use crate::record;
use crate::runner::{self, Publisher};

/// Catches up one job (see the module); the run, if one happened.
#[allow(clippy::too_many_arguments)]
pub async fn due_once(
    state_dir: &Path,
    job: &JobConfig,
    by: &str,
    trigger: Trigger,
    cap: usize,
    publish: Option<&Publisher>,
    kill: &CancellationToken,
    emit: &(dyn Fn(Event) + Send + Sync),
) -> Option<Run> {
    let plan = job.plan().ok()?;
    let mut held = match record::hold(state_dir, &job.name, true) {
        Ok(Some(h)) => h,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(job = %job.name, error = %e, "cannot claim the job");
            return None;
        }
    };
    let retry = held.record.take_interrupted(cap);
    let paused = crate::subsystem::is_paused(state_dir, &job.name);
    let (planned, trigger, attempt) = match (retry, job.persistent && !paused) {
        (Some(r), true) => (
            Timestamp::from_millisecond(r.planned_ms).ok()?,
            Trigger::Retry,
            2,
        ),
        (_, persistent) => match catch_up(&plan, held.record.last_planned_ms, Timestamp::now()) {
            CatchUp::Run(t) if persistent => (t, trigger, 1),
            CatchUp::Run(t) | CatchUp::Baseline(t) => {
                // Not run (first sight, or not persistent): scheduling starts after it.
                held.record.last_planned_ms = Some(t.as_millisecond());
                if let Err(e) = held.save() {
                    tracing::error!(job = %job.name, error = %e, "cannot write the job record");
                }
                return None;
            }
            CatchUp::Nothing => {
                let _ = held.save();
                return None;
            }
        },
    };
    let run = runner::new_run(planned, trigger, by, attempt);
    if let Err(e) = held.start(&run) {
        tracing::error!(job = %job.name, error = %e, "cannot record the claim; not running");
        return None;
    }
    tracing::info!(job = %job.name, planned = %run.planned, trigger = ?trigger, "job started (catch-up)");
    emit(Event::JobStarted {
        job: job.name.clone(),
        run: run.clone(),
    });
    let done = runner::execute(job, state_dir, Some(held), run, kill, publish, cap).await;
    emit(Event::JobFinished {
        job: job.name.clone(),
        run: done.clone(),
    });
    Some(done)
}

/// `majordomo check` while the daemon is down: every due persistent job, once. Returns one line
/// per job that ran. Blocks; builds its own runtime.
pub fn run_due(state_dir: &Path, jobs: &[crate::config::SharedJob], cap: usize) -> Vec<String> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return vec!["cannot start the async runtime for the jobs".into()];
    };
    let by = runner::by_label("check");
    let kill = CancellationToken::new();
    rt.block_on(async {
        let mut lines = vec![];
        for j in jobs.iter().filter(|j| j.persistent) {
            if let Some(r) = due_once(
                state_dir,
                j,
                &by,
                Trigger::Backup,
                cap,
                None,
                &kill,
                &|_| {},
            )
            .await
            {
                lines.push(format!(
                    "job {}: ran the occurrence of {} ({:?}{})",
                    j.name,
                    r.planned,
                    r.outcome,
                    r.error.map(|e| format!(": {e}")).unwrap_or_default()
                ));
            }
        }
        lines
    })
}
