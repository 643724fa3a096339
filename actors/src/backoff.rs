//! Exponential backoff with jitter.

use std::time::Duration;

/// The delay before attempt `attempt` (1-based): `base · 2^(attempt-1)`, capped, then spread
/// by ±20 % so sessions that failed together do not retry together.
pub fn delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let raw = base.saturating_mul(1u32 << exp).min(cap);
    let spread = 0.8 + fastrand::f64() * 0.4;
    raw.mul_f64(spread).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_doubles_and_stays_under_the_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(300);
        for _ in 0..100 {
            let first = delay(1, base, cap);
            assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
            let fourth = delay(4, base, cap);
            assert!(fourth >= Duration::from_millis(6400) && fourth <= Duration::from_millis(9600));
            assert!(delay(40, base, cap) <= cap);
            assert!(delay(40, base, cap) >= cap.mul_f64(0.8));
        }
    }
}
