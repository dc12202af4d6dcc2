//! The pure scheduling core: when a job's occurrences are, in its time zone, and what runs after
//! downtime. No clock of its own: every function takes "now", so the tests inject it.
//!
//! - Cron is `croner`'s, evaluated on `jiff` zoned times: an occurrence inside a DST gap runs
//!   once, right after the gap; one inside a repeated hour runs once (the first); leap days
//!   are real days.
//! - `every` is anchored to the Unix epoch: occurrence k is at k × period, whatever the start
//!   time or the lateness of earlier runs, so it never drifts and agrees across restarts and
//!   between the daemon and the backup task.
//! - Catch-up (`persistent`): after downtime, only the latest missed occurrence runs, once.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// When a job runs.
#[derive(Debug, Clone)]
pub enum Plan {
    Cron { cron: Box<Cron>, tz: TimeZone },
    Every { period_ms: i64 },
    At(Timestamp),
}

/// What to do with a job's missed occurrences, given its run record and now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// The job was never seen: record this occurrence as the baseline, run nothing.
    Baseline(Timestamp),
    /// Run this occurrence (the latest missed one), once.
    Run(Timestamp),
    Nothing,
}

impl Plan {
    pub fn from_job(
        schedule: Option<&str>,
        every: Option<Duration>,
        at: Option<&str>,
        timezone: Option<&str>,
    ) -> Result<Plan, String> {
        let tz = match timezone {
            Some(name) => TimeZone::get(name).map_err(|e| {
                format!("unknown time zone {name:?} ({e}); use an IANA name like \"Europe/Berlin\"")
            })?,
            None => TimeZone::system(),
        };
        if let Some(s) = schedule {
            let fields = s.split_whitespace().count();
            if !(fields == 5 || fields == 6 || s.trim_start().starts_with('@')) {
                return Err(format!(
                    "{s:?} has {fields} fields; a cron schedule has 5 (minute hour day month weekday) or 6 (seconds first)"
                ));
            }
            let cron = CronParser::builder()
                .seconds(Seconds::Optional)
                .year(Year::Disallowed)
                .build()
                .parse(s)
                .map_err(|e| format!("{s:?} is not a valid cron schedule: {e}"))?;
            return Ok(Plan::Cron {
                cron: Box::new(cron),
                tz,
            });
        }
        if let Some(p) = every {
            if p < Duration::from_secs(1) {
                return Err(format!(
                    "every {} is too short; use at least \"1s\"",
                    humanize(p)
                ));
            }
            return Ok(Plan::Every {
                period_ms: i64::try_from(p.as_millis()).unwrap_or(i64::MAX),
            });
        }
        if let Some(a) = at {
            if let Ok(ts) = a.parse::<Timestamp>() {
                return Ok(Plan::At(ts));
            }
            let dt: DateTime = a.parse().map_err(|e| {
                format!("{a:?} is not a date and time ({e}); write it as 2026-12-24T18:00")
            })?;
            // A time in a gap is moved past it; one in a repeated hour is the first.
            let z = tz
                .to_ambiguous_zoned(dt)
                .compatible()
                .map_err(|e| format!("{a:?} does not exist in the time zone: {e}"))?;
            return Ok(Plan::At(z.timestamp()));
        }
        Err("no schedule".into())
    }

    /// The first occurrence strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Plan::Cron { cron, tz } => {
                let z = t.to_zoned(tz.clone());
                cron.find_next_occurrence(&z, false)
                    .ok()
                    .map(|z: Zoned| z.timestamp())
            }
            Plan::Every { period_ms } => {
                let ms = t.as_millisecond();
                let k = ms.div_euclid(*period_ms) + 1;
                Timestamp::from_millisecond(k.checked_mul(*period_ms)?).ok()
            }
            Plan::At(a) => (*a > t).then_some(*a),
        }
    }

    /// The last occurrence at or before `t`.
    pub fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Plan::Cron { cron, tz } => {
                // croner works in whole seconds: search from the second that holds `t`.
                let secs = Timestamp::from_second(t.as_second()).ok()?;
                let z = secs.to_zoned(tz.clone());
                cron.find_previous_occurrence(&z, true)
                    .ok()
                    .map(|z: Zoned| z.timestamp())
            }
            Plan::Every { period_ms } => {
                let ms = t.as_millisecond();
                Timestamp::from_millisecond(ms.div_euclid(*period_ms) * period_ms).ok()
            }
            Plan::At(a) => (*a <= t).then_some(*a),
        }
    }
}

/// After downtime: `last_ms` is the last occurrence the run record has (claimed or baseline).
pub fn catch_up(plan: &Plan, last_ms: Option<i64>, now: Timestamp) -> CatchUp {
    let Some(latest) = plan.last_at_or_before(now) else {
        return CatchUp::Nothing;
    };
    match last_ms {
        None => CatchUp::Baseline(latest),
        Some(l) if latest.as_millisecond() > l => CatchUp::Run(latest),
        Some(_) => CatchUp::Nothing,
    }
}

fn humanize(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cron(s: &str, tz: &str) -> Plan {
        Plan::from_job(Some(s), None, None, Some(tz)).expect("plan")
    }

    /// A wall-clock time in `tz` (the earlier one if repeated).
    fn local(tz: &str, s: &str) -> Timestamp {
        let dt: DateTime = s.parse().expect("civil");
        TimeZone::get(tz)
            .expect("tz")
            .to_ambiguous_zoned(dt)
            .earlier()
            .expect("zoned")
            .timestamp()
    }

    /// Every occurrence in [from, to), as the clock would see them.
    fn occurrences(p: &Plan, from: Timestamp, to: Timestamp) -> Vec<Timestamp> {
        let mut out = vec![];
        let mut t = from;
        while let Some(n) = p.next_after(t) {
            if n >= to {
                break;
            }
            out.push(n);
            t = n;
        }
        out
    }

    fn show(ts: &[Timestamp], tz: &str) -> Vec<String> {
        let tz = TimeZone::get(tz).expect("tz");
        ts.iter()
            .map(|t| t.to_zoned(tz.clone()).strftime("%F %T %Z").to_string())
            .collect()
    }

    #[test]
    fn berlin_spring_gap_runs_once_right_after_the_gap() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        let p = cron("30 2 * * *", "Europe/Berlin");
        let got = occurrences(
            &p,
            local("Europe/Berlin", "2026-03-28T00:00"),
            local("Europe/Berlin", "2026-03-31T00:00"),
        );
        assert_eq!(
            show(&got, "Europe/Berlin"),
            [
                "2026-03-28 02:30:00 CET",
                "2026-03-29 03:00:00 CEST",
                "2026-03-30 02:30:00 CEST"
            ]
        );
    }

    #[test]
    fn berlin_autumn_repeat_runs_once() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let p = cron("30 2 * * *", "Europe/Berlin");
        let got = occurrences(
            &p,
            local("Europe/Berlin", "2026-10-24T00:00"),
            local("Europe/Berlin", "2026-10-27T00:00"),
        );
        assert_eq!(got.len(), 3, "{:?}", show(&got, "Europe/Berlin"));
        assert_eq!(
            show(&got, "Europe/Berlin")[1],
            "2026-10-25 02:30:00 CEST",
            "the first of the two"
        );
    }

    #[test]
    fn new_york_gap_and_repeat() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT.
        let p = cron("30 2 * * *", "America/New_York");
        let got = occurrences(
            &p,
            local("America/New_York", "2026-03-07T12:00"),
            local("America/New_York", "2026-03-09T12:00"),
        );
        assert_eq!(
            show(&got, "America/New_York"),
            ["2026-03-08 03:00:00 EDT", "2026-03-09 02:30:00 EDT"]
        );
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
        let p = cron("30 1 * * *", "America/New_York");
        let got = occurrences(
            &p,
            local("America/New_York", "2026-10-31T12:00"),
            local("America/New_York", "2026-11-02T12:00"),
        );
        assert_eq!(
            show(&got, "America/New_York"),
            ["2026-11-01 01:30:00 EDT", "2026-11-02 01:30:00 EST"]
        );
    }

    #[test]
    fn hourly_jobs_keep_real_hours_across_the_gap() {
        // Every hour at :15 across Berlin's spring gap: 23 occurrences that day, none doubled.
        let p = cron("15 * * * *", "Europe/Berlin");
        let got = occurrences(
            &p,
            local("Europe/Berlin", "2026-03-29T00:00"),
            local("Europe/Berlin", "2026-03-30T00:00"),
        );
        assert_eq!(got.len(), 23, "{:?}", show(&got, "Europe/Berlin"));
    }

    #[test]
    fn leap_day() {
        let p = cron("0 12 29 2 *", "Europe/Berlin");
        let n = p
            .next_after(local("Europe/Berlin", "2026-01-01T00:00"))
            .expect("next");
        assert_eq!(show(&[n], "Europe/Berlin"), ["2028-02-29 12:00:00 CET"]);
        let n2 = p.next_after(n).expect("next");
        assert_eq!(show(&[n2], "Europe/Berlin"), ["2032-02-29 12:00:00 CET"]);
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let p = cron("*/10 * * * * *", "UTC");
        let t: Timestamp = "2026-01-01T00:00:01Z".parse().expect("ts");
        assert_eq!(
            p.next_after(t).expect("next").to_string(),
            "2026-01-01T00:00:10Z"
        );
        assert!(Plan::from_job(Some("* * *"), None, None, Some("UTC")).is_err());
        assert!(Plan::from_job(Some("61 * * * *"), None, None, Some("UTC")).is_err());
        assert!(Plan::from_job(Some("* * * * *"), None, None, Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn at_is_local_in_the_time_zone() {
        let p = Plan::from_job(None, None, Some("2026-12-24T18:00"), Some("Europe/Berlin"))
            .expect("plan");
        let Plan::At(t) = p else { panic!("at") };
        assert_eq!(t.to_string(), "2026-12-24T17:00:00Z");
        assert_eq!(p.next_after(t), None);
        assert_eq!(p.last_at_or_before(t), Some(t));
    }

    #[test]
    fn catch_up_runs_the_latest_missed_occurrence_once() {
        let p = cron("0 * * * *", "UTC");
        let last: Timestamp = "2026-01-01T03:00:00Z".parse().expect("ts");
        let now: Timestamp = "2026-01-01T07:42:00Z".parse().expect("ts");
        // Four hours missed: one run, for 07:00.
        let c = catch_up(&p, Some(last.as_millisecond()), now);
        assert_eq!(c, CatchUp::Run("2026-01-01T07:00:00Z".parse().expect("ts")));
        // Once it is recorded, nothing more.
        let CatchUp::Run(t) = c else { unreachable!() };
        assert_eq!(
            catch_up(&p, Some(t.as_millisecond()), now),
            CatchUp::Nothing
        );
        // Never seen: a baseline, no run.
        assert!(matches!(catch_up(&p, None, now), CatchUp::Baseline(_)));
        // Suspend across a DST change: still one.
        let p = cron("30 2 * * *", "Europe/Berlin");
        let c = catch_up(
            &p,
            Some(local("Europe/Berlin", "2026-03-20T02:30").as_millisecond()),
            local("Europe/Berlin", "2026-04-02T09:00"),
        );
        assert_eq!(c, CatchUp::Run(local("Europe/Berlin", "2026-04-02T02:30")));
    }

    proptest! {
        #[test]
        fn every_never_drifts(period_s in 1i64..100_000, t_ms in 0i64..4_000_000_000_000) {
            let p = Plan::Every { period_ms: period_s * 1000 };
            let t = Timestamp::from_millisecond(t_ms).expect("ts");
            let n = p.next_after(t).expect("next");
            prop_assert!(n > t);
            prop_assert_eq!(n.as_millisecond() % (period_s * 1000), 0);
            prop_assert!(n.as_millisecond() - t_ms <= period_s * 1000);
            prop_assert_eq!(p.last_at_or_before(n), Some(n));
            let l = p.last_at_or_before(t).expect("last");
            prop_assert!(l <= t && p.next_after(l) == Some(n) || l == n);
        }

        #[test]
        fn cron_next_is_after_and_nothing_is_skipped(
            t_s in 1_700_000_000i64..1_900_000_000,
            zone in prop::sample::select(vec!["Europe/Berlin", "America/New_York", "UTC", "Australia/Lord_Howe"]),
            sched in prop::sample::select(vec!["*/7 * * * *", "30 2 * * *", "0 0 29 2 *", "15 1,2,3 * * 0", "*/20 * * * * *"]),
        ) {
            let p = cron(sched, zone);
            let t = Timestamp::from_second(t_s).expect("ts");
            let n = p.next_after(t).expect("next");
            prop_assert!(n > t);
            // The latest occurrence before `n` is at or before `t`: none was skipped.
            let before = p.last_at_or_before(n - jiff::SignedDuration::from_secs(1));
            prop_assert!(before.is_none_or(|b| b <= t), "{:?} between {} and {}", before, t, n);
        }

        #[test]
        fn catch_up_is_idempotent(t_s in 1_700_000_000i64..1_900_000_000, gap in 0i64..10_000_000) {
            let p = cron("*/5 * * * *", "Europe/Berlin");
            let last = Timestamp::from_second(t_s).expect("ts");
            let now = Timestamp::from_second(t_s + gap).expect("ts");
            let last = p.last_at_or_before(last).expect("last");
            match catch_up(&p, Some(last.as_millisecond()), now) {
                CatchUp::Run(r) => {
                    prop_assert!(r > last && r <= now);
                    prop_assert_eq!(catch_up(&p, Some(r.as_millisecond()), now), CatchUp::Nothing);
                }
                CatchUp::Nothing => prop_assert!(p.next_after(last).is_none_or(|n| n > now)),
                CatchUp::Baseline(_) => prop_assert!(false, "a known job has no baseline"),
            }
        }
    }
}
