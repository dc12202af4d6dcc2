//! The pure parts of a program's state machine (see `docs/supervisor.md`): the restart
//! decision, the backoff delay and the start limit. No I/O, no clock and no randomness of their
//! own, so they are unit- and property-tested. The states themselves are
//! [`majordomo_proto::supervisor::ProgramState`] (they travel in `ps` replies and events).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use majordomo_core::backoff;

use super::config::{ProgramConfig, RestartPolicy};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Code(i32),
    /// Killed by this signal (Unix).
    #[cfg_attr(not(unix), allow(dead_code))]
    Signal(i32),
    /// The supervisor killed it (failed health check, memory limit, readiness timeout).
    Killed,
    /// `pre_start` failed, or the process could not be created this time: no run happened.
    StartFailed,
}

/// Whether the restart policy asks for another run after `exit`.
pub fn wants_restart(cfg: &ProgramConfig, exit: ExitKind) -> bool {
    let success = matches!(exit, ExitKind::Code(c) if cfg.success_codes.contains(&c));
    match cfg.restart {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !success,
        RestartPolicy::Never => false,
    }
}

/// The delay before restart number `failures` (1-based): the cap `initial × 2^(failures-1)`
/// (at most `max`), and `unit` (a random number in `[0, 1)`) of it ("full jitter").
pub fn restart_delay(cfg: &ProgramConfig, failures: u32, unit: f64) -> (Duration, Duration) {
    let cap = backoff::ceiling(cfg.backoff_initial.get(), cfg.backoff_max.get(), failures);
    (backoff::scale(cap, unit), cap)
}

/// Counts starts in a sliding window.
#[derive(Debug, Default)]
pub struct StartLimit {
    starts: VecDeque<Instant>,
}

impl StartLimit {
    /// Records a start at `now`; false when it would be more than `burst` starts within
    /// `interval` (the start is then not recorded). `burst = 0` never limits.
    pub fn allow(&mut self, now: Instant, burst: u32, interval: Duration) -> bool {
        if burst == 0 {
            return true;
        }
        while let Some(first) = self.starts.front() {
            if now.saturating_duration_since(*first) >= interval {
                self.starts.pop_front();
            } else {
                break;
            }
        }
        if self.starts.len() >= burst as usize {
            return false;
        }
        self.starts.push_back(now);
        true
    }

    pub fn reset(&mut self) {
        self.starts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backoff(initial_ms: u64, max_ms: u64) -> ProgramConfig {
        ProgramConfig {
            backoff_initial: majordomo_core::Dur(Duration::from_millis(initial_ms)),
            backoff_max: majordomo_core::Dur(Duration::from_millis(max_ms)),
            ..Default::default()
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cfg = backoff(1000, 60_000);
        let caps: Vec<u64> = (1..=8)
            .map(|n| restart_delay(&cfg, n, 0.0).1.as_secs())
            .collect();
        assert_eq!(caps, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(restart_delay(&backoff(0, 0), 5, 0.9).1, Duration::ZERO);
        assert_eq!(
            restart_delay(&backoff(1000, 60_000), 2, 0.5).0,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn policy_decides_restarts() {
        let mut cfg = ProgramConfig {
            success_codes: vec![0, 3],
            ..Default::default()
        };
        assert!(!wants_restart(&cfg, ExitKind::Code(3)));
        assert!(wants_restart(&cfg, ExitKind::Code(1)));
        assert!(wants_restart(&cfg, ExitKind::Signal(9)));
        assert!(wants_restart(&cfg, ExitKind::Killed));
        cfg.restart = RestartPolicy::Always;
        assert!(wants_restart(&cfg, ExitKind::Code(0)));
        cfg.restart = RestartPolicy::Never;
        assert!(!wants_restart(&cfg, ExitKind::Code(1)));
    }

    #[test]
    fn start_limit_counts_in_a_window() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let mut l = StartLimit::default();
        assert!(l.allow(t0, 2, w));
        assert!(l.allow(t0 + Duration::from_secs(1), 2, w));
        assert!(!l.allow(t0 + Duration::from_secs(2), 2, w));
        assert!(l.allow(t0 + Duration::from_secs(10), 2, w));
        assert!(l.allow(t0, 0, w));
    }

    proptest! {
        #[test]
        fn backoff_is_monotonic_and_bounded(init_ms in 0u64..100_000, max_ms in 0u64..1_000_000, n in 1u32..200, u in 0.0f64..1.0) {
            let cfg = backoff(init_ms, max_ms);
            let (delay, a) = restart_delay(&cfg, n, u);
            let (_, b) = restart_delay(&cfg, n + 1, u);
            prop_assert!(a <= b);
            prop_assert!(b <= cfg.backoff_max.get());
            prop_assert!(delay <= a);
        }
    }
}
