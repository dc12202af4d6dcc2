//! The hub: one broadcast channel of typed internal events ([`Event`], defined in the contract).
//!
//! Subsystems emit what happened; anyone interested (the bus's `$sys.*` topics, alerts, the
//! dashboard) subscribes. The hub counts every event by kind and keeps each program's last
//! state and each job's last (and last successful) run for late subscribers. It also holds the
//! [`Gauges`](crate::gauges::Gauges) registry, the subsystems' published numeric values. It does not log: the subsystem that emits an event logs it, with
//! the words that fit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub use majordomo_proto::Event;
use tokio::sync::broadcast;

/// Cheap to clone; every clone publishes to the same subscribers.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<Event>>,
    counts: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    /// The last `ProgramState` of each program, for subscribers that start after it was sent.
    programs: Arc<Mutex<BTreeMap<String, Arc<Event>>>>,
    /// Per job: its last `JobFinished`, and its last successful one.
    jobs: Arc<Mutex<BTreeMap<String, JobRuns>>>,
    gauges: crate::gauges::Gauges,
}

/// A job's last finished run and its last successful run, as the hub saw them.
#[derive(Debug, Clone, Default)]
pub struct JobRuns {
    pub last: Option<Arc<Event>>,
    pub last_ok: Option<Arc<Event>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            tx,
            counts: Arc::default(),
            programs: Arc::default(),
            jobs: Arc::default(),
            gauges: Default::default(),
        }
    }

    /// Counts and publishes an event. Never blocks: a subscriber that lags loses the oldest
    /// events and is told how many (tokio's broadcast semantics).
    pub fn emit(&self, event: Event) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry(event.kind()).or_default() += 1;
        }
        let event = Arc::new(event);
        if let Event::ProgramState { name, .. } = &*event
            && let Ok(mut p) = self.programs.lock()
        {
            // Under the same lock as the send, so a subscriber that reads `program_states`
            // after subscribing sees every state either there or on its receiver.
            p.insert(name.clone(), event.clone());
            let _ = self.tx.send(event);
            return;
        }
        if let Event::JobFinished { job, run } = &*event
            && let Ok(mut j) = self.jobs.lock()
        {
            // Like program states: under the lock of the send.
            // Looked up before inserting: a job's name is copied once, not at every run.
            let e = match j.get_mut(job.as_str()) {
                Some(e) => e,
                None => j.entry(job.clone()).or_default(),
            };
            e.last = Some(event.clone());
            if run.outcome == Some(majordomo_proto::scheduler::RunOutcome::Ok) {
                e.last_ok = Some(event.clone());
            }
            let _ = self.tx.send(event);
            return;
        }
        let _ = self.tx.send(event);
    }

    /// Every job's last finished and last successful run seen so far (subscribe first, then
    /// read this, as with [`Hub::program_states`]).
    pub fn job_runs(&self) -> BTreeMap<String, JobRuns> {
        self.jobs.lock().map(|j| j.clone()).unwrap_or_default()
    }

    /// The gauges every subsystem may publish into and read (see [`crate::gauges`]).
    pub fn gauges(&self) -> &crate::gauges::Gauges {
        &self.gauges
    }

    /// The last `ProgramState` event of every program seen so far. A subscriber that needs
    /// program states subscribes first, then reads this, so nothing falls between the two.
    pub fn program_states(&self) -> Vec<Arc<Event>> {
        self.programs
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// How many events of each kind were emitted since start.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .map(|c| c.iter().map(|(k, v)| (k.to_string(), *v)).collect())
            .unwrap_or_default()
    }
}
