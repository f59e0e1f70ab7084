//! Reconnect delays: exponential backoff with jitter, reset after a successful connection.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with "equal jitter": each delay is half the exponential step plus a
/// random part of up to the other half, so a relay restart does not bring every hub back in
/// the same millisecond, yet no delay collapses to zero.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays start at `initial` and double up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt; each call grows the following one.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX);
        let step = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let jitter_ms = rng.gen_range(0..=half.as_millis().max(1) as u64);
        half + Duration::from_millis(jitter_ms)
    }

    /// Back to the first step, after a connection was established.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay(&mut rng)).collect();
        for (i, d) in delays.iter().enumerate() {
            let step = Duration::from_millis(100 * (1 << i)).min(Duration::from_secs(2));
            assert!(
                *d >= step / 2 && *d <= step,
                "attempt {i}: {d:?} not in [{:?}, {step:?}]",
                step / 2
            );
        }
        assert!(
            delays[7] >= Duration::from_secs(1),
            "capped at max, not below half of it"
        );
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
        // Jitter: two hubs with different seeds do not pick the same delays.
        let mut other = StdRng::seed_from_u64(8);
        let mut b2 = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut b1 = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut rng1 = StdRng::seed_from_u64(7);
        let same = (0..8)
            .filter(|_| b1.next_delay(&mut rng1) == b2.next_delay(&mut other))
            .count();
        assert!(same < 8);
    }
}
