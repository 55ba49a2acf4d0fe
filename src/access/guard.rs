//! The brute-force guard: a client address that presents more than `invalid_keys_per_minute`
//! invalid keys in a minute is refused (429) before any key lookup for the cool-down period,
//! and the event is reported as `suspicious_pattern`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::limits::Clock;

/// Above this many tracked addresses, idle ones are dropped before a new one is added.
const MAX_TRACKED: usize = 100_000;
const MINUTE_NS: u64 = 60_000_000_000;

#[derive(Clone, Copy, Default)]
struct Entry {
    window_start: u64,
    count: u32,
    blocked_until: u64,
}

pub struct BruteForceGuard {
    clock: Arc<dyn Clock>,
    entries: DashMap<IpAddr, Entry>,
}

impl BruteForceGuard {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            entries: DashMap::new(),
        }
    }

    /// How much longer `ip` stays blocked, if it is.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let until = self.entries.get(&ip)?.blocked_until;
        let now = self.clock.now_nanos();
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Counts an invalid key from `ip`. Returns the count when this one crossed the limit and
    /// started a block (the moment to report a `suspicious_pattern`).
    pub fn record_invalid(&self, ip: IpAddr, per_minute: u32, cooldown: Duration) -> Option<u32> {
        let now = self.clock.now_nanos();
        if self.entries.len() >= MAX_TRACKED && !self.entries.contains_key(&ip) {
            self.entries.retain(|_, e| {
                e.blocked_until > now || now.saturating_sub(e.window_start) < MINUTE_NS
            });
            if self.entries.len() >= MAX_TRACKED {
                return None;
            }
        }
        let mut e = self.entries.entry(ip).or_default();
        if now.saturating_sub(e.window_start) >= MINUTE_NS || e.count == 0 {
            e.window_start = now;
            e.count = 0;
        }
        e.count = e.count.saturating_add(1);
        if e.count > per_minute && e.blocked_until <= now {
            e.blocked_until =
                now.saturating_add(u64::try_from(cooldown.as_nanos()).unwrap_or(u64::MAX));
            return Some(e.count);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::limits::FakeClock;

    #[test]
    fn more_than_the_limit_in_a_minute_blocks_for_the_cooldown() {
        let clock = Arc::new(FakeClock::new(SystemTime::UNIX_EPOCH));
        let guard = BruteForceGuard::new(clock.clone());
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let other: IpAddr = "198.51.100.8".parse().unwrap();
        for _ in 0..20 {
            assert_eq!(guard.record_invalid(ip, 20, Duration::from_secs(300)), None);
        }
        assert_eq!(guard.blocked(ip), None);
        assert_eq!(
            guard.record_invalid(ip, 20, Duration::from_secs(300)),
            Some(21)
        );
        assert_eq!(guard.blocked(ip), Some(Duration::from_secs(300)));
        assert_eq!(guard.blocked(other), None);
        clock.advance(Duration::from_secs(301));
        assert_eq!(guard.blocked(ip), None);
        // A new minute starts a new count.
        assert_eq!(guard.record_invalid(ip, 20, Duration::from_secs(300)), None);
    }

    #[test]
    fn a_slow_trickle_never_blocks() {
        let clock = Arc::new(FakeClock::new(SystemTime::UNIX_EPOCH));
        let guard = BruteForceGuard::new(clock.clone());
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..100 {
            assert_eq!(guard.record_invalid(ip, 20, Duration::from_secs(60)), None);
            clock.advance(Duration::from_secs(4));
        }
    }
}
