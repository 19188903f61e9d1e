//! Small helpers shared by the agent's modules: jitter, exponential backoff, duration text.

use std::time::Duration;

use rand::Rng;

/// `base` scaled by a random factor in `[1 - spread, 1 + spread]`, so a fleet of agents does not
/// fall into step.
pub fn jitter(base: Duration, spread: f64) -> Duration {
    let spread = spread.clamp(0.0, 1.0);
    let factor = rand::rng().random_range((1.0 - spread)..=(1.0 + spread));
    base.mul_f64(factor)
}

/// Jittered exponential backoff: each delay is drawn from `[cur/2, cur]`, and `cur` doubles from
/// `min` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    cur: Duration,
}

impl Backoff {
    /// 100 ms doubling to 5 s: the agent's reconnect and retry schedule.
    pub fn standard() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, cur: min }
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.cur.mul_f64(rand::rng().random_range(0.5..=1.0));
        self.cur = (self.cur * 2).min(self.max);
        delay
    }

    /// Back to the shortest delay after a success.
    pub fn reset(&mut self) {
        self.cur = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[4] >= Duration::from_millis(200) && d[4] <= Duration::from_millis(400));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        let j = jitter(Duration::from_millis(100), 0.2);
        assert!(j >= Duration::from_millis(80) && j <= Duration::from_millis(120));
    }
}
