//! Per-key limits: requests per minute, tokens per minute (reserve, then settle to the real
//! usage), concurrent requests, and the monthly spending budget (reserve the worst-case cost,
//! then settle to the real cost). The pipeline talks to a [`Limiter`]: the in-memory
//! [`MemoryStore`], seeded from the usage ledger at start-up, or the shared
//! [`redis::SharedStore`] that several replicas use together.

pub mod bucket;
pub mod clock;
pub mod estimate;
pub mod memory;
pub mod redis;
pub mod store;

pub use clock::{Clock, FakeClock, SystemClock};
pub use memory::MemoryStore;
pub use store::{
    Admission, AdmitRequest, BudgetShortfall, ConcurrencySlot, Entry, LimitRefusal, Limiter,
    RateHeaders, Window,
};
