//! `[monitor]`, `[[check]]` and `[[notifier]]`: schema, defaults and semantic validation.

use std::collections::BTreeMap;

use majordomo_core::{Dur, Problem, Secret};
pub use majordomo_proto::monitor::{NotifierKind, Severity};
use serde::{Deserialize, Serialize};

/// The `monitor` subsystem's section: the TOML keys `monitor` (`[monitor]`) and `check`
/// (`[[check]]`). Checks written in a file replace [`default_checks`] as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSection {
    pub monitor: MonitorConfig,
    pub check: Vec<CheckConfig>,
}

impl Default for MonitorSection {
    fn default() -> Self {
        Self {
            monitor: MonitorConfig::default(),
            check: default_checks(),
        }
    }
}

/// `[monitor]`: the metrics collector and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Collect metrics and evaluate checks at all.
    pub enabled: bool,
    /// Time between two collections (at least 1s).
    pub interval: Dur,
    /// How many processes the top-by-CPU and top-by-memory lists keep (0 turns them off).
    pub top: usize,
    /// Keep a metrics history on disk, in the instance's state folder.
    pub history: bool,
    /// How long the history keeps every collection.
    pub full_resolution: Dur,
    /// Older history is kept as min/avg/max over buckets of this length...
    pub downsample: Dur,
    /// ...for this long, then deleted.
    pub retention: Dur,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Dur::secs(30),
            top: 5,
            history: true,
            full_resolution: Dur::secs(24 * 3600),
            downsample: Dur::secs(300),
            retention: Dur::secs(30 * 24 * 3600),
        }
    }
}

/// `[[check]]`: one health check. Exactly one of `metric`, `command`, `tcp`, `http`, `program`,
/// `job`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckConfig {
    /// Unique name; alerts and notifications carry it.
    pub name: String,
    /// A metric name from `majordomo metrics`, e.g. "disk.used_pct", or a gauge another subsystem publishes, e.g. "bus.connections".
    pub metric: Option<String>,
    /// Only the series with these labels, e.g. { mount = "/" }; without it every series of the metric is checked on its own.
    pub labels: BTreeMap<String, String>,
    /// Trips when the value is above this...
    pub above: Option<f64>,
    /// ...or below this.
    pub below: Option<f64>,
    /// How long the condition must hold before the alert fires (pending until then).
    #[serde(rename = "for")]
    pub for_: Dur,
    /// With `above`: a firing alert resolves only once the value is below this (hysteresis); default: `above`.
    pub clear_below: Option<f64>,
    /// With `below`: a firing alert resolves only once the value is above this; default: `below`.
    pub clear_above: Option<f64>,
    /// info, warning or critical.
    pub severity: Severity,
    /// A program and its arguments; the check fails when it exits with another code than `expect_exit`.
    pub command: Vec<String>,
    /// The exit code that means healthy, for `command`.
    pub expect_exit: i32,
    /// With `command`: its output must also contain this text.
    pub expect_output: Option<String>,
    /// "host:port" that must accept a TCP connection.
    pub tcp: Option<String>,
    /// A URL that must answer a GET with a 2xx or 3xx status (or `expect_status`).
    #[serde(serialize_with = "majordomo_core::units::serialize_opt_url")]
    pub http: Option<String>,
    /// With `http`: the exact status that means healthy.
    pub expect_status: Option<u16>,
    /// The name of a supervised program that must be running; one never reported running counts as not running.
    pub program: Option<String>,
    /// The name of a `[[job]]`: unhealthy while its last run did not succeed (failed, timed out, killed or interrupted).
    pub job: Option<String>,
    /// With `job`: also unhealthy when it has not succeeded for this long (counted from the monitor's start until it first succeeds).
    pub no_success_within: Option<Dur>,
    /// How often a command, tcp or http check runs; default: `[monitor] interval`.
    pub interval: Option<Dur>,
    /// How long a command, tcp or http check may take before it counts as failed.
    pub timeout: Dur,
    /// A text for people, carried by the alert; default: generated from the check.
    pub summary: Option<String>,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            metric: None,
            labels: BTreeMap::new(),
            above: None,
            below: None,
            for_: Dur::secs(0),
            clear_below: None,
            clear_above: None,
            severity: Severity::Warning,
            command: Vec::new(),
            expect_exit: 0,
            expect_output: None,
            tcp: None,
            http: None,
            expect_status: None,
            program: None,
            job: None,
            no_success_within: None,
            interval: None,
            timeout: Dur::secs(10),
            summary: None,
        }
    }
}

impl CheckConfig {
    fn metric(name: &str, metric: &str, above: f64, clear_below: f64, for_: u64) -> Self {
        Self {
            name: name.into(),
            metric: Some(metric.into()),
            above: Some(above),
            clear_below: Some(clear_below),
            for_: Dur::secs(for_),
            ..Self::default()
        }
    }

    /// What kind of check this is: `metric`, `command`, `tcp`, `http`, `program` or `job`.
    pub fn kind(&self) -> &'static str {
        if self.metric.is_some() {
            "metric"
        } else if !self.command.is_empty() {
            "command"
        } else if self.tcp.is_some() {
            "tcp"
        } else if self.http.is_some() {
            "http"
        } else if self.program.is_some() {
            "program"
        } else if self.job.is_some() {
            "job"
        } else {
            "none"
        }
    }
}

/// The checks the default config ships (CPU > 80 %, memory > 85 %, disk > 90 %).
pub fn default_checks() -> Vec<CheckConfig> {
    vec![
        CheckConfig::metric("cpu-high", "cpu.used_pct", 80.0, 70.0, 300),
        CheckConfig::metric("memory-high", "memory.used_pct", 85.0, 80.0, 300),
        CheckConfig {
            severity: Severity::Critical,
            ..CheckConfig::metric("disk-full", "disk.used_pct", 90.0, 85.0, 60)
        },
    ]
}

/// When a notifier stays silent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Start, "HH:MM" in `tz`.
    pub from: String,
    /// End, "HH:MM" in `tz` (may be past midnight: 22:00 to 07:00).
    pub to: String,
    /// An IANA time zone like "Europe/Berlin"; default: the system's.
    #[serde(default)]
    pub tz: Option<String>,
    /// Alerts of this severity or worse are sent even in quiet hours.
    #[serde(default)]
    pub except: Option<Severity>,
}

/// `[[notifier]]`: where alerts go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifierConfig {
    /// Unique name, for `majordomo notify test NAME` and the delivery log.
    pub name: String,
    /// log, desktop, webhook or command.
    #[serde(rename = "type")]
    pub kind: NotifierKind,
    /// Only alerts of this severity or worse.
    pub min_severity: Severity,
    /// Only alerts of these checks (names, or prefixes ending in '*'); empty: all.
    pub checks: Vec<String>,
    /// Also notify when an alert resolves.
    pub resolved: bool,
    /// Stay silent between two times of day.
    pub quiet_hours: Option<QuietHours>,
    /// The same alert in the same state is not sent again within this window.
    pub dedup: Dur,
    /// At most this many notifications per hour (0: no limit); the rest are recorded as suppressed.
    pub max_per_hour: u32,
    /// For webhook: the URL that gets a POST with the alert as JSON (its userinfo and query values are never printed).
    #[serde(serialize_with = "majordomo_core::units::serialize_opt_url")]
    pub url: Option<String>,
    /// For webhook: extra HTTP headers; `${VAR}` is replaced by the environment variable VAR (values are secrets: never printed).
    pub headers: BTreeMap<String, Secret>,
    /// For webhook and command: how long one attempt may take.
    pub timeout: Dur,
    /// For webhook and command: attempts after the first failed one.
    pub retries: u32,
    /// Wait before the first retry, at most; the bound doubles for each further one (up to
    /// 5 minutes), and each wait is a random time below it (full jitter).
    pub backoff: Dur,
    /// For command: the program and its arguments; it gets the alert as JSON on standard input.
    pub command: Vec<String>,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            kind: NotifierKind::Log,
            min_severity: Severity::Info,
            checks: Vec::new(),
            resolved: true,
            quiet_hours: None,
            dedup: Dur::secs(600),
            max_per_hour: 60,
            url: None,
            headers: BTreeMap::new(),
            timeout: Dur::secs(10),
            retries: 3,
            backoff: Dur::secs(1),
            command: Vec::new(),
        }
    }
}

/// Parses "HH:MM" into minutes after midnight.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// The label keys a metric accepts.
fn label_ok(metric: &str, key: &str) -> bool {
    crate::metrics::lookup(metric).and_then(|d| d.label) == Some(key)
}

/// Semantic checks of `[monitor]`, `[[check]]` and `[[notifier]]`, with field paths for
/// `config check`. (That a `program` check names a declared `[[program]]`, and a `job` check a
/// declared `[[job]]`, are the app's checks.)
pub fn validate(
    monitor: &MonitorConfig,
    checks: &[CheckConfig],
    notifiers: &[NotifierConfig],
    problems: &mut Vec<Problem>,
) {
    if monitor.interval.get() < std::time::Duration::from_secs(1) {
        problems.push(Problem::at(
            "monitor.interval",
            format!("{} is too short", monitor.interval),
            "use at least \"1s\"; the default is \"30s\"",
        ));
    }
    if monitor.downsample.get().as_secs() < 60 {
        problems.push(Problem::at(
            "monitor.downsample",
            format!(
                "{} is too short for downsampled history",
                monitor.downsample
            ),
            "use at least \"1m\", e.g. \"5m\"",
        ));
    }
    let mut mounts: Option<Vec<String>> = None;
    let mut seen = std::collections::HashSet::new();
    for (i, c) in checks.iter().enumerate() {
        let at = |f: &str| format!("check[{i}].{f}");
        if c.name.trim().is_empty() {
            problems.push(Problem::at(
                at("name"),
                "a check needs a name",
                "add name = \"disk-full\"",
            ));
        } else if !seen.insert(c.name.as_str()) {
            problems.push(Problem::at(
                at("name"),
                format!("another check is already named {:?}", c.name),
                "give each check a unique name",
            ));
        }
        let kinds = [
            c.metric.is_some(),
            !c.command.is_empty(),
            c.tcp.is_some(),
            c.http.is_some(),
            c.program.is_some(),
            c.job.is_some(),
        ];
        let n = kinds.iter().filter(|k| **k).count();
        if n != 1 {
            problems.push(Problem::at(
                at("name"),
                format!(
                    "check {:?} sets {n} of metric, command, tcp, http, program, job",
                    c.name
                ),
                "set exactly one of them",
            ));
            continue;
        }
        if let Some(metric) = &c.metric {
            let Some(def) = crate::metrics::lookup(metric) else {
                let near: Vec<&str> = crate::metrics::all()
                    .map(|d| d.name)
                    .filter(|n| n.split('.').next() == metric.split('.').next())
                    .collect();
                problems.push(Problem::at(
                    at("metric"),
                    format!("unknown metric {metric:?}"),
                    if near.is_empty() {
                        "see `majordomo metrics` or the README for the metric names".to_string()
                    } else {
                        format!("did you mean one of: {}", near.join(", "))
                    },
                ));
                continue;
            };
            for (k, v) in &c.labels {
                if !label_ok(metric, k) {
                    problems.push(Problem::at(
                        at("labels"),
                        format!("metric {metric:?} has no label {k:?}"),
                        match def.label {
                            Some(l) => format!("its label is {l:?}"),
                            None => "it has no labels; remove `labels`".to_string(),
                        },
                    ));
                } else if k == "mount" {
                    let known = mounts.get_or_insert_with(|| {
                        crate::collect::mounts()
                            .into_iter()
                            .map(|m| m.path)
                            .collect()
                    });
                    if !known.is_empty() && !known.iter().any(|m| m == v) {
                        problems.push(Problem::at(
                            at("labels"),
                            format!("{v:?} is not a mounted file system on this machine"),
                            format!("mounted: {}", known.join(", ")),
                        ));
                    }
                }
            }
            match (c.above, c.below) {
                (None, None) | (Some(_), Some(_)) => problems.push(Problem::at(
                    at("metric"),
                    format!("check {:?} needs exactly one of `above` or `below`", c.name),
                    "e.g. above = 90",
                )),
                (Some(a), None) => {
                    if c.clear_above.is_some() {
                        problems.push(Problem::at(
                            at("clear_above"),
                            "clear_above goes with `below`",
                            "use clear_below with `above`",
                        ));
                    }
                    if let Some(cb) = c.clear_below
                        && cb > a
                    {
                        problems.push(Problem::at(
                            at("clear_below"),
                            format!("clear_below ({cb}) is above the threshold ({a})"),
                            "hysteresis clears below the threshold: use a value <= above",
                        ));
                    }
                }
                (None, Some(b)) => {
                    if c.clear_below.is_some() {
                        problems.push(Problem::at(
                            at("clear_below"),
                            "clear_below goes with `above`",
                            "use clear_above with `below`",
                        ));
                    }
                    if let Some(ca) = c.clear_above
                        && ca < b
                    {
                        problems.push(Problem::at(
                            at("clear_above"),
                            format!("clear_above ({ca}) is below the threshold ({b})"),
                            "hysteresis clears above the threshold: use a value >= below",
                        ));
                    }
                }
            }
        } else {
            for (set, f) in [
                (c.above.is_some(), "above"),
                (c.below.is_some(), "below"),
                (!c.labels.is_empty(), "labels"),
            ] {
                if set {
                    problems.push(Problem::at(
                        at(f),
                        format!("`{f}` applies only to metric checks"),
                        "remove it, or use `metric`",
                    ));
                }
            }
        }
        if let Some(t) = &c.tcp
            && !valid_host_port(t)
        {
            problems.push(Problem::at(
                at("tcp"),
                format!("{t:?} is not host:port"),
                "write it like \"127.0.0.1:5432\" or \"db.local:5432\"",
            ));
        }
        if let Some(u) = &c.http
            && !matches!(reqwest::Url::parse(u), Ok(url) if matches!(url.scheme(), "http" | "https"))
        {
            problems.push(Problem::at(
                at("http"),
                format!("{u:?} is not an http(s) URL"),
                "write it like \"http://127.0.0.1:8080/health\"",
            ));
        }
        if let Some(d) = c.no_success_within {
            if c.job.is_none() {
                problems.push(Problem::at(
                    at("no_success_within"),
                    "`no_success_within` applies only to job checks",
                    "remove it, or add job = \"NAME\"",
                ));
            } else if d.get() < std::time::Duration::from_secs(1) {
                problems.push(Problem::at(
                    at("no_success_within"),
                    format!("{d} is too short"),
                    "use at least \"1s\", e.g. \"2h\"",
                ));
            }
        }
        if c.timeout.get().is_zero() {
            problems.push(Problem::at(
                at("timeout"),
                "a timeout of 0",
                "use e.g. \"10s\"",
            ));
        }
        if let Some(iv) = c.interval
            && iv.get() < std::time::Duration::from_secs(1)
        {
            problems.push(Problem::at(
                at("interval"),
                format!("{iv} is too short"),
                "use at least \"1s\"",
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, n) in notifiers.iter().enumerate() {
        let at = |f: &str| format!("notifier[{i}].{f}");
        if n.name.trim().is_empty() {
            problems.push(Problem::at(
                at("name"),
                "a notifier needs a name",
                "add name = \"ops\"",
            ));
        } else if !seen.insert(n.name.as_str()) {
            problems.push(Problem::at(
                at("name"),
                format!("another notifier is already named {:?}", n.name),
                "give each notifier a unique name",
            ));
        }
        match n.kind {
            NotifierKind::Webhook => match &n.url {
                None => problems.push(Problem::at(
                    at("type"),
                    "a webhook notifier needs `url`",
                    "add url = \"https://...\"",
                )),
                Some(u) => {
                    if !matches!(reqwest::Url::parse(u), Ok(url) if matches!(url.scheme(), "http" | "https"))
                    {
                        problems.push(Problem::at(
                            at("url"),
                            format!("{u:?} is not an http(s) URL"),
                            "write it like \"https://hooks.example.com/alerts\"",
                        ));
                    }
                }
            },
            NotifierKind::Command if n.command.is_empty() => problems.push(Problem::at(
                at("type"),
                "a command notifier needs `command`",
                "add command = [\"/usr/local/bin/page-me\"]",
            )),
            _ => {}
        }
        for (k, v) in &n.headers {
            if let Err(e) = majordomo_core::units::expand_env(v.expose(), |k| std::env::var(k).ok())
            {
                problems.push(Problem::at(
                    at(&format!("headers.{k}")),
                    e,
                    "set the variable in the daemon's environment, or write `${NAME}` with a valid NAME",
                ));
            }
        }
        if n.kind != NotifierKind::Webhook && (n.url.is_some() || !n.headers.is_empty()) {
            problems.push(Problem::at(
                at("url"),
                "`url` and `headers` apply only to webhook notifiers",
                "remove them or use type = \"webhook\"",
            ));
        }
        if n.kind != NotifierKind::Command && !n.command.is_empty() {
            problems.push(Problem::at(
                at("command"),
                "`command` applies only to command notifiers",
                "remove it or use type = \"command\"",
            ));
        }
        if n.timeout.get().is_zero() {
            problems.push(Problem::at(
                at("timeout"),
                "a timeout of 0",
                "use e.g. \"10s\"",
            ));
        }
        if let Some(q) = &n.quiet_hours {
            for (v, f) in [(&q.from, "from"), (&q.to, "to")] {
                if parse_hhmm(v).is_none() {
                    problems.push(Problem::at(
                        at("quiet_hours"),
                        format!("quiet_hours.{f} {v:?} is not a time of day"),
                        "write it as \"HH:MM\", e.g. \"22:00\"",
                    ));
                }
            }
            if let Some(tz) = &q.tz
                && let Err(e) = jiff::tz::TimeZone::get(tz)
            {
                problems.push(Problem::at(
                    at("quiet_hours"),
                    format!("unknown time zone {tz:?}: {e}"),
                    "use an IANA name like \"Europe/Berlin\" or \"UTC\"",
                ));
            }
        }
    }
}

fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn times_of_day() {
        assert_eq!(parse_hhmm("22:00"), Some(22 * 60));
        assert_eq!(parse_hhmm("7:05"), Some(7 * 60 + 5));
        assert_eq!(parse_hhmm("24:00"), None);
        assert_eq!(parse_hhmm("12:60"), None);
        assert_eq!(parse_hhmm("noon"), None);
    }

    proptest! {
        #[test]
        fn hhmm_never_panics_and_round_trips(s in ".{0,8}", h in 0u32..24, m in 0u32..60) {
            let _ = parse_hhmm(&s);
            prop_assert_eq!(parse_hhmm(&format!("{h:02}:{m:02}")), Some(h * 60 + m));
        }
    }
}
