//! What a limit store hands out and refuses, whichever backend keeps the counts: the rate
//! windows a client is told about, a request's [`Entry`] (before its body is read) and
//! [`Admission`] (after), with its concurrency slot as a guard object, and the refusals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::config::Limits;

/// One limit's state for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

/// What the client is told about its request and token windows (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

/// What one request asks to reserve once its body is read.
pub struct AdmitRequest<'a> {
    pub limits: &'a Limits,
    /// Estimated prompt tokens plus the completion cap.
    pub tokens: u64,
    /// Worst-case cost of the request, in micro-dollars.
    pub cost_micros: u64,
    /// UTC calendar month of the request's start, as `year * 12 + month - 1`.
    pub month: u32,
}

/// A request's place among its key's concurrent requests, held from before its body is read
/// until it settles (or is refused); dropping it frees the place.
#[derive(Debug)]
pub struct ConcurrencySlot {
    inflight: Arc<AtomicU32>,
}

impl ConcurrencySlot {
    /// Takes a place if fewer than `max` are taken.
    pub(super) fn take(inflight: &Arc<AtomicU32>, max: u32) -> Option<Self> {
        if inflight.fetch_add(1, Ordering::AcqRel) >= max {
            inflight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self {
            inflight: inflight.clone(),
        })
    }
}

impl Drop for ConcurrencySlot {
    fn drop(&mut self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request admitted before its body was read: it holds a concurrency slot (if the key
/// limits concurrency) and has taken one request from the key's requests-per-minute bucket.
#[derive(Debug)]
pub struct Entry {
    pub(super) key_id: Arc<str>,
    pub(super) slot: Option<ConcurrencySlot>,
    /// The requests window after this request was counted.
    pub(super) requests: Option<Window>,
}

/// A granted reservation; hand it back to the store's `settle` exactly once.
#[derive(Debug)]
pub struct Admission {
    pub(super) key_id: Arc<str>,
    pub(super) tokens: u64,
    pub(super) cost_micros: u64,
    pub(super) month: u32,
    /// Released when the admission is settled (or dropped).
    pub(super) _slot: Option<ConcurrencySlot>,
    /// Set when the shared store reserved it: what to release there.
    pub(super) shared: Option<super::redis::Ticket>,
    pub headers: RateHeaders,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitRefusal {
    Requests {
        retry_after: Duration,
        headers: RateHeaders,
    },
    Tokens {
        retry_after: Duration,
        headers: RateHeaders,
    },
    /// The request alone needs more tokens than the key's per-minute limit.
    TokensNeverFit {
        headers: RateHeaders,
    },
    Concurrency,
    Budget(BudgetShortfall),
    /// The shared store cannot be reached and `on_redis_down = "deny"`.
    Unavailable,
}

/// The numbers behind a budget refusal, all in micro-dollars: what a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetShortfall {
    pub budget: u64,
    /// Settled spend of this month.
    pub spent: u64,
    /// Reserved by requests of this key still in flight.
    pub in_flight: u64,
    /// The most this request could cost (what it would reserve).
    pub request: u64,
}

impl BudgetShortfall {
    /// What is left of the budget once settled spend is counted.
    pub fn left(&self) -> u64 {
        self.budget.saturating_sub(self.spent)
    }

    /// Only reservations of requests in flight stand in the way: a retry can succeed soon.
    pub fn retryable(&self) -> bool {
        self.spent.saturating_add(self.request) <= self.budget
    }
}

/// Where per-key limits live: in this process, or shared on Redis with other replicas.
/// Admission has two steps: [`enter`](Limiter::enter) before the body is read (a concurrency
/// slot and one request per minute, which cost nothing to check, so a key's limits also bound
/// how many bodies it can make keygate buffer), then [`reserve`](Limiter::reserve) once the
/// body has said how many tokens and how much money the request may use.
pub enum Limiter {
    Memory(super::memory::MemoryStore),
    Shared(Arc<super::redis::SharedStore>),
}

impl Limiter {
    pub fn enter(&self, key_id: &Arc<str>, limits: &Limits) -> Result<Entry, LimitRefusal> {
        match self {
            Limiter::Memory(m) => m.enter(key_id, limits),
            Limiter::Shared(s) => s.enter(key_id, limits),
        }
    }

    pub async fn reserve(
        &self,
        entry: Entry,
        req: AdmitRequest<'_>,
    ) -> Result<Admission, LimitRefusal> {
        match self {
            Limiter::Memory(m) => m.reserve(entry, req),
            Limiter::Shared(s) => s.reserve(entry, req).await,
        }
    }

    /// Replaces the reservation by what the request really used (in Redis: queued).
    pub fn settle(&self, admission: Admission, tokens_used: u64, cost_micros: u64) {
        match self {
            Limiter::Memory(m) => m.settle(admission, tokens_used, cost_micros),
            Limiter::Shared(s) => s.settle(admission, tokens_used, cost_micros),
        }
    }

    /// Whether the key has had a request through this process.
    pub fn touched(&self, key_id: &str) -> bool {
        match self {
            Limiter::Memory(m) => m.touched(key_id),
            Limiter::Shared(s) => s.touched(key_id),
        }
    }

    /// Settled spend of `month`, in micro-dollars (over all replicas when shared).
    pub fn month_spend(&self, key_id: &str, month: u32) -> u64 {
        match self {
            Limiter::Memory(m) => m.month_spend(key_id, month),
            Limiter::Shared(s) => s.month_spend(key_id, month),
        }
    }

    /// The key's request and token windows now, without taking anything: a configured limit
    /// the key has not used yet is a full window.
    pub fn windows(&self, key_id: &str, limits: &Limits) -> RateHeaders {
        let seen = match self {
            Limiter::Memory(m) => m.windows(key_id),
            Limiter::Shared(s) => s.windows(key_id),
        };
        let full = |limit: Option<std::num::NonZeroU32>| {
            limit.map(|n| Window {
                limit: u64::from(n.get()),
                remaining: u64::from(n.get()),
                reset: Duration::ZERO,
            })
        };
        RateHeaders {
            requests: limits
                .requests_per_minute
                .and(seen.requests)
                .or_else(|| full(limits.requests_per_minute)),
            tokens: limits
                .tokens_per_minute
                .and(seen.tokens)
                .or_else(|| full(limits.tokens_per_minute)),
        }
    }
}
