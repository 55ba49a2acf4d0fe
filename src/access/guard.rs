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
        let until = self.entries.get(&bucket(ip))?.blocked_until;
        let now = self.clock.now_nanos();
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Counts an invalid key from `ip`. Returns the count when this one crossed the limit and
    /// started a block (the moment to report a `suspicious_pattern`).
    pub fn record_invalid(&self, ip: IpAddr, per_minute: u32, cooldown: Duration) -> Option<u32> {
        let now = self.clock.now_nanos();
        let ip = bucket(ip);
        if self.entries.len() >= MAX_TRACKED && !self.entries.contains_key(&ip) {
            // Under a spray of addresses, forget the counts (keep the blocks) rather than stop
            // counting: memory stays bounded and the guard keeps working.
            self.entries.retain(|_, e| e.blocked_until > now);
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

/// One client, as the guard counts it: an IPv4 address, or an IPv6 /64 (one subscriber's
/// network, which can hand out addresses without limit).
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            IpAddr::from(s)
        }
        v4 => v4,
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
        // Other addresses of the same /64 are the same client.
        for n in 0..20u16 {
            let other = IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100 + n]);
            assert_eq!(
                guard.record_invalid(other, 20, Duration::from_secs(60)),
                None
            );
        }
        assert!(
            guard
                .record_invalid(ip, 20, Duration::from_secs(60))
                .is_some()
        );
        assert!(guard.blocked("2001:db8::ffff".parse().unwrap()).is_some());
        assert!(guard.blocked("2001:db8:0:1::1".parse().unwrap()).is_none());
        clock.advance(Duration::from_secs(120));
        for _ in 0..100 {
            assert_eq!(guard.record_invalid(ip, 20, Duration::from_secs(60)), None);
            clock.advance(Duration::from_secs(4));
        }
    }
}
