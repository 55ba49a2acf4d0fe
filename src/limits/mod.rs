//! Per-key limits: requests per minute, tokens per minute (reserve, then settle to the real
//! usage), concurrent requests, and the monthly spending budget (reserve the worst-case cost,
//! then settle to the real cost). The pipeline talks to a [`LimitStore`]; the in-memory
//! [`MemoryStore`] is the embedded backend, seeded from the usage ledger at start-up.

pub mod bucket;
pub mod clock;
pub mod estimate;
pub mod store;

pub use clock::{Clock, FakeClock, SystemClock};
pub use store::{
    Admission, AdmitRequest, BudgetShortfall, ConcurrencySlot, Entry, LimitRefusal, LimitStore,
    MemoryStore, RateHeaders, Window,
};
