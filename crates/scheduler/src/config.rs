//! `[scheduler]` and `[[job]]`.

use std::collections::BTreeMap;
use std::sync::Arc;

use majordomo_core::{Dur, Problem};
use majordomo_proto::monitor::Severity;
use serde::{Deserialize, Serialize};

use crate::plan::Plan;

/// `[scheduler]`: daemon-wide settings of the jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// How many job runs may be in progress at once; more wait for a free slot.
    pub max_concurrent: usize,
    /// Runs kept per job in its history.
    pub history: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 16,
            history: 50,
        }
    }
}

/// What the scheduler subsystem is handed: `[scheduler]` and every `[[job]]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SchedulerSection {
    pub scheduler: SchedulerConfig,
    pub job: Vec<SharedJob>,
}

/// One `[[job]]` as the whole config holds it: shared by reference between the config, the
/// scheduler's section and its timer, so 10,000 jobs are parsed once and kept once.
#[derive(Clone, PartialEq)]
pub struct SharedJob(pub Arc<JobConfig>);

impl std::ops::Deref for SharedJob {
    type Target = JobConfig;
    fn deref(&self) -> &JobConfig {
        &self.0
    }
}

impl std::fmt::Debug for SharedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<JobConfig> for SharedJob {
    fn from(c: JobConfig) -> Self {
        SharedJob(Arc::new(c))
    }
}

impl Serialize for SharedJob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedJob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        JobConfig::deserialize(d).map(SharedJob::from)
    }
}

/// Moves each job's config into fresh memory. A parse leaves the jobs scattered among its
/// garbage, one or two to a page, and a page holding one cannot go back to the OS: copied
/// after the garbage was freed, 10,000 jobs sit together (about 1 KB resident per job less).
pub fn rehome(jobs: &mut [SharedJob]) {
    for j in jobs {
        *j = SharedJob(Arc::new(JobConfig::clone(&j.0)));
    }
}

/// A JSON value kept as its compact text: what a `publish` job sends, serialized once when the
/// config is read instead of at every run (and a few bytes instead of a map per job).
#[derive(Clone, PartialEq, Eq)]
pub struct JsonData(Box<[u8]>);

impl JsonData {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Default for JsonData {
    fn default() -> Self {
        JsonData(b"null".to_vec().into_boxed_slice())
    }
}

impl std::fmt::Debug for JsonData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl Serialize for JsonData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::from_slice::<serde_json::Value>(&self.0)
            .unwrap_or(serde_json::Value::Null)
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        serde_json::to_vec(&v)
            .map(|b| JsonData(b.into_boxed_slice()))
            .map_err(serde::de::Error::custom)
    }
}

/// What to do when an occurrence comes while the previous run still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    #[default]
    Skip,
    Queue,
    KillPrevious,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    Failure,
    Success,
    Start,
}

/// `http = { url, method, headers, body }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAction {
    pub url: String,
    #[serde(default = "get")]
    pub method: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
}

fn get() -> String {
    "GET".into()
}

/// `publish = { topic, data }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishAction {
    pub topic: String,
    #[serde(default)]
    pub data: JsonData,
}

/// One `[[job]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub name: String,
    /// Cron: 5 fields, or 6 with seconds first.
    #[serde(default)]
    pub schedule: Option<String>,
    /// A fixed period, anchored to the Unix epoch so it never drifts.
    #[serde(default)]
    pub every: Option<Dur>,
    /// Once, at this local time (`2026-12-24T18:00`) in `timezone`, or an RFC 3339 instant.
    #[serde(default)]
    pub at: Option<String>,
    /// IANA time zone; default: the machine's.
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub http: Option<Box<HttpAction>>,
    #[serde(default)]
    pub publish: Option<PublishAction>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Kills the run's whole process tree after this long.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// A random delay in [0, jitter) added to each occurrence's start.
    #[serde(default)]
    pub jitter: Dur,
    /// Run an occurrence missed while the daemon was down once at start-up (or from `check`).
    #[serde(default)]
    pub persistent: bool,
    #[serde(default)]
    pub overlap: Overlap,
    /// A named lock held for the whole run (shared with `majordomo lock` and programs).
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default)]
    pub notify_on: Vec<NotifyOn>,
    #[serde(default = "warning")]
    pub severity: Severity,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}

fn warning() -> Severity {
    Severity::Warning
}

impl JobConfig {
    /// The job's plan; `validate` has proved it builds.
    pub fn plan(&self) -> Result<Plan, String> {
        Plan::from_job(
            self.schedule.as_deref(),
            self.every.map(Dur::get),
            self.at.as_deref(),
            self.timezone.as_deref(),
        )
    }

    pub fn describe(&self) -> String {
        let tz = self
            .timezone
            .as_deref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default();
        if let Some(s) = &self.schedule {
            format!("cron {s}{tz}")
        } else if let Some(e) = self.every {
            format!("every {e}")
        } else if let Some(a) = &self.at {
            format!("at {a}{tz}")
        } else {
            "never".into()
        }
    }
}

/// Whether `name` may name a job or a lock: 1-64 of a-z, A-Z, 0-9, '_', '-', '.'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

pub fn validate(s: &SchedulerConfig, jobs: &[SharedJob], problems: &mut Vec<Problem>) {
    if s.max_concurrent == 0 {
        problems.push(Problem::at(
            "scheduler.max_concurrent",
            "0 would never run a job",
            "use at least 1; the default is 16",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, j) in jobs.iter().enumerate() {
        let at = |f: &str| format!("job[{i}].{f}");
        if !valid_name(&j.name) {
            problems.push(Problem::at(
                at("name"),
                format!("{:?} is not a valid job name", j.name),
                "use 1-64 of a-z, A-Z, 0-9, '_', '-', '.'",
            ));
        } else if !seen.insert(j.name.clone()) {
            problems.push(Problem::at(
                at("name"),
                format!("a second job named {:?}", j.name),
                "job names must be unique",
            ));
        }
        let whens = [j.schedule.is_some(), j.every.is_some(), j.at.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if whens != 1 {
            problems.push(Problem::at(
                at("schedule"),
                "a job needs exactly one of `schedule`, `every` and `at`",
                "e.g. schedule = \"0 3 * * *\", every = \"5m\" or at = \"2026-12-24T18:00\"",
            ));
        } else if let Err(e) = j.plan() {
            let field = if let Some(tz) = &j.timezone
                && jiff::tz::TimeZone::get(tz).is_err()
            {
                "timezone"
            } else if j.schedule.is_some() {
                "schedule"
            } else if j.every.is_some() {
                "every"
            } else {
                "at"
            };
            problems.push(Problem::at(
                at(field),
                e,
                "see `majordomo config default` for the forms",
            ));
        }
        let actions = [!j.command.is_empty(), j.http.is_some(), j.publish.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if actions != 1 {
            problems.push(Problem::at(
                at("command"),
                "a job needs exactly one of `command`, `http` and `publish`",
                "e.g. command = [\"/usr/bin/rotate\", \"--all\"]",
            ));
        }
        if let Some(h) = &j.http
            && !(h.url.starts_with("http://") || h.url.starts_with("https://"))
        {
            problems.push(Problem::at(
                at("http.url"),
                format!("{:?} is not an http(s) URL", h.url),
                "write it as http://host:port/path",
            ));
        }
        if let Some(p) = &j.publish {
            let why = match majordomo_proto::bus::check_topic(&p.topic, false) {
                Err(e) => Some(format!("topic {:?} {e}", p.topic)),
                Ok(()) if majordomo_proto::bus::is_reserved(&p.topic) => Some(format!(
                    "topic {:?} is reserved for the daemon (`$sys.>`) or for replies (`_INBOX.>`)",
                    p.topic
                )),
                Ok(()) => None,
            };
            if let Some(why) = why {
                problems.push(Problem::at(
                    at("publish.topic"),
                    why,
                    "publish on a topic of your own, e.g. topic = \"app.rotated\"",
                ));
            }
        }
        if let Some(l) = &j.lock
            && !valid_name(l)
        {
            problems.push(Problem::at(
                at("lock"),
                format!("{l:?} is not a valid lock name"),
                "use 1-64 of a-z, A-Z, 0-9, '_', '-', '.'",
            ));
        }
        if let Some(t) = j.timeout
            && t.get().is_zero()
        {
            problems.push(Problem::at(
                at("timeout"),
                "a timeout of 0 kills every run at once",
                "leave it out for no timeout, or use e.g. \"10m\"",
            ));
        }
    }
}
