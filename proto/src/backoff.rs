//! [`Backoff`]: the delays between the attempts of a retry loop — exponential, capped, with
//! optional jitter. Pure: it only computes delays; the loop sleeps (and decides when to
//! [`reset`](Backoff::reset)).
//!
//! ```
//! use std::time::Duration;
//! use vantage_proto::backoff::Backoff;
//!
//! let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
//! assert_eq!(b.next_delay(), Duration::from_millis(100));
//! assert_eq!(b.next_delay(), Duration::from_millis(200));
//! assert_eq!(b.next_delay(), Duration::from_millis(300)); // capped
//! b.reset(); // the attempt succeeded
//! assert_eq!(b.next_delay(), Duration::from_millis(100));
//! ```

use std::time::Duration;

use rand::Rng;

/// Exponential backoff: `initial`, then each delay `multiplier` times the one before, never
/// above `max`. With jitter `j`, each delay handed out is drawn uniformly from
/// `[d·(1−j), d]` (`d` the un-jittered delay); the progression itself is not jittered.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: u32,
    jitter: Option<f64>,
    /// The un-jittered delay `next_delay` hands out next.
    next: Duration,
}

impl Backoff {
    /// Doubling from `initial` up to `max`, without jitter. A `max` below `initial` is
    /// raised to it.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            multiplier: 2,
            jitter: None,
            next: initial,
        }
    }

    /// Each delay `multiplier` times the one before (at least 1: a constant delay).
    #[must_use]
    pub fn multiplier(mut self, multiplier: u32) -> Backoff {
        self.multiplier = multiplier.max(1);
        self
    }

    /// Hand out delays drawn from `[d·(1−fraction), d]`; `fraction` is clamped to `0..=1`
    /// (0: no jitter, 0.5: between half and all of `d`, 1: "full jitter").
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Backoff {
        self.jitter = if fraction.is_nan() || fraction <= 0.0 {
            None
        } else {
            Some(fraction.min(1.0))
        };
        self
    }

    /// The delay before the next attempt (jittered, if so configured); advances the
    /// progression.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::thread_rng())
    }

    /// [`next_delay`](Backoff::next_delay) drawing the jitter from `rng`.
    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let delay = self.next;
        self.next = delay
            .checked_mul(self.multiplier)
            .unwrap_or(self.max)
            .min(self.max);
        match self.jitter {
            Some(j) => {
                let factor = rng.gen_range((1.0 - j)..=1.0);
                // `mul_f64` without its panic on a delay too large for f64 seconds.
                Duration::try_from_secs_f64(delay.as_secs_f64() * factor)
                    .map_or(delay, |d| d.min(delay))
            }
            None => delay,
        }
    }

    /// The un-jittered delay [`next_delay`](Backoff::next_delay) is at (for logs).
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Start over from `initial` (an attempt succeeded).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    pub fn initial(&self) -> Duration {
        self.initial
    }

    pub fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn delays(b: &mut Backoff, n: usize) -> Vec<Duration> {
        (0..n).map(|_| b.next_delay()).collect()
    }

    #[test]
    fn doubles_up_to_the_cap_and_stays_there() {
        let mut b = Backoff::new(100 * MS, Duration::from_secs(1));
        assert_eq!(
            delays(&mut b, 7),
            [100, 200, 400, 800, 1000, 1000, 1000].map(|n| n * MS)
        );
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(50 * MS, Duration::from_secs(5));
        delays(&mut b, 4);
        assert_eq!(b.peek(), 800 * MS);
        b.reset();
        assert_eq!(b.peek(), 50 * MS);
        assert_eq!(delays(&mut b, 2), [50 * MS, 100 * MS]);
    }

    #[test]
    fn multiplier_is_configurable_and_at_least_one() {
        let mut b = Backoff::new(10 * MS, Duration::from_secs(1)).multiplier(3);
        assert_eq!(delays(&mut b, 4), [10, 30, 90, 270].map(|n| n * MS));
        let mut flat = Backoff::new(10 * MS, Duration::from_secs(1)).multiplier(0);
        assert_eq!(delays(&mut flat, 3), [10 * MS; 3]);
    }

    #[test]
    fn the_cap_is_never_below_initial_and_never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.max(), Duration::from_secs(2));
        assert_eq!(delays(&mut b, 2), [Duration::from_secs(2); 2]);

        let mut huge = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        delays(&mut huge, 3);
        assert_eq!(huge.peek(), Duration::MAX);
    }

    #[test]
    fn jitter_stays_in_its_band_and_does_not_jitter_the_progression() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(100 * MS, 10_000 * MS).jitter(0.5);
        let mut nominal = 100 * MS;
        let mut below = false;
        for _ in 0..200 {
            let d = b.next_delay_with(&mut rng);
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} for {nominal:?}");
            below |= d < nominal;
            nominal = (nominal * 2).min(10_000 * MS);
            assert_eq!(b.peek(), nominal);
        }
        assert!(below, "jitter changes some delays");
    }

    #[test]
    fn jitter_fraction_is_clamped() {
        let none = Backoff::new(MS, MS).jitter(0.0);
        assert_eq!(none, Backoff::new(MS, MS));
        let nan = Backoff::new(MS, MS).jitter(f64::NAN);
        assert_eq!(nan, Backoff::new(MS, MS));
        let mut full = Backoff::new(100 * MS, 100 * MS).jitter(7.0);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert!(full.next_delay_with(&mut rng) <= 100 * MS);
        }
    }

    #[test]
    fn next_delay_uses_the_thread_rng() {
        let mut b = Backoff::new(100 * MS, 100 * MS).jitter(0.5);
        for d in delays(&mut b, 50) {
            assert!(d >= 50 * MS && d <= 100 * MS, "{d:?}");
        }
    }
}
