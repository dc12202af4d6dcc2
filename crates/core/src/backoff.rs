//! Exponential backoff with full jitter: the one retry delay of the supervisor, the pipeline's
//! uploads and the notifiers.

use std::time::Duration;

/// The delay before retry number `attempt` (1 for the first retry): a uniformly random time
/// between zero and `min(cap, base * 2^(attempt-1))` ("full jitter"), so that many clients
/// that failed together do not retry together.
pub fn full_jitter(base: Duration, cap: Duration, attempt: u32) -> Duration {
    scale(ceiling(base, cap, attempt), fastrand::f64())
}

/// The pure half of [`full_jitter`]: `unit` (in `[0, 1)`) of `ceiling`, for callers that pass
/// their randomness in (property tests, state machines).
pub fn scale(ceiling: Duration, unit: f64) -> Duration {
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// The upper bound [`full_jitter`] draws from: `min(cap, base * 2^(attempt-1))`.
pub fn ceiling(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(cap).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_exceeds_the_cap_or_the_doubling(base_ms in 0u64..10_000, cap_ms in 0u64..100_000, attempt in 0u32..200) {
            let (base, cap) = (Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            let d = full_jitter(base, cap, attempt);
            prop_assert!(d <= cap);
            prop_assert!(d <= ceiling(base, cap, attempt));
        }
    }

    #[test]
    fn doubles_until_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(ceiling(s(1), s(60), 1), s(1));
        assert_eq!(ceiling(s(1), s(60), 3), s(4));
        assert_eq!(ceiling(s(1), s(60), 7), s(60));
        assert_eq!(ceiling(s(1), s(60), 100), s(60));
    }
}
