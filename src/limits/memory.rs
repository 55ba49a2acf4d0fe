//! The in-process limit store: per-key buckets, concurrency counter and monthly spend, keyed
//! by key id so they outlive config reloads. It is the whole store for a single gateway, and
//! with a shared (Redis) store it admits requests before their bodies are read and stands in
//! while Redis cannot be reached.

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;

use super::bucket::{Shortfall, TokenBucket};
use super::clock::Clock;
use super::store::{
    Admission, AdmitRequest, BudgetShortfall, ConcurrencySlot, Entry, LimitRefusal, RateHeaders,
    Window,
};
use crate::config::Limits;

#[derive(Default)]
struct Counters {
    requests: Option<TokenBucket>,
    tokens: Option<TokenBucket>,
    month: u32,
    spent: u64,
    reserved: u64,
}

#[derive(Default, Debug)]
struct KeyState {
    counters: Mutex<Counters>,
    inflight: Arc<AtomicU32>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("month", &self.month)
            .field("spent", &self.spent)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

/// The in-process backend.
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    keys: DashMap<Arc<str>, Arc<KeyState>>,
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            keys: DashMap::new(),
        }
    }

    fn state(&self, key_id: &Arc<str>) -> Arc<KeyState> {
        if let Some(s) = self.keys.get(key_id) {
            return s.clone();
        }
        self.keys.entry(key_id.clone()).or_default().clone()
    }
}

/// Creates, resizes or drops a bucket to match the configured limit, keeping its usage.
fn sync_bucket(bucket: &mut Option<TokenBucket>, limit: Option<u64>, now: u64) {
    match (limit, bucket.as_mut()) {
        (None, _) => *bucket = None,
        (Some(cap), None) => *bucket = Some(TokenBucket::new(cap, now)),
        (Some(cap), Some(b)) if b.capacity() != cap => b.set_capacity(cap, now),
        (Some(_), Some(_)) => {}
    }
}

fn window(bucket: &mut Option<TokenBucket>, now: u64) -> Option<Window> {
    bucket.as_mut().map(|b| Window {
        limit: b.capacity(),
        remaining: b.remaining(now),
        reset: b.reset_after(now),
    })
}

fn lock(state: &KeyState) -> std::sync::MutexGuard<'_, Counters> {
    state
        .counters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

impl MemoryStore {
    /// Takes a concurrency slot and one request from the requests-per-minute bucket.
    pub fn enter(&self, key_id: &Arc<str>, limits: &Limits) -> Result<Entry, LimitRefusal> {
        let needs_state =
            limits.max_concurrent_requests.is_some() || limits.requests_per_minute.is_some();
        if !needs_state {
            return Ok(Entry {
                key_id: key_id.clone(),
                slot: None,
                requests: None,
            });
        }
        let state = self.state(key_id);
        let slot = match limits.max_concurrent_requests {
            Some(max) => Some(
                ConcurrencySlot::take(&state.inflight, max.get())
                    .ok_or(LimitRefusal::Concurrency)?,
            ),
            None => None,
        };
        let mut requests = None;
        if let Some(rpm) = limits.requests_per_minute {
            let now = self.clock.now_nanos();
            let mut c = lock(&state);
            sync_bucket(&mut c.requests, Some(u64::from(rpm.get())), now);
            if let Some(Err(short)) = c.requests.as_mut().map(|b| b.check(1, now)) {
                let retry_after = match short {
                    Shortfall::Wait(d) => d,
                    Shortfall::NeverFits => Duration::from_secs(60),
                };
                let headers = RateHeaders {
                    requests: window(&mut c.requests, now),
                    tokens: window(&mut c.tokens, now),
                };
                // The slot (if any) is released as it goes out of scope.
                return Err(LimitRefusal::Requests {
                    retry_after,
                    headers,
                });
            }
            if let Some(b) = c.requests.as_mut() {
                b.take(1, now);
            }
            requests = window(&mut c.requests, now);
        }
        Ok(Entry {
            key_id: key_id.clone(),
            slot,
            requests,
        })
    }

    /// Checks the token and money limits and, only if both pass, reserves against both.
    pub fn reserve(&self, entry: Entry, req: AdmitRequest<'_>) -> Result<Admission, LimitRefusal> {
        let Entry {
            key_id,
            slot,
            requests,
        } = entry;
        let wants_tokens = req.limits.tokens_per_minute.is_some();
        let wants_money = req.limits.monthly_spend_micros.is_some() || req.cost_micros > 0;
        let mut tokens_window = None;
        if wants_tokens || wants_money {
            let state = self.state(&key_id);
            let now = self.clock.now_nanos();
            let mut c = lock(&state);
            sync_bucket(
                &mut c.tokens,
                req.limits.tokens_per_minute.map(|n| u64::from(n.get())),
                now,
            );
            if req.month > c.month {
                c.month = req.month;
                c.spent = 0;
            }
            if let Some(Err(short)) = c.tokens.as_mut().map(|b| b.check(req.tokens, now)) {
                let headers = RateHeaders {
                    requests,
                    tokens: window(&mut c.tokens, now),
                };
                return Err(match short {
                    Shortfall::Wait(retry_after) => LimitRefusal::Tokens {
                        retry_after,
                        headers,
                    },
                    Shortfall::NeverFits => LimitRefusal::TokensNeverFit { headers },
                });
            }
            if let Some(budget) = req.limits.monthly_spend_micros
                && c.spent
                    .saturating_add(c.reserved)
                    .saturating_add(req.cost_micros)
                    > budget
            {
                return Err(LimitRefusal::Budget(BudgetShortfall {
                    budget,
                    spent: c.spent,
                    in_flight: c.reserved,
                    request: req.cost_micros,
                }));
            }
            if let Some(b) = c.tokens.as_mut() {
                b.take(req.tokens, now);
            }
            c.reserved = c.reserved.saturating_add(req.cost_micros);
            tokens_window = window(&mut c.tokens, now);
        }
        Ok(Admission {
            key_id,
            tokens: req.tokens,
            cost_micros: req.cost_micros,
            month: req.month,
            _slot: slot,
            shared: None,
            headers: RateHeaders {
                requests,
                tokens: tokens_window,
            },
        })
    }

    /// Replaces the reservation by what the request really used.
    pub fn settle(&self, admission: Admission, tokens_used: u64, cost_micros: u64) {
        let state = self.state(&admission.key_id);
        let now = self.clock.now_nanos();
        let mut c = lock(&state);
        if let Some(b) = c.tokens.as_mut() {
            let refund = i128::from(admission.tokens) - i128::from(tokens_used);
            b.adjust(
                i64::try_from(refund).unwrap_or(if refund < 0 { i64::MIN } else { i64::MAX }),
                now,
            );
        }
        c.reserved = c.reserved.saturating_sub(admission.cost_micros);
        // A request is charged to the month it started in; once the store has moved on to a
        // later month, the earlier month's spend lives only in the ledger.
        if admission.month == c.month {
            c.spent = c.spent.saturating_add(cost_micros);
        } else if admission.month > c.month {
            c.month = admission.month;
            c.spent = cost_micros;
        }
        // The concurrency slot is released as the admission is dropped here.
    }

    /// Sets a key's settled spend for `month` (at start-up, from the ledger).
    pub fn seed_spend(&self, key_id: &Arc<str>, month: u32, spent_micros: u64) {
        let state = self.state(key_id);
        let mut c = lock(&state);
        if month >= c.month {
            c.month = month;
            c.spent = spent_micros;
        }
    }

    /// The key's request and token windows now, without taking anything.
    pub fn windows(&self, key_id: &str) -> RateHeaders {
        let Some(state) = self.keys.get(key_id).map(|s| s.clone()) else {
            return RateHeaders::default();
        };
        let now = self.clock.now_nanos();
        let mut c = lock(&state);
        RateHeaders {
            requests: window(&mut c.requests, now),
            tokens: window(&mut c.tokens, now),
        }
    }

    /// Whether the key has had a request (or restored spend) in this process.
    pub fn touched(&self, key_id: &str) -> bool {
        self.keys.contains_key(key_id)
    }

    /// Settled spend of `month`, in micro-dollars.
    pub fn month_spend(&self, key_id: &str, month: u32) -> u64 {
        self.keys.get(key_id).map_or(0, |s| {
            let c = lock(&s);
            if c.month == month { c.spent } else { 0 }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::SystemTime;

    use super::*;
    use crate::limits::FakeClock;

    fn limits(
        rpm: Option<u32>,
        tpm: Option<u32>,
        budget: Option<u64>,
        conc: Option<u32>,
    ) -> Limits {
        Limits {
            requests_per_minute: rpm.and_then(NonZeroU32::new),
            tokens_per_minute: tpm.and_then(NonZeroU32::new),
            monthly_spend_micros: budget,
            max_concurrent_requests: conc.and_then(NonZeroU32::new),
            default_max_tokens: None,
        }
    }

    fn setup() -> (Arc<FakeClock>, MemoryStore, Arc<str>) {
        let clock = Arc::new(FakeClock::new(SystemTime::UNIX_EPOCH));
        (clock.clone(), MemoryStore::new(clock), Arc::from("k"))
    }

    /// Both admission steps at once, as a request without a body would take them.
    fn admit(
        store: &MemoryStore,
        key: &Arc<str>,
        l: &Limits,
        tokens: u64,
        cost: u64,
    ) -> Result<Admission, LimitRefusal> {
        admit_in(store, key, l, tokens, cost, 100)
    }

    fn admit_in(
        store: &MemoryStore,
        key: &Arc<str>,
        l: &Limits,
        tokens: u64,
        cost: u64,
        month: u32,
    ) -> Result<Admission, LimitRefusal> {
        let entry = store.enter(key, l)?;
        store.reserve(
            entry,
            AdmitRequest {
                limits: l,
                tokens,
                cost_micros: cost,
                month,
            },
        )
    }

    #[test]
    fn requests_per_minute_admits_the_burst_then_refills() {
        let (clock, store, key) = setup();
        let l = limits(Some(10), None, None, None);
        let admitted = (0..200)
            .filter_map(|_| admit(&store, &key, &l, 0, 0).ok())
            .count();
        assert_eq!(admitted, 10);
        let Err(LimitRefusal::Requests {
            retry_after,
            headers,
        }) = admit(&store, &key, &l, 0, 0)
        else {
            panic!()
        };
        assert_eq!(retry_after, Duration::from_secs(6));
        assert_eq!(
            headers.requests.map(|w| (w.limit, w.remaining)),
            Some((10, 0))
        );
        clock.advance(Duration::from_secs(6));
        assert!(admit(&store, &key, &l, 0, 0).is_ok());
    }

    #[test]
    fn tokens_reserve_then_settle_with_refund_and_debt() {
        let (clock, store, key) = setup();
        let l = limits(None, Some(1000), None, None);
        let a = admit(&store, &key, &l, 600, 0).unwrap();
        assert_eq!(a.headers.tokens.unwrap().remaining, 400);
        assert!(matches!(
            admit(&store, &key, &l, 500, 0),
            Err(LimitRefusal::Tokens { .. })
        ));
        store.settle(a, 100, 0); // used far less than reserved: refund 500
        let b = admit(&store, &key, &l, 800, 0).unwrap();
        // Used far more: 900 - 800 - 1200 would be a debt of 1100, but a debt is never deeper
        // than one window (1000).
        store.settle(b, 2000, 0);
        let Err(LimitRefusal::Tokens { retry_after, .. }) = admit(&store, &key, &l, 1, 0) else {
            panic!()
        };
        assert_eq!(retry_after, Duration::from_millis(60_060));
        clock.advance(Duration::from_secs(61));
        assert!(admit(&store, &key, &l, 1, 0).is_ok());
        assert!(matches!(
            admit(&store, &key, &l, 1001, 0),
            Err(LimitRefusal::TokensNeverFit { .. })
        ));
    }

    #[test]
    fn budget_counts_reservations_so_concurrent_requests_cannot_overspend() {
        let (_, store, key) = setup();
        let l = limits(None, None, Some(1_000_000), None);
        let held: Vec<_> = (0..50)
            .filter_map(|_| admit(&store, &key, &l, 0, 300_000).ok())
            .collect();
        assert_eq!(held.len(), 3);
        for a in held {
            store.settle(a, 0, 250_000);
        }
        assert_eq!(store.month_spend("k", 100), 750_000);
        assert!(admit(&store, &key, &l, 0, 250_000).is_ok());
        assert_eq!(
            admit(&store, &key, &l, 0, 1).unwrap_err(),
            LimitRefusal::Budget(BudgetShortfall {
                budget: 1_000_000,
                spent: 750_000,
                in_flight: 250_000,
                request: 1
            })
        );
    }

    #[test]
    fn a_new_month_starts_from_zero_and_late_settlements_stay_in_their_month() {
        let (_, store, key) = setup();
        let l = limits(None, None, Some(1_000), None);
        let old = admit(&store, &key, &l, 0, 900).unwrap();
        let new = admit_in(&store, &key, &l, 0, 100, 101).unwrap();
        store.settle(old, 0, 900);
        store.settle(new, 0, 50);
        assert_eq!(store.month_spend("k", 101), 50);
        assert_eq!(store.month_spend("k", 100), 0);
    }

    #[test]
    fn concurrency_slots_are_released_on_settle_and_on_refusal() {
        let (_, store, key) = setup();
        let l = limits(Some(1), None, Some(10), Some(2));
        let a = admit(&store, &key, &l, 0, 0).unwrap();
        // Refused by the RPM limit: its concurrency slot is given back.
        assert!(matches!(
            admit(&store, &key, &l, 0, 0),
            Err(LimitRefusal::Requests { .. })
        ));
        let l2 = limits(None, None, Some(10), Some(2));
        // Refused by the budget after entering: its slot is given back too.
        assert!(matches!(
            admit(&store, &key, &l2, 0, 11),
            Err(LimitRefusal::Budget(_))
        ));
        let b = admit(&store, &key, &l2, 0, 0).unwrap();
        assert_eq!(
            admit(&store, &key, &l2, 0, 0).unwrap_err(),
            LimitRefusal::Concurrency
        );
        // An entry that never reserves (a request refused while its body is read) frees it.
        store.settle(a, 0, 0);
        let entry = store.enter(&key, &l2).unwrap();
        assert_eq!(
            store.enter(&key, &l2).unwrap_err(),
            LimitRefusal::Concurrency
        );
        drop(entry);
        assert!(admit(&store, &key, &l2, 0, 0).is_ok());
        drop(b);
    }

    #[test]
    fn a_request_counts_against_requests_per_minute_before_its_body_is_read() {
        let (_, store, key) = setup();
        let l = limits(Some(2), Some(100), None, None);
        let first = store.enter(&key, &l).unwrap();
        assert_eq!(first.requests.map(|w| w.remaining), Some(1));
        // Refused for tokens after entering: the request was still made.
        assert!(matches!(
            admit(&store, &key, &l, 500, 0),
            Err(LimitRefusal::TokensNeverFit { .. })
        ));
        assert!(matches!(
            store.enter(&key, &l),
            Err(LimitRefusal::Requests { .. })
        ));
        drop(first);
    }
}
