//! Alert state machine: ok → pending → firing → resolved, with `for` and hysteresis.
//!
//! Pure logic: callers observe a condition for an alert id and get back the transitions to
//! publish. Time is passed in, so tests drive it without sleeping.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

pub use majordomo_proto::monitor::{Alert, AlertState};

use crate::config::CheckConfig;

/// What a check saw this time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// The bad condition holds.
    Trip,
    /// Between the threshold and the clear level: a firing alert stays firing, a pending one is
    /// cancelled.
    Hold,
    /// Healthy.
    Clear,
}

/// The metric condition of a check for value `v`.
pub fn metric_cond(c: &CheckConfig, v: f64) -> Cond {
    if let Some(a) = c.above {
        let clear = c.clear_below.unwrap_or(a);
        if v > a {
            Cond::Trip
        } else if v < clear || (clear == a && v <= a) {
            Cond::Clear
        } else {
            Cond::Hold
        }
    } else if let Some(b) = c.below {
        let clear = c.clear_above.unwrap_or(b);
        if v < b {
            Cond::Trip
        } else if v > clear || (clear == b && v >= b) {
            Cond::Clear
        } else {
            Cond::Hold
        }
    } else {
        Cond::Clear
    }
}

struct Active {
    alert: Alert,
    since: Instant,
}

/// Every active alert and the most recent ended ones.
#[derive(Default)]
pub struct Engine {
    active: BTreeMap<String, Active>,
    recent: VecDeque<Alert>,
}

const RECENT: usize = 100;

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What one observation is about.
pub struct Observation<'a> {
    pub check: &'a CheckConfig,
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub cond: Cond,
    pub value: Option<f64>,
    /// Describes what was seen, e.g. "disk.used_pct{mount=/} is 93.1 (above 90)".
    pub detail: String,
}

impl Engine {
    /// Applies one observation; returns the transitions, in order, to publish.
    pub fn observe(&mut self, o: Observation<'_>, now: Instant, wall: SystemTime) -> Vec<Alert> {
        let mut out = Vec::new();
        let for_ = o.check.for_.get();
        let summary = o.check.summary.clone().unwrap_or_else(|| o.detail.clone());
        match (self.active.get_mut(&o.id), o.cond) {
            (None, Cond::Trip) => {
                let alert = Alert {
                    id: o.id.clone(),
                    check: o.check.name.clone(),
                    source: o.check.kind().to_string(),
                    state: AlertState::Pending,
                    severity: o.check.severity,
                    labels: o.labels,
                    value: o.value,
                    summary,
                    since: rfc3339(wall),
                    fired_at: None,
                    resolved_at: None,
                };
                out.push(alert.clone());
                let mut a = Active { alert, since: now };
                if for_.is_zero() {
                    fire(&mut a, wall);
                    out.push(a.alert.clone());
                }
                self.active.insert(o.id, a);
            }
            (None, _) => {}
            (Some(a), Cond::Trip) => {
                a.alert.value = o.value;
                a.alert.summary = summary;
                if a.alert.state == AlertState::Pending && now.duration_since(a.since) >= for_ {
                    fire(a, wall);
                    out.push(a.alert.clone());
                }
            }
            (Some(a), Cond::Hold) if a.alert.state == AlertState::Firing => {
                a.alert.value = o.value;
            }
            (Some(_), _) => {
                if let Some(mut a) = self.active.remove(&o.id) {
                    a.alert.value = o.value;
                    a.alert.state = if a.alert.state == AlertState::Firing {
                        a.alert.resolved_at = Some(rfc3339(wall));
                        a.alert.summary = format!("resolved: {}", o.detail);
                        AlertState::Resolved
                    } else {
                        AlertState::Cancelled
                    };
                    out.push(a.alert.clone());
                    self.recent.push_front(a.alert);
                    self.recent.truncate(RECENT);
                }
            }
        }
        out
    }

    /// Ends the active metric alerts whose series was not reported this cycle (an unmounted
    /// disk, a removed interface, a stopped program): firing ones resolve, pending ones cancel.
    pub fn sweep_metric(
        &mut self,
        seen: &std::collections::HashSet<String>,
        wall: SystemTime,
    ) -> Vec<Alert> {
        let gone: Vec<String> = self
            .active
            .iter()
            .filter(|(id, a)| a.alert.source == "metric" && !seen.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Vec::new();
        for id in gone {
            if let Some(mut a) = self.active.remove(&id) {
                a.alert.state = if a.alert.state == AlertState::Firing {
                    a.alert.resolved_at = Some(rfc3339(wall));
                    AlertState::Resolved
                } else {
                    AlertState::Cancelled
                };
                a.alert.summary = format!("{id}: the series is no longer reported");
                out.push(a.alert.clone());
                self.recent.push_front(a.alert);
                self.recent.truncate(RECENT);
            }
        }
        out
    }

    /// Drops the alerts of checks that no longer exist (after a config change).
    pub fn retain_checks(&mut self, names: &[&str]) {
        self.active
            .retain(|_, a| names.contains(&a.alert.check.as_str()));
    }

    pub fn active(&self) -> Vec<Alert> {
        self.active.values().map(|a| a.alert.clone()).collect()
    }

    pub fn recent(&self) -> Vec<Alert> {
        self.recent.iter().cloned().collect()
    }

    pub fn counts(&self) -> (usize, usize) {
        let firing = self
            .active
            .values()
            .filter(|a| a.alert.state == AlertState::Firing)
            .count();
        (firing, self.active.len() - firing)
    }

    /// How long an alert has been in its state (tests, `alerts`).
    pub fn age(&self, id: &str, now: Instant) -> Option<Duration> {
        self.active.get(id).map(|a| now.duration_since(a.since))
    }
}

fn fire(a: &mut Active, wall: SystemTime) {
    a.alert.state = AlertState::Firing;
    a.alert.fired_at = Some(rfc3339(wall));
}

#[cfg(test)]
mod tests {
    use super::*;
    use majordomo_core::Dur;

    fn check(for_s: u64) -> CheckConfig {
        CheckConfig {
            name: "hot".into(),
            metric: Some("cpu.used_pct".into()),
            above: Some(90.0),
            clear_below: Some(80.0),
            for_: Dur::secs(for_s),
            ..CheckConfig::default()
        }
    }

    fn obs(c: &CheckConfig, v: f64) -> Observation<'_> {
        Observation {
            check: c,
            id: c.name.clone(),
            labels: BTreeMap::new(),
            cond: metric_cond(c, v),
            value: Some(v),
            detail: format!("{v}"),
        }
    }

    fn states(v: &[Alert]) -> Vec<AlertState> {
        v.iter().map(|a| a.state).collect()
    }

    #[test]
    fn fires_after_for_and_resolves_with_hysteresis() {
        let c = check(60);
        let mut e = Engine::default();
        let t0 = Instant::now();
        let w = SystemTime::now();
        assert_eq!(
            states(&e.observe(obs(&c, 95.0), t0, w)),
            vec![AlertState::Pending]
        );
        assert!(
            e.observe(obs(&c, 95.0), t0 + Duration::from_secs(30), w)
                .is_empty()
        );
        assert_eq!(
            states(&e.observe(obs(&c, 95.0), t0 + Duration::from_secs(60), w)),
            vec![AlertState::Firing]
        );
        // Hovering between clear_below and above: still firing, no flapping.
        for s in [61, 62, 63] {
            assert!(
                e.observe(obs(&c, 85.0), t0 + Duration::from_secs(s), w)
                    .is_empty()
            );
            assert!(
                e.observe(obs(&c, 91.0), t0 + Duration::from_secs(s), w)
                    .is_empty()
            );
        }
        assert_eq!(e.counts(), (1, 0));
        assert_eq!(
            states(&e.observe(obs(&c, 79.0), t0 + Duration::from_secs(70), w)),
            vec![AlertState::Resolved]
        );
        assert_eq!(e.counts(), (0, 0));
        assert_eq!(e.recent()[0].state, AlertState::Resolved);
    }

    #[test]
    fn pending_is_cancelled_when_the_condition_goes_away() {
        let c = check(60);
        let mut e = Engine::default();
        let t0 = Instant::now();
        let w = SystemTime::now();
        e.observe(obs(&c, 95.0), t0, w);
        assert_eq!(
            states(&e.observe(obs(&c, 85.0), t0 + Duration::from_secs(10), w)),
            vec![AlertState::Cancelled]
        );
    }

    #[test]
    fn for_zero_fires_at_once_and_below_works() {
        let c = CheckConfig {
            name: "low".into(),
            metric: Some("memory.available_bytes".into()),
            below: Some(10.0),
            clear_above: Some(20.0),
            ..CheckConfig::default()
        };
        let mut e = Engine::default();
        let t0 = Instant::now();
        let w = SystemTime::now();
        assert_eq!(
            states(&e.observe(obs(&c, 5.0), t0, w)),
            vec![AlertState::Pending, AlertState::Firing]
        );
        assert!(e.observe(obs(&c, 15.0), t0, w).is_empty());
        assert_eq!(
            states(&e.observe(obs(&c, 25.0), t0, w)),
            vec![AlertState::Resolved]
        );
    }

    #[test]
    fn alerts_of_vanished_series_end() {
        let c = check(0);
        let mut e = Engine::default();
        let w = SystemTime::now();
        e.observe(obs(&c, 95.0), Instant::now(), w);
        let mut seen = std::collections::HashSet::new();
        seen.insert("hot".to_string());
        assert!(e.sweep_metric(&seen, w).is_empty());
        let ended = e.sweep_metric(&std::collections::HashSet::new(), w);
        assert_eq!(states(&ended), vec![AlertState::Resolved]);
        assert_eq!(e.counts(), (0, 0));
    }

    #[test]
    fn without_clear_level_the_threshold_clears() {
        let c = CheckConfig {
            clear_below: None,
            ..check(0)
        };
        assert_eq!(metric_cond(&c, 90.0), Cond::Clear);
        assert_eq!(metric_cond(&c, 90.5), Cond::Trip);
    }
}
