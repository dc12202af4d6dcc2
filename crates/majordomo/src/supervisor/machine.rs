//! The pure parts of a program's state machine (see `docs/supervisor.md`): state names, the
//! restart decision, the backoff and the start limit. No I/O and no clock of their own, so they
//! are unit- and property-tested.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::config::{ProgramConfig, RestartPolicy};

/// The states of a program. `as_str` is what `ps`, events and `docs/supervisor.md` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not running and not wanted (initial state when `autostart = false`, or after `stop`).
    Stopped,
    /// Wanted, waiting for its `depends_on` programs to be ready.
    Waiting,
    /// Running `pre_start`, then creating the process.
    Starting,
    /// The process runs; the readiness gate has not passed yet.
    Running,
    /// The process runs and passed its readiness gate.
    Ready,
    /// Being stopped: stop signal sent to its group, SIGKILL after `stop_timeout`.
    Stopping,
    /// The process ended and will not be restarted (policy), or just ended (transient).
    Exited,
    /// Waiting out the restart delay.
    Backoff,
    /// Gave up: start limit hit, or it cannot be started at all (missing executable, cwd, user).
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Waiting => "waiting",
            State::Starting => "starting",
            State::Running => "running",
            State::Ready => "ready",
            State::Stopping => "stopping",
            State::Exited => "exited",
            State::Backoff => "backoff",
            State::Failed => "failed",
        }
    }

    /// Whether a process of the program exists in this state.
    pub fn has_process(self) -> bool {
        matches!(self, State::Running | State::Ready | State::Stopping)
    }
}

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

/// The largest delay before restart number `failures` (1-based): `initial × 2^(failures-1)`,
/// capped at `max`.
pub fn backoff_cap(initial: Duration, max: Duration, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(32);
    initial
        .checked_mul(1u32 << shift.min(31))
        .unwrap_or(max)
        .min(max)
}

/// Full jitter: a uniformly random delay in `[0, cap]`; `unit` is a random number in `[0, 1)`.
pub fn full_jitter(cap: Duration, unit: f64) -> Duration {
    cap.mul_f64(unit.clamp(0.0, 1.0))
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

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs(1);
        let caps: Vec<u64> = (1..=8)
            .map(|n| backoff_cap(s, Duration::from_secs(60), n).as_secs())
            .collect();
        assert_eq!(caps, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(
            backoff_cap(Duration::ZERO, Duration::ZERO, 5),
            Duration::ZERO
        );
        assert_eq!(full_jitter(Duration::from_secs(2), 0.5), s);
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
            let (i, m) = (Duration::from_millis(init_ms), Duration::from_millis(max_ms));
            let a = backoff_cap(i, m, n);
            let b = backoff_cap(i, m, n + 1);
            prop_assert!(a <= b);
            prop_assert!(b <= m);
            prop_assert!(full_jitter(a, u) <= a);
        }
    }
}
