//! Wire types of the health monitor: alerts and notification deliveries (also the payloads of
//! the `$sys.alert.*` and `$sys.notify.*` events).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::contract::NoArgs;
use crate::supervisor::ProgramState;

/// How bad an alert is. Ordered: `info` < `warning` < `critical`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// How a notifier delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifierKind {
    Log,
    Desktop,
    Webhook,
    Command,
    /// Through the session agents (`majordomo session-agent`) in the users' desktop sessions.
    Session,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
    /// Was pending, and the condition went away before `for` elapsed.
    Cancelled,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
            AlertState::Cancelled => "cancelled",
        }
    }
}

/// One alert, as events, the CLI, the report and notifiers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Alert {
    /// The check name, plus the series label for metric checks: `disk-full{mount=/}`.
    pub id: String,
    pub check: String,
    /// `metric`, `command`, `tcp`, `http`, `program` (or `test` for `notify test`).
    pub source: String,
    pub state: AlertState,
    pub severity: Severity,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The last value seen (metric checks).
    #[serde(default)]
    pub value: Option<f64>,
    pub summary: String,
    /// RFC 3339: when the condition was first seen.
    pub since: String,
    #[serde(default)]
    pub fired_at: Option<String>,
    #[serde(default)]
    pub resolved_at: Option<String>,
}

/// One try to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    pub at: String,
    pub ok: bool,
    pub ms: u64,
    #[serde(default)]
    pub error: Option<String>,
}

/// `delivered`, `failed` or `suppressed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Delivered,
    Failed,
    Suppressed,
}

/// One notification and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Delivery {
    pub at: String,
    pub notifier: String,
    #[serde(rename = "type")]
    pub kind: NotifierKind,
    pub alert: String,
    pub state: AlertState,
    pub severity: Severity,
    pub outcome: Outcome,
    /// Why it was suppressed or failed.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// `notify test` sends, not real alerts.
    #[serde(default)]
    pub test: bool,
}

/// A process in the top-by-CPU and top-by-memory lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Proc {
    pub pid: u32,
    pub name: String,
    /// CPU use since the previous collection (100 = one core).
    pub cpu_pct: f64,
    pub rss_bytes: u64,
}

/// One stored point of one series: `[min, avg, max]` (all equal at full resolution).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Point {
    /// Unix time, in seconds.
    pub t: u64,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
}

/// min / avg / max / last / count of a series' points.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Stats {
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub last: f64,
    pub count: usize,
}

/// The arguments of `metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsArgs {
    /// A metric name or prefix, e.g. `disk.used_pct` or `cpu.` (default: all).
    #[serde(default)]
    pub name: Option<String>,
    /// A window like `1h` or `30m`: the history over it instead of the current values.
    #[serde(default)]
    pub since: Option<String>,
}

/// The last collection's values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MetricsNow {
    /// Unix time of the collection, in seconds.
    pub at: u64,
    /// Series key (`disk.used_pct{mount=/}`) → value.
    pub values: BTreeMap<String, f64>,
    #[serde(default)]
    pub top_cpu: Vec<Proc>,
    #[serde(default)]
    pub top_mem: Vec<Proc>,
}

/// One series of the history, with its statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Series {
    /// `null` when the series has no point in the window.
    pub stats: Option<Stats>,
    pub points: Vec<Point>,
}

/// The history of every matching series since a time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MetricsHistory {
    /// Unix time the window starts at, in seconds.
    pub since: u64,
    pub series: BTreeMap<String, Series>,
}

/// The reply to `metrics`: the current values, or the history when `since` was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum MetricsReply {
    Now(MetricsNow),
    History(MetricsHistory),
}

/// The reply to `alerts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlertsReply {
    /// Pending and firing alerts.
    pub active: Vec<Alert>,
    /// The most recently ended ones (resolved or cancelled), newest first.
    pub recent: Vec<Alert>,
}

/// A listening TCP socket or bound UDP socket, and its owner when this user may see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Port {
    /// `tcp`, `tcp6`, `udp` or `udp6`.
    pub proto: String,
    pub addr: String,
    pub port: u16,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub process: Option<String>,
}

/// A supervised program's last reported state, as the monitor saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProgramSeen {
    pub state: ProgramState,
    #[serde(default)]
    pub pid: Option<u32>,
    /// RFC 3339: since when it is in this state.
    pub since: String,
    /// Restarts since the daemon started (a crash loop makes it grow).
    #[serde(default)]
    pub restarts: u64,
}

impl ProgramSeen {
    /// Whether a process of the program runs (`running` or `ready`).
    pub fn running(&self) -> bool {
        matches!(self.state, ProgramState::Running | ProgramState::Ready)
    }

    /// Whether a program check should call this a failure: it ended, waits out a restart
    /// delay, or gave up. Starting, waiting for dependencies, and a stop (asked for, or part of
    /// a reload or a shutdown) are not failures.
    pub fn failing(&self) -> bool {
        matches!(
            self.state,
            ProgramState::Exited | ProgramState::Backoff | ProgramState::Failed
        )
    }
}

/// Deliveries of one notifier, since its record began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Counts {
    pub delivered: u64,
    pub failed: u64,
    pub suppressed: u64,
    pub attempts: u64,
}

/// The daemon, as the report describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReportDaemon {
    pub pid: u32,
    pub version: String,
    pub uptime_s: u64,
}

/// The history part of the report: statistics of every series over the full-resolution window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReportHistory {
    /// Unix time the window starts at, in seconds.
    pub since: u64,
    pub window_s: u64,
    pub series: BTreeMap<String, Stats>,
}

/// One configured check and its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckBrief {
    pub name: String,
    /// `metric`, `command`, `tcp`, `http` or `program`.
    pub kind: String,
    pub severity: Severity,
    /// `ok`, `pending` or `firing`.
    pub state: String,
}

/// The alerts part of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReportAlerts {
    pub active: Vec<Alert>,
    pub recent: Vec<Alert>,
    /// Firing and resolved transitions from the alert log (the last 500), oldest first.
    pub history: Vec<Alert>,
}

/// The reply to `report`: the JSON health report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Report {
    /// RFC 3339.
    pub generated_at: String,
    pub instance: String,
    pub host: String,
    pub daemon: ReportDaemon,
    pub current: MetricsNow,
    pub ports: Vec<Port>,
    pub history: ReportHistory,
    pub checks: Vec<CheckBrief>,
    pub alerts: ReportAlerts,
    pub programs: BTreeMap<String, ProgramSeen>,
    pub notifications: BTreeMap<String, Counts>,
}

/// The arguments of `notify.log`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyLogArgs {
    /// Only this notifier.
    #[serde(default)]
    pub notifier: Option<String>,
    /// How many deliveries (default 20).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One notifier's totals in `notify.log`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotifierTotals {
    pub delivered: u64,
    pub failed: u64,
    pub suppressed: u64,
    pub attempts: u64,
    /// Delivered out of delivered + failed, in percent; `null` before any try.
    pub delivery_rate_pct: Option<f64>,
}

/// The reply to `notify.log`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotifyLog {
    /// Notifier name → totals.
    pub counts: BTreeMap<String, NotifierTotals>,
    /// The most recent deliveries, newest first.
    pub deliveries: Vec<Delivery>,
}

/// The arguments of `notify.test`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyTestArgs {
    /// The notifier's name.
    pub name: String,
}

crate::commands! { COMMANDS:
    /// The health monitor's metrics: the last collection's values, or with `since` the history of every matching series.
    MetricsCmd "metrics" (Read) MetricsArgs => MetricsReply;
    /// The active alerts and the most recently ended ones.
    AlertsCmd "alerts" (Read) NoArgs => AlertsReply;
    /// The JSON health report: current values, min/avg/max over the history, checks, alerts, programs, listening ports, notifications.
    ReportCmd "report" (Read) NoArgs => Report;
    /// The notifiers' delivery record: totals per notifier and the recent deliveries.
    NotifyLogCmd "notify.log" (Read) NotifyLogArgs => NotifyLog;
    /// Sends a test notification through one notifier (bypassing routing, quiet hours and rate limits); the reply is its delivery.
    NotifyTestCmd "notify.test" (Action) NotifyTestArgs => Delivery;
}
