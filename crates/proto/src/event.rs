//! The daemon's internal events: what the hub carries, what `$sys.<kind>` topics publish and what
//! the SSE stream will send. Each subsystem owns (emits and logs) the events of its own kind.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::monitor::{Alert, AlertState, Delivery, Outcome};
use crate::scheduler::{Notice, Run};
use crate::supervisor::ProgramState;

/// Everything that happens inside the daemon that someone else may want to know. On the bus
/// each is published on `$sys.<kind>` (see [`Event::kind`]) with this object as `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
        /// `starting`, `running`, `stopping`, `stopped` or `failed`.
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
    /// A supervised program changed state (emitted on every transition).
    ProgramState {
        name: String,
        state: ProgramState,
        pid: Option<u32>,
        exit_code: Option<i32>,
        signal: Option<i32>,
        restarts: u64,
        detail: Option<String>,
    },
    /// A health-check alert changed state (pending, firing, resolved, cancelled).
    Alert(Alert),
    /// A notifier delivered, failed or suppressed a notification.
    Notification(Delivery),
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
    /// The NATS bridge connected (or reconnected) to a server.
    NatsConnected {
        server: String,
    },
    /// The NATS bridge lost its server; exports wait in the bounded buffer meanwhile.
    /// `dropped` is how many exports the full buffer dropped since start.
    NatsDisconnected {
        reason: String,
        dropped: u64,
    },
    /// A job's run started (`run.outcome` is empty).
    JobStarted {
        job: String,
        run: Run,
    },
    /// A job's run ended: `run.outcome` says how.
    JobFinished {
        job: String,
        run: Run,
    },
    /// A notification that is not an alert (`notify send`, a job's `notify_on`): the notifiers
    /// deliver it.
    Notice(Notice),
}

impl Event {
    /// Every kind, in declaration order: the `$sys.<kind>` topics and the event counters.
    pub const KINDS: &'static [&'static str] = &[
        "daemon.started",
        "daemon.stopping",
        "config.reloaded",
        "config.rejected",
        "subsystem.state",
        "endpoint.up",
        "endpoint.down",
        "program.state",
        "alert.pending",
        "alert.firing",
        "alert.resolved",
        "alert.cancelled",
        "notify.delivered",
        "notify.failed",
        "notify.suppressed",
        "file.queued",
        "file.uploaded",
        "file.retry",
        "file.dead_lettered",
        "file.failed",
        "pipeline.rescan",
        "pipeline.backpressure",
        "nats.connected",
        "nats.disconnected",
        "job.started",
        "job.finished",
        "notice",
    ];

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
                AlertState::Pending => "alert.pending",
                AlertState::Firing => "alert.firing",
                AlertState::Resolved => "alert.resolved",
                AlertState::Cancelled => "alert.cancelled",
            },
            Event::Notification(d) => match d.outcome {
                Outcome::Delivered => "notify.delivered",
                Outcome::Failed => "notify.failed",
                Outcome::Suppressed => "notify.suppressed",
            },
            Event::FileQueued { .. } => "file.queued",
            Event::FileUploaded { .. } => "file.uploaded",
            Event::UploadRetry { .. } => "file.retry",
            Event::FileDeadLettered { .. } => "file.dead_lettered",
            Event::FileFailed { .. } => "file.failed",
            Event::PipelineRescan { .. } => "pipeline.rescan",
            Event::PipelineBackpressure { .. } => "pipeline.backpressure",
            Event::NatsConnected { .. } => "nats.connected",
            Event::NatsDisconnected { .. } => "nats.disconnected",
            Event::JobStarted { .. } => "job.started",
            Event::JobFinished { .. } => "job.finished",
            Event::Notice(_) => "notice",
        }
    }
}
