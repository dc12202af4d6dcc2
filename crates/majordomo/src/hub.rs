//! The internal event hub.
//!
//! Subsystems never call each other: they publish typed [`Event`]s here, and whoever cares
//! (logs, counters, the bus's `$sys.*` topics, alerts, the dashboard) subscribes. [`Hub::emit`] is
//! the one place where an event is logged and counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

/// Everything that happens inside the daemon that someone else may want to know.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    DaemonStarted {
        instance: String,
        pid: u32,
    },
    DaemonStopping {
        reason: String,
    },
    ConfigReloaded {
        generation: u64,
        trigger: String,
        restarted: Vec<String>,
    },
    ConfigRejected {
        trigger: String,
        errors: Vec<String>,
    },
    SubsystemState {
        name: String,
        state: String,
        detail: Option<String>,
    },
    /// A bus endpoint registered (the bus emits it; the supervisor's `ready = "bus"` waits for it).
    EndpointUp {
        id: String,
    },
    /// A bus endpoint went away (disconnect, take-over).
    EndpointDown {
        id: String,
        reason: String,
    },
    /// A supervised program changed state (the supervisor emits it on every transition; the
    /// monitor, alerts and the bus's system topics read it).
    ProgramState {
        name: String,
        /// `starting`, `running`, `ready`, `backoff`, `stopping`, `exited`, `stopped`, `failed`,
        /// `waiting` (for `depends_on`); see docs/supervisor.md.
        state: String,
        pid: Option<u32>,
        exit_code: Option<i32>,
        signal: Option<i32>,
        restarts: u64,
        detail: Option<String>,
    },
    /// A health-check alert changed state (pending, firing, resolved, cancelled).
    Alert(crate::monitor::Alert),
    /// A notifier delivered, failed or suppressed a notification.
    Notification(crate::monitor::notify::Delivery),
    /// A pipeline queued a converted item for upload (`id` is its idempotency key).
    FileQueued {
        pipeline: String,
        id: String,
        file: String,
    },
    /// An item was uploaded; `age_ms` is from its claim to now.
    FileUploaded {
        pipeline: String,
        id: String,
        file: String,
        attempts: u32,
        upload_ms: u64,
        age_ms: u64,
    },
    /// An upload failed transiently and will be retried after `delay_ms`.
    UploadRetry {
        pipeline: String,
        id: String,
        file: String,
        attempt: u32,
        reason: String,
        delay_ms: u64,
    },
    /// The server refused an item for good: it is in the dead-letter folder with its reason.
    FileDeadLettered {
        pipeline: String,
        id: String,
        file: String,
        reason: String,
    },
    /// A conversion failed: the input is in the error folder with its reason.
    FileFailed {
        pipeline: String,
        file: String,
        reason: String,
    },
    /// A full scan of a pipeline's watch folders (start-up, watcher overflow/error, periodic, poll).
    PipelineRescan {
        pipeline: String,
        reason: String,
        found: u64,
    },
    /// A pipeline stopped (or resumed) taking files: high-water mark or free-disk floor.
    PipelineBackpressure {
        pipeline: String,
        paused: bool,
        reason: String,
    },
}

impl Event {
    /// A stable name, used for counters and as the last part of the bus topic.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::DaemonStarted { .. } => "daemon.started",
            Event::DaemonStopping { .. } => "daemon.stopping",
            Event::ConfigReloaded { .. } => "config.reloaded",
            Event::ConfigRejected { .. } => "config.rejected",
            Event::SubsystemState { .. } => "subsystem.state",
            Event::EndpointUp { .. } => "endpoint.up",
            Event::EndpointDown { .. } => "endpoint.down",
            Event::ProgramState { .. } => "program.state",
            Event::Alert(a) => match a.state {
                crate::monitor::AlertState::Pending => "alert.pending",
                crate::monitor::AlertState::Firing => "alert.firing",
                crate::monitor::AlertState::Resolved => "alert.resolved",
                crate::monitor::AlertState::Cancelled => "alert.cancelled",
            },
            Event::Notification(d) => match d.outcome {
                crate::monitor::notify::Outcome::Delivered => "notify.delivered",
                crate::monitor::notify::Outcome::Failed => "notify.failed",
                crate::monitor::notify::Outcome::Suppressed => "notify.suppressed",
            },
            Event::FileQueued { .. } => "file.queued",
            Event::FileUploaded { .. } => "file.uploaded",
            Event::UploadRetry { .. } => "file.retry",
            Event::FileDeadLettered { .. } => "file.dead_lettered",
            Event::FileFailed { .. } => "file.failed",
            Event::PipelineRescan { .. } => "pipeline.rescan",
            Event::PipelineBackpressure { .. } => "pipeline.backpressure",
        }
    }

    fn log(&self) {
        match self {
            Event::DaemonStarted { instance, pid } => {
                tracing::info!(%instance, pid, "daemon started")
            }
            Event::DaemonStopping { reason } => tracing::info!(%reason, "daemon stopping"),
            Event::ConfigReloaded {
                generation,
                trigger,
                restarted,
            } => tracing::info!(generation, %trigger, ?restarted, "config reloaded"),
            Event::ConfigRejected { trigger, errors } => {
                tracing::error!(%trigger, problems = errors.len(), "new config refused; the running config stays in force");
                for e in errors {
                    tracing::error!("  {e}");
                }
            }
            Event::SubsystemState {
                name,
                state,
                detail,
            } => match state.as_str() {
                "failed" => {
                    tracing::error!(subsystem = %name, detail = detail.as_deref().unwrap_or(""), "subsystem failed")
                }
                _ => tracing::debug!(subsystem = %name, %state, "subsystem state"),
            },
            Event::EndpointUp { id } => tracing::debug!(endpoint = %id, "endpoint up"),
            Event::EndpointDown { id, reason } => {
                tracing::debug!(endpoint = %id, %reason, "endpoint down")
            }
            Event::ProgramState {
                name,
                state,
                pid,
                exit_code,
                signal,
                restarts,
                detail,
            } => match state.as_str() {
                "failed" => {
                    tracing::error!(program = %name, ?exit_code, ?signal, restarts, detail = detail.as_deref().unwrap_or(""), "program failed")
                }
                "exited" | "backoff" => {
                    tracing::warn!(program = %name, ?pid, ?exit_code, ?signal, restarts, "program {state}")
                }
                _ => tracing::info!(program = %name, ?pid, restarts, "program {state}"),
            },
            Event::Alert(a) => match (a.state, a.severity) {
                (crate::monitor::AlertState::Firing, crate::monitor::Severity::Critical) => {
                    tracing::error!(alert = %a.id, severity = a.severity.as_str(), "alert firing: {}", a.summary)
                }
                (crate::monitor::AlertState::Firing, _) => {
                    tracing::warn!(alert = %a.id, severity = a.severity.as_str(), "alert firing: {}", a.summary)
                }
                (state, _) => {
                    tracing::info!(alert = %a.id, severity = a.severity.as_str(), "alert {}: {}", state.as_str(), a.summary)
                }
            },
            Event::Notification(d) => match d.outcome {
                crate::monitor::notify::Outcome::Failed => {
                    tracing::warn!(notifier = %d.notifier, alert = %d.alert, attempts = d.attempts.len(), reason = d.reason.as_deref().unwrap_or(""), "notification failed")
                }
                _ => {
                    tracing::debug!(notifier = %d.notifier, alert = %d.alert, outcome = ?d.outcome, "notification")
                }
            },
            Event::FileQueued { pipeline, id, file } => {
                tracing::debug!(%pipeline, %id, %file, "file queued")
            }
            Event::FileUploaded {
                pipeline,
                id,
                file,
                attempts,
                upload_ms,
                age_ms,
            } => {
                tracing::debug!(%pipeline, %id, %file, attempts, upload_ms, age_ms, "file uploaded")
            }
            Event::UploadRetry {
                pipeline,
                id,
                file,
                attempt,
                reason,
                delay_ms,
            } => {
                tracing::warn!(%pipeline, %id, %file, attempt, delay_ms, "upload failed, will retry: {reason}")
            }
            Event::FileDeadLettered {
                pipeline,
                id,
                file,
                reason,
            } => tracing::error!(%pipeline, %id, %file, "dead-lettered: {reason}"),
            Event::FileFailed {
                pipeline,
                file,
                reason,
            } => tracing::error!(%pipeline, %file, "conversion failed: {reason}"),
            Event::PipelineRescan {
                pipeline,
                reason,
                found,
            } => tracing::debug!(%pipeline, %reason, found, "rescan"),
            Event::PipelineBackpressure {
                pipeline,
                paused,
                reason,
            } => {
                if *paused {
                    tracing::warn!(%pipeline, "paused taking files: {reason}")
                } else {
                    tracing::info!(%pipeline, "taking files again: {reason}")
                }
            }
        }
    }
}

/// Cheap to clone; every clone publishes to the same subscribers.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<Event>>,
    counts: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    /// The last `ProgramState` of each program, for subscribers that start after it was sent.
    programs: Arc<Mutex<BTreeMap<String, Arc<Event>>>>,
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
        }
    }

    /// Logs, counts and publishes an event. Never blocks: a subscriber that lags loses the
    /// oldest events and is told how many (tokio's broadcast semantics).
    pub fn emit(&self, event: Event) {
        event.log();
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry(event.kind()).or_default() += 1;
        }
        let event = Arc::new(event);
        if let Event::ProgramState { name, .. } = &*event
            && let Ok(mut p) = self.programs.lock()
        {
            p.insert(name.clone(), event.clone());
        }
        let _ = self.tx.send(event);
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
