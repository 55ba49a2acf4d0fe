//! A token bucket with a per-minute capacity that refills continuously, in exact integer
//! arithmetic. Unlike a pure GCRA it can take back a reservation (refund) and go into debt when
//! a request used more than it reserved; the next requests then wait until the debt is repaid.
//! Its capacity can change in place (a config edit) without resetting what was used.

use std::time::Duration;

/// Internal units per token: one minute in nanoseconds, so refilling is `elapsed_ns * capacity`.
const UNITS_PER_TOKEN: i128 = 60_000_000_000;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per minute, and the most the bucket holds.
    capacity: u64,
    /// In units; negative while in debt.
    level: i128,
    updated_ns: u64,
}

/// Why a take failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// Enough tokens will be there after this long.
    Wait(Duration),
    /// More than the bucket can ever hold.
    NeverFits,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: u64, now_ns: u64) -> Self {
        Self {
            capacity,
            level: i128::from(capacity) * UNITS_PER_TOKEN,
            updated_ns: now_ns,
        }
    }

    fn refill(&mut self, now_ns: u64) {
        let elapsed = i128::from(now_ns.saturating_sub(self.updated_ns));
        let full = i128::from(self.capacity) * UNITS_PER_TOKEN;
        self.level = (self.level + elapsed * i128::from(self.capacity)).min(full);
        self.updated_ns = self.updated_ns.max(now_ns);
    }

    /// Changes the capacity, keeping what has been used (the level is only clamped down).
    pub fn set_capacity(&mut self, capacity: u64, now_ns: u64) {
        self.refill(now_ns);
        self.capacity = capacity;
        self.level = self.level.min(i128::from(capacity) * UNITS_PER_TOKEN);
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether `n` tokens could be taken now, without taking them.
    pub fn check(&mut self, n: u64, now_ns: u64) -> Result<(), Shortfall> {
        self.refill(now_ns);
        if n > self.capacity {
            return Err(Shortfall::NeverFits);
        }
        let need = i128::from(n) * UNITS_PER_TOKEN;
        if self.level >= need {
            return Ok(());
        }
        let missing = need - self.level;
        let rate = i128::from(self.capacity.max(1));
        let nanos = (missing + rate - 1) / rate;
        Err(Shortfall::Wait(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        )))
    }

    /// Takes `n` tokens unconditionally (after a successful [`check`](Self::check)).
    pub fn take(&mut self, n: u64, now_ns: u64) {
        self.refill(now_ns);
        self.level -= i128::from(n) * UNITS_PER_TOKEN;
    }

    /// Gives back (`delta > 0`) or additionally charges (`delta < 0`) tokens. A charge may put
    /// the bucket into debt, but never more than one window (one capacity) deep, whatever a
    /// request reported; a refund never fills it past capacity.
    pub fn adjust(&mut self, delta: i64, now_ns: u64) {
        self.refill(now_ns);
        let full = i128::from(self.capacity) * UNITS_PER_TOKEN;
        self.level = (self.level + i128::from(delta) * UNITS_PER_TOKEN).clamp(-full, full);
    }

    /// Whole tokens available now (0 while in debt).
    pub fn remaining(&mut self, now_ns: u64) -> u64 {
        self.refill(now_ns);
        u64::try_from((self.level / UNITS_PER_TOKEN).max(0)).unwrap_or(0)
    }

    /// Time until the bucket is full again.
    pub fn reset_after(&mut self, now_ns: u64) -> Duration {
        self.refill(now_ns);
        let missing = i128::from(self.capacity) * UNITS_PER_TOKEN - self.level;
        let rate = i128::from(self.capacity.max(1));
        Duration::from_nanos(u64::try_from((missing + rate - 1) / rate).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_full_bucket_admits_its_capacity_then_refills_at_capacity_per_minute() {
        let mut b = TokenBucket::new(10, 0);
        for _ in 0..10 {
            assert!(b.check(1, 0).is_ok());
            b.take(1, 0);
        }
        assert_eq!(b.check(1, 0), Err(Shortfall::Wait(Duration::from_secs(6))));
        assert_eq!(b.remaining(0), 0);
        assert!(b.check(1, 6 * SEC).is_ok());
        assert_eq!(b.remaining(30 * SEC), 5);
        assert_eq!(b.remaining(600 * SEC), 10);
        assert_eq!(b.reset_after(600 * SEC), Duration::ZERO);
    }

    #[test]
    fn debt_delays_the_next_requests_and_refunds_cap_at_capacity() {
        let mut b = TokenBucket::new(600, 0); // 10 tokens per second
        b.take(100, 0); // reserved 100
        b.adjust(-900, 0); // used 1000: 400 in debt
        assert_eq!(b.remaining(0), 0);
        assert_eq!(
            b.check(1, 0),
            Err(Shortfall::Wait(Duration::from_millis(40_100)))
        );
        assert!(b.check(1, 41 * SEC).is_ok());
        b.adjust(10_000, 41 * SEC);
        assert_eq!(b.remaining(41 * SEC), 600);
        assert_eq!(b.check(601, 41 * SEC), Err(Shortfall::NeverFits));
    }

    #[test]
    fn debt_is_never_deeper_than_one_window() {
        let mut b = TokenBucket::new(600, 0);
        b.adjust(i64::MIN, 0);
        assert_eq!(
            b.check(1, 0),
            Err(Shortfall::Wait(Duration::from_millis(60_100)))
        );
        assert!(b.check(600, 120 * SEC).is_ok());
    }

    #[test]
    fn changing_capacity_keeps_usage() {
        let mut b = TokenBucket::new(100, 0);
        b.take(80, 0);
        b.set_capacity(200, 0);
        assert_eq!(b.remaining(0), 20);
        b.set_capacity(10, 0);
        assert_eq!(b.remaining(0), 10);
        assert_eq!(b.capacity(), 10);
    }
}
