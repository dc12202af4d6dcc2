//! Notifiers: routing, quiet hours, de-duplication, rate limiting, delivery with retries, and
//! the delivery record.
//!
//! The `notify` subsystem subscribes to the hub's alert events. Each notifier has its own task
//! and bounded queue, so a slow or failing one (webhook down, no D-Bus session) never delays the
//! alerts or the other notifiers: when its queue is full, the notification is recorded as failed
//! at once instead of waiting.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use majordomo_proto::monitor::{Attempt, Counts, Delivery, Outcome};
use tokio::io::AsyncWriteExt;

use crate::alerts::{Alert, AlertState, rfc3339};
use crate::config::{NotifierConfig, NotifierKind, QuietHours, Severity, parse_hhmm};

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The delivery record: a ring of recent deliveries, totals, and an append-only file in the
/// state folder (rotated at 1 MB) that survives restarts.
pub struct Record {
    path: PathBuf,
    recent: VecDeque<Delivery>,
    counts: BTreeMap<String, Counts>,
}

const RECENT: usize = 200;
const MAX_FILE: u64 = 1_000_000;

impl Record {
    /// Loads what an earlier run recorded.
    pub fn open(path: PathBuf) -> Self {
        let mut r = Self {
            path,
            recent: VecDeque::new(),
            counts: BTreeMap::new(),
        };
        let old = r.path.with_extension("1.jsonl");
        for p in [&old, &r.path.clone()] {
            crate::repair_jsonl(p, "the delivery record");
            if let Ok(text) = std::fs::read_to_string(p) {
                let (records, skipped) = majordomo_core::jsonl::parse_lines::<Delivery>(&text);
                if skipped > 0 {
                    tracing::warn!(path = %p.display(), skipped, "lines of the delivery record that do not read were skipped");
                }
                for d in records {
                    r.count(&d);
                    r.recent.push_front(d);
                    r.recent.truncate(RECENT);
                }
            }
        }
        r
    }

    fn count(&mut self, d: &Delivery) {
        let c = self.counts.entry(d.notifier.clone()).or_default();
        match d.outcome {
            Outcome::Delivered => c.delivered += 1,
            Outcome::Failed => c.failed += 1,
            Outcome::Suppressed => c.suppressed += 1,
        }
        c.attempts += d.attempts.len() as u64;
    }

    pub fn add(&mut self, d: Delivery) {
        self.count(&d);
        if let Ok(line) = serde_json::to_string(&d) {
            if std::fs::metadata(&self.path).is_ok_and(|m| m.len() > MAX_FILE) {
                let _ = std::fs::rename(&self.path, self.path.with_extension("1.jsonl"));
            }
            let res = majordomo_core::jsonl::append_line(&self.path, line.as_bytes()).map(|torn| {
                if torn {
                    tracing::warn!(path = %self.path.display(), "its last line was torn (a crash or a full disk); ended it so the new record stays whole");
                }
            });
            if let Err(e) = res {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot append to the delivery record");
            }
        }
        self.recent.push_front(d);
        self.recent.truncate(RECENT);
    }

    pub fn recent(&self, notifier: Option<&str>, limit: usize) -> Vec<Delivery> {
        self.recent
            .iter()
            .filter(|d| notifier.is_none_or(|n| d.notifier == n))
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn counts(&self) -> &BTreeMap<String, Counts> {
        &self.counts
    }
}

/// Whether `now` falls in the quiet hours (an injected clock: tests pass any instant).
pub fn in_quiet_hours(q: &QuietHours, now: jiff::Timestamp) -> bool {
    let (Some(from), Some(to)) = (parse_hhmm(&q.from), parse_hhmm(&q.to)) else {
        return false;
    };
    let tz = match &q.tz {
        Some(name) => jiff::tz::TimeZone::get(name).unwrap_or(jiff::tz::TimeZone::UTC),
        None => jiff::tz::TimeZone::system(),
    };
    let local = now.to_zoned(tz);
    let m = local.hour() as u32 * 60 + local.minute() as u32;
    if from <= to {
        from <= m && m < to
    } else {
        m >= from || m < to
    }
}

/// Whether a notifier takes an alert at all (severity, source, resolved).
pub fn routes(n: &NotifierConfig, a: &Alert) -> bool {
    if a.severity < n.min_severity {
        return false;
    }
    match a.state {
        AlertState::Firing => {}
        AlertState::Resolved if n.resolved => {}
        _ => return false,
    }
    n.checks.is_empty()
        || n.checks.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => a.check.starts_with(prefix),
            None => a.check == *p || a.source == *p,
        })
}

/// Per-notifier memory for de-duplication and rate limiting.
#[derive(Default)]
pub struct Gate {
    sent: HashMap<(String, AlertState, Option<u64>), Instant>,
    window: VecDeque<Instant>,
}

impl Gate {
    /// `Some(reason)` when the notification must be suppressed; otherwise it is counted as sent.
    pub fn check(
        &mut self,
        n: &NotifierConfig,
        a: &Alert,
        now: Instant,
        wall: jiff::Timestamp,
    ) -> Option<String> {
        if let Some(q) = &n.quiet_hours
            && in_quiet_hours(q, wall)
            && q.except.is_none_or(|e| a.severity < e)
        {
            return Some(format!("quiet hours {}-{}", q.from, q.to));
        }
        // A program alert with more restarts than the last one sent is news (a crash loop
        // getting worse), not a duplicate.
        let worse = (a.source == "program")
            .then_some(a.value)
            .flatten()
            .map(f64::to_bits);
        let key = (a.id.clone(), a.state, worse);
        if let Some(t) = self.sent.get(&key)
            && now.duration_since(*t) < n.dedup.get()
        {
            return Some(format!("duplicate within {}", n.dedup));
        }
        while self
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3600))
        {
            self.window.pop_front();
        }
        if n.max_per_hour > 0 && self.window.len() >= n.max_per_hour as usize {
            return Some(format!("rate limit of {} per hour", n.max_per_hour));
        }
        self.window.push_back(now);
        self.sent.insert(key, now);
        self.sent
            .retain(|_, t| now.duration_since(*t) < Duration::from_secs(24 * 3600));
        None
    }
}

/// What a notifier needs to deliver.
#[derive(Clone)]
pub struct Deliverer {
    pub http: Option<reqwest::Client>,
    pub instance: String,
    /// For `type = "session"`: the `session.show` command (registered by the scheduler, which
    /// owns the bus topic the session agents listen on).
    pub commands: Option<std::sync::Arc<majordomo_core::Commands>>,
}

impl Deliverer {
    pub fn new(notifiers: &[NotifierConfig], instance: String) -> Self {
        let http = notifiers
            .iter()
            .any(|n| n.kind == NotifierKind::Webhook)
            .then(|| {
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::builder()
                    .user_agent(concat!("majordomo/", env!("CARGO_PKG_VERSION")))
                    .build()
            })
            .and_then(|r| match r {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the HTTP client for webhooks");
                    None
                }
            });
        Self {
            http,
            instance,
            commands: None,
        }
    }

    /// With the daemon's command registry (for `type = "session"` notifiers).
    pub fn with_commands(mut self, commands: std::sync::Arc<majordomo_core::Commands>) -> Self {
        self.commands = Some(commands);
        self
    }

    /// Delivers with retries and exponential backoff; returns the outcome and every attempt.
    pub async fn deliver(&self, n: &NotifierConfig, a: &Alert, test: bool) -> Delivery {
        let mut attempts = Vec::new();
        let tries = match n.kind {
            NotifierKind::Webhook
            | NotifierKind::Command
            | NotifierKind::Desktop
            | NotifierKind::Session => n.retries + 1,
            NotifierKind::Log => 1,
        };
        let mut ok = false;
        for i in 0..tries {
            if i > 0 {
                let delay = majordomo_core::backoff::full_jitter(n.backoff.get(), MAX_BACKOFF, i);
                tokio::time::sleep(delay).await;
            }
            let start = Instant::now();
            let at = rfc3339(SystemTime::now());
            let res = self.once(n, a).await;
            let ms = start.elapsed().as_millis() as u64;
            match res {
                Ok(()) => {
                    attempts.push(Attempt {
                        at,
                        ok: true,
                        ms,
                        error: None,
                    });
                    ok = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(notifier = %n.name, attempt = i + 1, error = %e, "notification attempt failed");
                    attempts.push(Attempt {
                        at,
                        ok: false,
                        ms,
                        error: Some(e),
                    });
                }
            }
        }
        let reason = if ok {
            None
        } else {
            attempts.last().and_then(|a| a.error.clone())
        };
        Delivery {
            at: rfc3339(SystemTime::now()),
            notifier: n.name.clone(),
            kind: n.kind,
            alert: a.id.clone(),
            state: a.state,
            severity: a.severity,
            outcome: if ok {
                Outcome::Delivered
            } else {
                Outcome::Failed
            },
            reason,
            attempts,
            test,
        }
    }

    fn payload(&self, a: &Alert) -> serde_json::Value {
        let mut v = serde_json::to_value(a).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.insert("instance".into(), self.instance.clone().into());
            m.insert("host".into(), majordomo_platform::host_name().into());
        }
        v
    }

    async fn once(&self, n: &NotifierConfig, a: &Alert) -> Result<(), String> {
        let timeout = n.timeout.get();
        match n.kind {
            NotifierKind::Log => {
                match a.severity {
                    Severity::Critical => {
                        tracing::error!(notifier = %n.name, alert = %a.id, state = a.state.as_str(), "{}", a.summary)
                    }
                    Severity::Warning => {
                        tracing::warn!(notifier = %n.name, alert = %a.id, state = a.state.as_str(), "{}", a.summary)
                    }
                    Severity::Info => {
                        tracing::info!(notifier = %n.name, alert = %a.id, state = a.state.as_str(), "{}", a.summary)
                    }
                }
                Ok(())
            }
            NotifierKind::Webhook => {
                let client = self.http.as_ref().ok_or("no HTTP client (see the log)")?;
                let url = n.url.as_deref().ok_or("no url")?;
                let body = serde_json::to_vec(&self.payload(a)).map_err(|e| e.to_string())?;
                let mut req = client
                    .post(url)
                    .timeout(timeout)
                    .header("content-type", "application/json")
                    .body(body);
                for (k, v) in &n.headers {
                    // `${VAR}` from the daemon's environment; checked when the config loaded.
                    let v =
                        majordomo_core::units::expand_env(v.expose(), |k| std::env::var(k).ok())
                            .map_err(|e| format!("header {k}: {e}"))?;
                    req = req.header(k.as_str(), v);
                }
                // Messages go to the log, notify.jsonl and $sys.notify.failed: never the
                // URL's credentials or query values.
                let shown = majordomo_core::units::redact_url(url);
                match req.send().await {
                    Ok(resp) if resp.status().is_success() => Ok(()),
                    Ok(resp) => Err(format!("{shown} answered HTTP {}", resp.status())),
                    Err(e) if e.is_timeout() => {
                        Err(format!("{shown} did not answer within {}", n.timeout))
                    }
                    Err(e) => Err(format!("{shown}: {}", error_chain(&e.without_url()))),
                }
            }
            NotifierKind::Command => {
                let (prog, args) = n.command.split_first().ok_or("no command")?;
                let mut cmd = tokio::process::Command::new(prog);
                majordomo_platform::process::scrub_daemon_env(cmd.as_std_mut());
                let mut child = cmd
                    .args(args)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("cannot start {prog:?}: {e}"))?;
                let body = serde_json::to_vec(&self.payload(a)).map_err(|e| e.to_string())?;
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(&body).await;
                }
                match tokio::time::timeout(timeout, child.wait_with_output()).await {
                    Err(_) => Err(format!(
                        "{prog:?} did not finish within {}; killed",
                        n.timeout
                    )),
                    Ok(Err(e)) => Err(format!("{prog:?}: {e}")),
                    Ok(Ok(out)) if out.status.success() => Ok(()),
                    Ok(Ok(out)) => {
                        let err = String::from_utf8_lossy(&out.stderr);
                        let tail: String = err
                            .trim()
                            .chars()
                            .rev()
                            .take(200)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect();
                        Err(format!("{prog:?} exited with {}: {tail}", out.status))
                    }
                }
            }
            NotifierKind::Session => {
                let Some(commands) = &self.commands else {
                    return Err("session notifications need the daemon's commands".into());
                };
                let args = serde_json::json!({
                    "title": a.labels.get("title").cloned().unwrap_or_else(|| title(a)),
                    "body": a.labels.get("body").cloned().unwrap_or_else(|| a.summary.clone()),
                    "severity": a.severity,
                    "instance": self.instance,
                    "notifier": n.name,
                });
                let serde_json::Value::Object(args) = args else {
                    return Err("internal: arguments are not an object".into());
                };
                match tokio::time::timeout(timeout, commands.dispatch("session.show", args)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.message),
                    Err(_) => Err(format!(
                        "no session agent took the notification within {}",
                        n.timeout
                    )),
                }
            }
            NotifierKind::Desktop => match tokio::time::timeout(timeout, desktop(a)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "the desktop notification server did not answer within {}",
                    n.timeout
                )),
            },
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn title(a: &Alert) -> String {
    format!("[{}] {} {}", a.severity.as_str(), a.check, a.state.as_str())
}

/// A desktop notification: freedesktop notifications over the D-Bus session bus on Linux and
/// the BSDs, a toast on Windows, the notification centre on macOS.
#[cfg(all(unix, not(target_os = "macos")))]
async fn desktop(a: &Alert) -> Result<(), String> {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
        && std::env::var_os("XDG_RUNTIME_DIR").is_none()
    {
        return Err("no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set); desktop notifications need the daemon to run in a desktop session".into());
    }
    let urgency = match a.severity {
        Severity::Critical => notify_rust::Urgency::Critical,
        Severity::Warning => notify_rust::Urgency::Normal,
        Severity::Info => notify_rust::Urgency::Low,
    };
    let mut n = notify_rust::Notification::new();
    n.appname("majordomo")
        .summary(&title(a))
        .body(&a.summary)
        .urgency(urgency);
    n.show_async()
        .await
        .map(|_| ())
        .map_err(|e| format!("desktop notification failed: {e}"))
}

#[cfg(not(all(unix, not(target_os = "macos"))))]
async fn desktop(a: &Alert) -> Result<(), String> {
    let (t, body) = (title(a), a.summary.clone());
    tokio::task::spawn_blocking(move || {
        notify_rust::Notification::new()
            .appname("majordomo")
            .summary(&t)
            .body(&body)
            .show()
            .map(|_| ())
            .map_err(|e| format!("desktop notification failed: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The shared record, cheap to clone.
pub type SharedRecord = Arc<Mutex<Record>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn alert(sev: Severity, state: AlertState) -> Alert {
        Alert {
            id: "disk-full{mount=/}".into(),
            check: "disk-full".into(),
            source: "metric".into(),
            state,
            severity: sev,
            labels: BTreeMap::new(),
            value: Some(95.0),
            summary: "disk".into(),
            since: String::new(),
            fired_at: None,
            resolved_at: None,
        }
    }

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn quiet_hours_with_an_injected_clock() {
        let q = QuietHours {
            from: "22:00".into(),
            to: "07:00".into(),
            tz: Some("Europe/Berlin".into()),
            except: Some(Severity::Critical),
        };
        // Berlin is UTC+1 in winter, UTC+2 in summer.
        assert!(in_quiet_hours(&q, ts("2025-01-15T21:30:00Z"))); // 22:30 local
        assert!(in_quiet_hours(&q, ts("2025-01-15T05:59:00Z"))); // 06:59 local
        assert!(!in_quiet_hours(&q, ts("2025-01-15T06:00:00Z"))); // 07:00 local
        assert!(!in_quiet_hours(&q, ts("2025-07-15T19:30:00Z"))); // 21:30 local (summer)
        assert!(in_quiet_hours(&q, ts("2025-07-15T20:30:00Z"))); // 22:30 local (summer)
        let day = QuietHours {
            from: "12:00".into(),
            to: "13:00".into(),
            tz: Some("UTC".into()),
            except: None,
        };
        assert!(in_quiet_hours(&day, ts("2025-01-15T12:30:00Z")));
        assert!(!in_quiet_hours(&day, ts("2025-01-15T13:00:00Z")));

        let n = NotifierConfig {
            name: "n".into(),
            quiet_hours: Some(q),
            ..NotifierConfig::default()
        };
        let mut g = Gate::default();
        let night = ts("2025-01-15T23:00:00Z");
        let now = Instant::now();
        assert!(
            g.check(
                &n,
                &alert(Severity::Warning, AlertState::Firing),
                now,
                night
            )
            .is_some_and(|r| r.contains("quiet"))
        );
        // `except = "critical"` goes through.
        assert_eq!(
            g.check(
                &n,
                &alert(Severity::Critical, AlertState::Firing),
                now,
                night
            ),
            None
        );
    }

    #[test]
    fn dedup_and_rate_limit() {
        let n = NotifierConfig {
            name: "n".into(),
            dedup: majordomo_core::Dur::secs(600),
            max_per_hour: 2,
            ..NotifierConfig::default()
        };
        let mut g = Gate::default();
        let t0 = Instant::now();
        let w = ts("2025-01-15T12:00:00Z");
        let a = alert(Severity::Warning, AlertState::Firing);
        assert_eq!(g.check(&n, &a, t0, w), None);
        assert!(
            g.check(&n, &a, t0 + Duration::from_secs(60), w)
                .is_some_and(|r| r.contains("duplicate"))
        );
        let r = alert(Severity::Warning, AlertState::Resolved);
        assert_eq!(g.check(&n, &r, t0 + Duration::from_secs(61), w), None);
        let mut other = a.clone();
        other.id = "other".into();
        assert!(
            g.check(&n, &other, t0 + Duration::from_secs(62), w)
                .is_some_and(|r| r.contains("rate limit"))
        );
        // After the window, the same alert may be sent again.
        assert_eq!(g.check(&n, &a, t0 + Duration::from_secs(3700), w), None);
    }

    #[test]
    fn a_crash_loop_that_gets_worse_is_not_a_duplicate() {
        let n = NotifierConfig {
            name: "n".into(),
            dedup: majordomo_core::Dur::secs(600),
            max_per_hour: 0,
            ..NotifierConfig::default()
        };
        let mut g = Gate::default();
        let t0 = Instant::now();
        let w = ts("2025-01-15T12:00:00Z");
        let mut a = alert(Severity::Critical, AlertState::Firing);
        a.source = "program".into();
        a.value = Some(1.0);
        assert_eq!(g.check(&n, &a, t0, w), None);
        assert!(g.check(&n, &a, t0 + Duration::from_secs(5), w).is_some());
        a.value = Some(2.0);
        assert_eq!(g.check(&n, &a, t0 + Duration::from_secs(10), w), None);
        a.value = Some(3.0);
        assert_eq!(g.check(&n, &a, t0 + Duration::from_secs(20), w), None);
    }

    #[test]
    fn routing_by_severity_and_source() {
        let n = NotifierConfig {
            name: "n".into(),
            min_severity: Severity::Warning,
            checks: vec!["disk-*".into()],
            resolved: false,
            ..NotifierConfig::default()
        };
        assert!(routes(&n, &alert(Severity::Critical, AlertState::Firing)));
        assert!(!routes(&n, &alert(Severity::Info, AlertState::Firing)));
        assert!(!routes(
            &n,
            &alert(Severity::Critical, AlertState::Resolved)
        ));
        assert!(!routes(&n, &alert(Severity::Critical, AlertState::Pending)));
        let mut a = alert(Severity::Critical, AlertState::Firing);
        a.check = "cpu-high".into();
        assert!(!routes(&n, &a));
    }

    #[test]
    fn the_delivery_record_repairs_a_torn_tail_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.jsonl");
        let d = Delivery {
            at: "2026-01-01T00:00:00Z".into(),
            notifier: "ops".into(),
            kind: NotifierKind::Log,
            alert: "a".into(),
            state: AlertState::Firing,
            severity: Severity::Warning,
            outcome: Outcome::Delivered,
            reason: None,
            attempts: Vec::new(),
            test: false,
        };
        let line = serde_json::to_string(&d).unwrap();
        std::fs::write(&path, format!("{line}\nnot json\n{}", &line[..10])).unwrap();
        let mut r = Record::open(path.clone());
        assert_eq!(r.recent(None, 10).len(), 1);
        // The torn fragment was cut at open; the corrupt line stays, skipped.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{line}\nnot json\n")
        );
        r.add(d);
        let r = Record::open(path);
        assert_eq!(r.recent(None, 10).len(), 2);
        assert_eq!(r.counts()["ops"].delivered, 2);
    }
}
