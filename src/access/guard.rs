//! The brute-force guard: a client address that presents more than `per_minute` invalid
//! credentials in quick succession is refused before any lookup for the cool-down period, and
//! the moment it trips is reported as a `suspicious_pattern`.
//!
//! Counting is governor's keyed GCRA limiter (a burst of `per_minute`, refilled at that rate),
//! so a slow trickle never trips it. Work per request is O(1): one map lookup for the block and
//! one for the count. Memory is bounded: at most [`MAX_COUNTED`] addresses are counted at once
//! and [`MAX_BLOCKED`] blocked; [`BruteForceGuard::prune`], run on a timer, forgets addresses
//! whose count has fully recovered and blocks that have ended. The API and the admin listener
//! each have their own guard, so wrong admin tokens never block API clients.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::limits::Clock;

/// Most addresses counted at once (about 50 MB). Past it, no address is counted until the
/// next prune makes room; only a spray from a million addresses within seconds gets there,
/// and such a spray gains nothing per address anyway.
pub const MAX_COUNTED: usize = 1_000_000;
/// Most addresses blocked at once.
pub const MAX_BLOCKED: usize = 100_000;

/// governor's view of keygate's clock, so tests can move time.
#[derive(Clone)]
struct GuardClock(Arc<dyn Clock>);

impl governor::clock::Clock for GuardClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.now_nanos())
    }
}

type Counts = RateLimiter<IpAddr, DashMapStateStore<IpAddr>, GuardClock, NoOpMiddleware<Duration>>;

pub struct BruteForceGuard {
    clock: Arc<dyn Clock>,
    counts: Counts,
    /// Address bucket -> monotonic nanoseconds until which it is refused.
    blocked: DashMap<IpAddr, u64>,
    cooldown: Duration,
}

impl BruteForceGuard {
    /// A guard that blocks an address for `cooldown` once it presents more than `per_minute`
    /// invalid credentials in quick succession.
    pub fn new(clock: Arc<dyn Clock>, per_minute: NonZeroU32, cooldown: Duration) -> Self {
        let quota = Quota::per_minute(per_minute);
        Self {
            counts: RateLimiter::dashmap_with_clock(quota, GuardClock(clock.clone())),
            clock,
            blocked: DashMap::new(),
            cooldown,
        }
    }

    /// How much longer `ip` stays blocked, if it is.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        // One shard's read lock (an `is_empty` check first would take every shard's).
        let until = *self.blocked.get(&bucket(ip))?;
        let now = self.clock.now_nanos();
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Counts an invalid credential from `ip`. Returns true when this one tripped the guard and
    /// started a block (the moment to report a `suspicious_pattern`).
    pub fn record_invalid(&self, ip: IpAddr) -> bool {
        let ip = bucket(ip);
        if self.counts.len() >= MAX_COUNTED {
            return false;
        }
        if self.counts.check_key(&ip).is_ok() {
            return false;
        }
        if self.blocked.len() >= MAX_BLOCKED {
            return false;
        }
        let now = self.clock.now_nanos();
        let until = now.saturating_add(u64::try_from(self.cooldown.as_nanos()).unwrap_or(u64::MAX));
        let mut started = false;
        self.blocked
            .entry(ip)
            .and_modify(|u| {
                if *u <= now {
                    started = true;
                    *u = until;
                }
            })
            .or_insert_with(|| {
                started = true;
                until
            });
        started
    }

    /// Forgets addresses whose count has recovered and blocks that have ended. Run it on a
    /// timer, off the request path.
    pub fn prune(&self) {
        self.counts.retain_recent();
        self.counts.shrink_to_fit();
        let now = self.clock.now_nanos();
        self.blocked.retain(|_, until| *until > now);
    }

    /// Addresses counted now (for tests and diagnostics).
    pub fn tracked(&self) -> usize {
        self.counts.len()
    }
}

/// One client, as the guard counts it: an IPv4 address, or an IPv6 /64 (one subscriber's
/// network, which can hand out addresses without limit).
fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
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

    fn guard(per_minute: u32, cooldown_secs: u64) -> (Arc<FakeClock>, BruteForceGuard) {
        let clock = Arc::new(FakeClock::new(SystemTime::UNIX_EPOCH));
        let g = BruteForceGuard::new(
            clock.clone(),
            NonZeroU32::new(per_minute).unwrap(),
            Duration::from_secs(cooldown_secs),
        );
        (clock, g)
    }

    #[test]
    fn more_than_the_limit_in_a_burst_blocks_for_the_cooldown() {
        let (clock, guard) = guard(20, 300);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let other: IpAddr = "198.51.100.8".parse().unwrap();
        for _ in 0..20 {
            assert!(!guard.record_invalid(ip));
        }
        assert_eq!(guard.blocked(ip), None);
        assert!(guard.record_invalid(ip));
        assert_eq!(guard.blocked(ip), Some(Duration::from_secs(300)));
        assert_eq!(guard.blocked(other), None);
        // Further invalid keys during the block do not start a new one.
        assert!(!guard.record_invalid(ip));
        clock.advance(Duration::from_secs(301));
        assert_eq!(guard.blocked(ip), None);
        // By then the count has recovered too.
        assert!(!guard.record_invalid(ip));
    }

    #[test]
    fn a_slow_trickle_never_blocks_and_a_v6_network_is_one_client() {
        let (clock, guard) = guard(20, 60);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for n in 0..20u16 {
            let other = IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100 + n]);
            assert!(!guard.record_invalid(other));
        }
        assert!(guard.record_invalid(ip));
        assert!(guard.blocked("2001:db8::ffff".parse().unwrap()).is_some());
        assert!(guard.blocked("2001:db8:0:1::1".parse().unwrap()).is_none());
        clock.advance(Duration::from_secs(120));
        for _ in 0..100 {
            assert!(!guard.record_invalid(ip));
            clock.advance(Duration::from_secs(4));
        }
    }

    #[test]
    fn the_tables_stay_bounded_and_pruning_forgets_what_recovered() {
        let (clock, guard) = guard(5, 60);
        for i in 0..1000u32 {
            guard.record_invalid(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(guard.tracked(), 1000);
        clock.advance(Duration::from_secs(61));
        guard.prune();
        assert_eq!(guard.tracked(), 0);
    }
}
