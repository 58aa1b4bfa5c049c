//! A per-connection token bucket: `rate` frames per second sustained, with a burst of `rate`.
//! A client that keeps exceeding it for [`ABUSE_AFTER`] is to be closed (4029).

use std::time::{Duration, Instant};

/// Exceeding the rate continuously for this long is abuse.
pub const ABUSE_AFTER: Duration = Duration::from_secs(3);

/// The outcome of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse the frame; the client may retry after this long.
    Limited {
        retry_after: Duration,
    },
    /// Refuse and close: the client has been over the limit for too long.
    Abuse,
}

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
    /// When the client first hit the limit without letting the bucket refill since.
    over_since: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate_per_s: u32, now: Instant) -> Self {
        let rate = f64::from(rate_per_s.max(1));
        TokenBucket {
            rate,
            tokens: rate,
            last: now,
            over_since: None,
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= self.rate - 1e-9 {
            // The client let the bucket fill up: whatever it did before is forgiven.
            self.over_since = None;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        let since = *self.over_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= ABUSE_AFTER {
            return Verdict::Abuse;
        }
        let wait = (1.0 - self.tokens) / self.rate;
        Verdict::Limited {
            retry_after: Duration::from_secs_f64(wait).max(Duration::from_millis(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_under_the_rate_is_never_limited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        for i in 0..1000u64 {
            assert_eq!(b.check(t0 + Duration::from_millis(100 * i)), Verdict::Allow);
        }
    }

    #[test]
    fn burst_then_limited_then_abuse() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5, t0);
        for _ in 0..5 {
            assert_eq!(b.check(t0), Verdict::Allow);
        }
        assert!(matches!(b.check(t0), Verdict::Limited { .. }));
        // Keeps flooding at 10x the rate for more than ABUSE_AFTER.
        let mut verdict = Verdict::Allow;
        for i in 1..=400u64 {
            verdict = b.check(t0 + Duration::from_millis(10 * i));
            if verdict == Verdict::Abuse {
                break;
            }
        }
        assert_eq!(verdict, Verdict::Abuse);
    }

    #[test]
    fn idling_forgives() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, t0);
        b.check(t0);
        b.check(t0);
        assert!(matches!(b.check(t0), Verdict::Limited { .. }));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.check(later), Verdict::Allow);
        assert_eq!(b.check(later), Verdict::Allow);
        assert!(matches!(b.check(later), Verdict::Limited { .. }));
    }
}
