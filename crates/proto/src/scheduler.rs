//! Wire types of the scheduler: `[[job]]` runs, the shared state store, named locks and
//! notifications raised by programs.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::monitor::Severity;

/// Who started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The daemon, at the planned time.
    Schedule,
    /// The daemon at start-up, for an occurrence missed while it was down (`persistent`).
    CatchUp,
    /// `majordomo check` (the OS backup task) while the daemon was down.
    Backup,
    /// `job run` (CLI or socket).
    Manual,
    /// A retry of an occurrence whose run was interrupted (crash, kill -9).
    Retry,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Ok,
    Failed,
    TimedOut,
    /// Killed because the next occurrence started (`overlap = "kill-previous"`) or the daemon stopped.
    Killed,
    /// The process that ran it disappeared (crash) before it could record the end.
    Interrupted,
}

/// One run of a job, as `job history` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Run {
    /// The occurrence it ran for (RFC 3339); a manual run has the time it was asked for.
    pub planned: String,
    /// Milliseconds since the Unix epoch of `planned`: the occurrence's identity.
    pub planned_ms: i64,
    pub started: String,
    /// How late the start was against `planned`, in ms.
    pub late_ms: i64,
    #[serde(default)]
    pub ended: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub outcome: Option<RunOutcome>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The end of its output (stdout and stderr), at most a few KB.
    #[serde(default)]
    pub output_tail: String,
    pub trigger: Trigger,
    /// `daemon` or `check`, and the PID.
    pub by: String,
    /// 1, or 2 for the one retry after an interruption.
    pub attempt: u32,
    #[serde(default)]
    pub error: Option<String>,
}

/// One job as `job ls` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobRow {
    pub name: String,
    /// `cron 0 3 * * * (Europe/Berlin)`, `every 5m`, `at 2026-12-24T18:00`.
    pub schedule: String,
    pub paused: bool,
    pub running: bool,
    /// RFC 3339, none when paused or when an `at` job is past.
    pub next: Option<String>,
    pub last: Option<Run>,
    pub persistent: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobList {
    pub jobs: Vec<JobRow>,
    /// Runs in progress and the daemon-wide cap.
    pub running: usize,
    pub max_concurrent: usize,
}

/// A job by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobArgs {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobHistoryArgs {
    pub name: String,
    /// How many runs, newest first (default 20).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// What `job run` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobRunReply {
    pub name: String,
    /// `started`, or why not (`skipped: already running`).
    pub result: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyArgs {
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateSetArgs {
    pub key: String,
    pub value: Value,
}

/// Compare and swap: `value` replaces the key's value only if the current one equals
/// `expected` (`null` or absent = the key must not exist). A `value` of `null` deletes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateCasArgs {
    pub key: String,
    #[serde(default)]
    pub expected: Option<Value>,
    #[serde(default)]
    pub value: Option<Value>,
}

/// A key's value (`null` when absent) and its version (bumped on each change, 0 when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StateValue {
    pub key: String,
    pub value: Option<Value>,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CasReply {
    /// Whether the swap happened.
    pub swapped: bool,
    /// The value in force afterwards.
    pub current: StateValue,
}

/// Where `state.watch` publishes a key's changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WatchReply {
    /// Subscribe to this bus topic: each change is a message whose data is a `StateValue`.
    pub topic: String,
    pub current: StateValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockArgs {
    pub name: String,
    /// Give up after this many ms (default: do not wait at all).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockReleaseArgs {
    pub name: String,
    /// The token `lock.acquire` answered.
    pub token: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LockReply {
    pub name: String,
    pub acquired: bool,
    /// Pass it to `lock.release`.
    pub token: u64,
}

/// A notification raised by a program (`notify send`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifySendArgs {
    pub title: String,
    #[serde(default)]
    pub body: String,
    #[serde(default = "info")]
    pub severity: Severity,
    /// Only this notifier (default: every notifier that routes it).
    #[serde(default)]
    pub notifier: Option<String>,
}

fn info() -> Severity {
    Severity::Info
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotifySendReply {
    /// The notification's id in `notify log`.
    pub id: String,
}

/// A notification for the notifiers that is not an alert: raised by a program or a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Notice {
    /// Its id in `notify log` (dedup is by id).
    pub id: String,
    /// `program` (notify send) or `job`.
    pub source: String,
    pub title: String,
    pub body: String,
    pub severity: Severity,
    #[serde(default)]
    pub notifier: Option<String>,
    pub at: String,
}

/// The system topic on which the daemon hands desktop notifications to session agents
/// (`majordomo session-agent`); clients cannot publish on `$sys.>`.
pub const SESSION_TOPIC: &str = "$sys.session.notification";

/// A desktop notification for the session agents, from a `type = "session"` notifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionNotification {
    pub title: String,
    #[serde(default)]
    pub body: String,
    #[serde(default = "info")]
    pub severity: Severity,
    /// The instance it comes from (the daemon fills it in when empty).
    #[serde(default)]
    pub instance: String,
    /// The notifier that routed it.
    #[serde(default)]
    pub notifier: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionShowReply {
    /// How many session agents received it.
    pub delivered: usize,
}

crate::commands! { COMMANDS:
    /// The jobs: schedule, next run, last result.
    JobLsCmd "job.ls" (Read) crate::NoArgs => JobList;
    /// Runs a job now (its `overlap` policy applies).
    JobRunCmd "job.run" (Action) JobArgs => JobRunReply;
    /// A job's runs, newest first.
    JobHistoryCmd "job.history" (Read) JobHistoryArgs => Vec<Run>;
    /// Stops scheduling a job (a running run continues); kept across restarts.
    JobPauseCmd "job.pause" (Action) JobArgs => JobRow;
    /// Schedules a paused job again from its next occurrence.
    JobResumeCmd "job.resume" (Action) JobArgs => JobRow;
    /// A key of the shared state store.
    StateGetCmd "state.get" (Read) KeyArgs => StateValue;
    /// Sets a key (durable before the reply).
    StateSetCmd "state.set" (Action) StateSetArgs => StateValue;
    /// Deletes a key.
    StateDelCmd "state.del" (Action) KeyArgs => StateValue;
    /// Compare and swap.
    StateCasCmd "state.cas" (Action) StateCasArgs => CasReply;
    /// The bus topic on which a key's changes are published.
    StateWatchCmd "state.watch" (Read) KeyArgs => WatchReply;
    /// Takes a named lock (the one `majordomo lock` and jobs use); released by `lock.release`
    /// or when the daemon stops.
    LockAcquireCmd "lock.acquire" (Action) LockArgs => LockReply;
    /// Releases a named lock taken with `lock.acquire`.
    LockReleaseCmd "lock.release" (Action) LockReleaseArgs => LockReply;
    /// Raises a notification through the notifiers (quiet hours, dedup, rate limit apply).
    NotifySendCmd "notify.send" (Action) NotifySendArgs => NotifySendReply;
    /// Hands a desktop notification to the connected session agents (what `type = "session"`
    /// notifiers do); `no_responders` when no agent is connected.
    SessionShowCmd "session.show" (Action) SessionNotification => SessionShowReply;
}
