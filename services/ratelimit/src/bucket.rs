//! A token bucket with explicit time, whose rate can change while it runs
//! (the tenant quota resizes each instance's bucket every sync).

/// `burst` tokens at most, refilled at `rate_per_s`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last_ms: i64,
    rate_per_s: f64,
    burst: f64,
}

impl Bucket {
    pub fn new(rate_per_s: f64, burst: f64, now_ms: i64) -> Self {
        Bucket {
            tokens: burst,
            last_ms: now_ms,
            rate_per_s,
            burst,
        }
    }

    fn refill(&mut self, now_ms: i64) {
        if now_ms > self.last_ms {
            let dt = (now_ms - self.last_ms) as f64 / 1000.0;
            self.tokens = (self.tokens + dt * self.rate_per_s).min(self.burst);
            self.last_ms = now_ms;
        }
    }

    /// Takes `n` tokens, or says in how many milliseconds they will be there.
    pub fn take(&mut self, n: f64, now_ms: i64) -> Result<(), i64> {
        self.refill(now_ms);
        if self.tokens >= n {
            self.tokens -= n;
            return Ok(());
        }
        if self.rate_per_s <= 0.0 {
            return Err(i64::MAX);
        }
        Err((((n - self.tokens) / self.rate_per_s) * 1000.0).ceil() as i64)
    }

    /// Like [`Bucket::take`] without taking.
    pub fn would_take(&mut self, n: f64, now_ms: i64) -> Result<(), i64> {
        self.refill(now_ms);
        if self.tokens >= n {
            Ok(())
        } else if self.rate_per_s <= 0.0 {
            Err(i64::MAX)
        } else {
            Err((((n - self.tokens) / self.rate_per_s) * 1000.0).ceil() as i64)
        }
    }

    /// Tokens available now.
    pub fn available(&mut self, now_ms: i64) -> f64 {
        self.refill(now_ms);
        self.tokens
    }

    pub fn is_full(&mut self, now_ms: i64) -> bool {
        self.available(now_ms) >= self.burst
    }

    /// Milliseconds until the bucket is full again.
    pub fn time_to_full_ms(&mut self, now_ms: i64) -> i64 {
        let missing = self.burst - self.available(now_ms);
        if missing <= 0.0 || self.rate_per_s <= 0.0 {
            0
        } else {
            ((missing / self.rate_per_s) * 1000.0).ceil() as i64
        }
    }

    /// Returns `n` tokens taken for a request that was refused further on.
    pub fn give_back(&mut self, n: f64, now_ms: i64) {
        self.refill(now_ms);
        self.tokens = (self.tokens + n).min(self.burst);
    }

    /// Changes the rate and burst, keeping the tokens already earned.
    pub fn resize(&mut self, rate_per_s: f64, burst: f64, now_ms: i64) {
        self.refill(now_ms);
        self.rate_per_s = rate_per_s;
        self.burst = burst;
        self.tokens = self.tokens.min(burst);
    }

    pub fn rate(&self) -> f64 {
        self.rate_per_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        let mut b = Bucket::new(10.0, 5.0, 0);
        for _ in 0..5 {
            b.take(1.0, 0).unwrap();
        }
        assert_eq!(b.take(1.0, 0), Err(100));
        b.take(1.0, 100).unwrap();
        assert!(b.take(1.0, 100).is_err());
        // A long pause refills only up to the burst.
        for _ in 0..5 {
            b.take(1.0, 100_000).unwrap();
        }
        assert!(b.take(1.0, 100_000).is_err());
    }

    #[test]
    fn resize_keeps_earned_tokens_within_the_new_burst() {
        let mut b = Bucket::new(10.0, 10.0, 0);
        b.resize(1.0, 2.0, 0);
        b.take(2.0, 0).unwrap();
        assert_eq!(b.take(1.0, 0), Err(1000));
    }
}
