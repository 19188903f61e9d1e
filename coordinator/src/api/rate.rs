//! Per-identity rate limits on writes: a token bucket per caller, so one runaway script or
//! agent-turned-operator cannot flood the Raft log. Reads are not limited.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// `rate` writes per second on average, bursts of up to `burst`, per identity.
#[derive(Debug)]
pub struct WriteLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl WriteLimiter {
    /// `None` when `rate` is 0 (no limit).
    pub fn new(rate: f64, burst: u32) -> Option<WriteLimiter> {
        (rate > 0.0).then(|| WriteLimiter {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one token for `who` at `now`; `Err` names the limit when none is left.
    pub fn take(&self, who: &str, now: Instant) -> Result<(), String> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets.entry(who.to_string()).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(format!(
                "{who} exceeded the write rate limit of {} per second (burst {}); retry later",
                self.rate, self.burst
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate_per_identity() {
        let l = WriteLimiter::new(2.0, 3).expect("limited");
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take("a", t0).is_ok());
        }
        let err = l.take("a", t0).expect_err("burst spent");
        assert!(
            err.contains("write rate limit of 2 per second (burst 3)"),
            "{err}"
        );
        assert!(
            l.take("b", t0).is_ok(),
            "another identity has its own bucket"
        );
        assert!(
            l.take("a", t0 + Duration::from_millis(500)).is_ok(),
            "one token after 0.5 s"
        );
        assert!(l.take("a", t0 + Duration::from_millis(500)).is_err());
        assert!(WriteLimiter::new(0.0, 10).is_none());
    }
}
