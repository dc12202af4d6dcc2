//! The durable run record of one job, `<state>/jobs/<name>.json`: the last occurrence claimed,
//! whether it is paused, the run in progress and a bounded history. With the job's named lock
//! (`job.<name>`) it decides who runs an occurrence: whoever holds the lock reads the record,
//! and runs the occurrence only if it is newer than the last one claimed, writing the claim
//! (fsync'd for `persistent` jobs) before the run starts. A run in progress found by the next
//! holder of the lock was interrupted (its holder died, or the lock would still be held): it is
//! recorded as such and retried once.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use majordomo_proto::scheduler::{Run, RunOutcome, Trigger};
use serde::{Deserialize, Serialize};

use crate::locks::{self, NamedLock};
use crate::store::write_atomic;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobRecord {
    /// The last occurrence claimed (or the baseline set when the job was first seen), ms.
    #[serde(default)]
    pub last_planned_ms: Option<i64>,
    #[serde(default)]
    pub paused: bool,
    /// The run in progress: found here by someone else, it was interrupted.
    #[serde(default)]
    pub running: Option<Run>,
    /// Newest last.
    #[serde(default)]
    pub history: VecDeque<Run>,
}

pub fn jobs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("jobs")
}

fn path(state_dir: &Path, name: &str) -> PathBuf {
    jobs_dir(state_dir).join(format!("{name}.json"))
}

pub fn lock_name(job: &str) -> String {
    format!("job.{job}")
}

impl JobRecord {
    /// The job's record (empty when it has none; a damaged one is kept aside and started afresh).
    pub fn load(state_dir: &Path, name: &str) -> JobRecord {
        let p = path(state_dir, name);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(file = %p.display(), error = %e, "damaged job record kept aside as .bad; starting afresh");
                let _ = std::fs::rename(&p, p.with_extension("json.bad"));
                JobRecord::default()
            }),
            Err(_) => JobRecord::default(),
        }
    }

    pub fn save(&self, state_dir: &Path, name: &str, durable: bool) -> io::Result<()> {
        let dir = jobs_dir(state_dir);
        std::fs::create_dir_all(&dir)?;
        let text = serde_json::to_vec(self).map_err(io::Error::other)?;
        write_atomic(&path(state_dir, name), &text, durable)
    }

    pub fn push(&mut self, run: Run, cap: usize) {
        self.history.push_back(run);
        while self.history.len() > cap.max(1) {
            self.history.pop_front();
        }
    }

    /// Moves a run found in progress into the history as interrupted; returns it when it
    /// deserves its one retry.
    pub fn take_interrupted(&mut self, cap: usize) -> Option<Run> {
        let mut r = self.running.take()?;
        r.outcome = Some(RunOutcome::Interrupted);
        r.error = Some(format!(
            "the run by {} was interrupted before it ended (crash or kill); {}",
            r.by,
            if r.attempt < 2 && r.trigger != Trigger::Manual {
                "retried once"
            } else {
                "not retried again"
            }
        ));
        let retry = r.attempt < 2 && r.trigger != Trigger::Manual;
        self.push(r.clone(), cap);
        retry.then_some(r)
    }
}

/// The job's lock and record, held while deciding and running.
pub struct Held {
    _lock: NamedLock,
    pub record: JobRecord,
    state_dir: PathBuf,
    name: String,
    durable: bool,
}

/// Takes the job's lock if free and reads its record; `None` when someone else holds it
/// (another run of the job, here or in `majordomo check`).
pub fn hold(state_dir: &Path, name: &str, durable: bool) -> io::Result<Option<Held>> {
    let Some(lock) = locks::try_acquire(state_dir, &lock_name(name))? else {
        return Ok(None);
    };
    Ok(Some(Held {
        _lock: lock,
        record: JobRecord::load(state_dir, name),
        state_dir: state_dir.to_path_buf(),
        name: name.to_string(),
        durable,
    }))
}

impl Held {
    pub fn save(&self) -> io::Result<()> {
        self.record.save(&self.state_dir, &self.name, self.durable)
    }

    /// Records `run` as started (the claim): durable before the run begins.
    pub fn start(&mut self, run: &Run) -> io::Result<()> {
        if run.trigger != Trigger::Manual {
            let last = self.record.last_planned_ms.unwrap_or(i64::MIN);
            self.record.last_planned_ms = Some(last.max(run.planned_ms));
        }
        self.record.running = Some(run.clone());
        self.save()
    }

    /// Records the end of the run and releases the lock.
    pub fn finish(mut self, run: Run, cap: usize) -> io::Result<JobRecord> {
        self.record.running = None;
        self.record.push(run, cap);
        self.save()?;
        Ok(self.record)
    }
}
