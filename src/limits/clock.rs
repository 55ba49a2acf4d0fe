//! Time as the limiters see it: a monotonic nanosecond count for buckets and a UTC wall clock
//! for calendar months. Tests use [`FakeClock`] and advance it instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

pub trait Clock: Send + Sync {
    /// Monotonic nanoseconds since an arbitrary start.
    fn now_nanos(&self) -> u64;
    /// Wall-clock time (UTC).
    fn now_utc(&self) -> SystemTime;
}

pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn now_utc(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to.
pub struct FakeClock {
    nanos: AtomicU64,
    utc_base: SystemTime,
}

impl FakeClock {
    pub fn new(utc_base: SystemTime) -> Self {
        Self {
            nanos: AtomicU64::new(0),
            utc_base,
        }
    }

    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_nanos(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }

    fn now_utc(&self) -> SystemTime {
        self.utc_base + Duration::from_nanos(self.now_nanos())
    }
}
