//! Per-key limits shared on Redis by every replica that uses the same Redis and config.
//!
//! - **Admission**: one Lua script ([`admit.lua`](./admit.lua)) checks and reserves every
//!   limit at once, requests and tokens per minute, concurrency and the monthly budget, on
//!   Redis's clock, so replicas agree and a burst spread over them is admitted exactly as one
//!   process would admit it. One round trip per admitted request. Before the body is read, a
//!   request only enters this replica's own [`MemoryStore`] (a slot and a request), which
//!   bounds what it can make this replica buffer.
//! - **Settlement** leaves the request path: settlements are queued and a task sends them in
//!   pipelined batches of [`settle.lua`](./settle.lua) calls. Reservations and concurrency slots
//!   carry a lease that the task renews while their requests run, so a replica that dies
//!   without settling frees them when the lease ends, and nothing is counted twice.
//! - **Spend** lives in Redis, per key and UTC month, as one share per replica. Each replica
//!   raises its share to what its own ledger holds ([`seed.lua`](./seed.lua)) at start and
//!   every minute, so a Redis that starts empty is filled again, and nothing can be counted
//!   twice.
//! - **Redis down**: a call that fails or takes longer than `cluster.redis_timeout` marks the
//!   store down (a log line, `keygate_limit_store_up` 0, a `/readyz` warning). Meanwhile each
//!   replica enforces `1 / replicas_hint` of every rate and of the remaining budget on its own
//!   (`on_redis_down = "local"`), or refuses (`"deny"`). A task probes Redis every second and
//!   the store comes back by itself; settlements made meanwhile are sent then.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;

use super::clock::Clock;
use super::memory::MemoryStore;
use super::store::{
    Admission, AdmitRequest, BudgetShortfall, Entry, LimitRefusal, RateHeaders, Window,
};
use crate::config::{Cluster, Limits, OnRedisDown};
use crate::usage::calendar;

static ADMIT: &str = include_str!("admit.lua");
static SETTLE: &str = include_str!("settle.lua");
static SEED: &str = include_str!("seed.lua");

/// Settlements waiting to be sent while Redis is down; beyond this many they are dropped (and
/// counted): the ledger still holds them, and the next seed brings them back.
const MAX_QUEUED: usize = 100_000;
/// Settlements sent in one pipeline.
const BATCH: usize = 512;
/// How often a down store is probed, and shares are re-seeded from the ledger.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const SEED_EVERY: Duration = Duration::from_secs(60);

/// What the shared store needs from the rest of the gateway: this replica's share of each
/// key's spend in a month, from its ledger (written out first).
pub type LedgerShares = Arc<dyn Fn(u32) -> HashMap<String, u64> + Send + Sync>;

/// What the shared store holds for an admitted request, to release at settlement.
#[derive(Debug)]
pub struct Ticket {
    /// The request's id in Redis; `None` when it was admitted on this replica alone (Redis
    /// down), so it holds nothing there.
    id: Option<String>,
    /// The key's tokens-per-minute limit when admitted (0: none).
    tpm: u64,
}

/// One settlement on its way to Redis.
struct Settle {
    key_id: Arc<str>,
    id: Option<String>,
    tpm: u64,
    /// Tokens to give back (negative: to charge), within one window.
    refund: i64,
    cost: u64,
    month: u32,
}

pub struct SharedStore {
    /// This replica's own counts: entries before the body, and everything while Redis is down.
    local: MemoryStore,
    /// Counts while Redis is down, against each replica's share of every limit.
    fallback: MemoryStore,
    conn: ArcSwapOption<ConnectionManager>,
    url: String,
    settings: Cluster,
    replica: String,
    up: AtomicBool,
    next_id: AtomicU64,
    queue: mpsc::Sender<Settle>,
    queue_rx: Mutex<Option<mpsc::Receiver<Settle>>>,
    dropped: AtomicU64,
    /// Requests admitted through Redis and still running: their leases are renewed.
    live: Mutex<HashMap<String, Arc<str>>>,
    /// Each key's month spend over all replicas, as Redis last said.
    spend: DashMap<Arc<str>, (u32, u64)>,
    shares: LedgerShares,
    clock: Arc<dyn Clock>,
    admit: redis::Script,
    settle: redis::Script,
    seed: redis::Script,
    /// Called with `true`/`false` when the store comes up or goes down.
    on_change: Box<dyn Fn(bool) + Send + Sync>,
}

/// The Redis keys of one API key; the `{}` hash tag keeps them in one slot.
fn redis_key(key_id: &str, what: &str) -> String {
    format!("kg:{{{key_id}}}:{what}")
}

fn spend_key(key_id: &str, month: u32) -> String {
    redis_key(key_id, &format!("spend:{}", calendar::month_label(month)))
}

/// When a month's spend may be forgotten: 35 days after the month ends.
fn spend_expiry(month: u32) -> u64 {
    calendar::month_start(month + 1)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 35 * 86_400
}

/// A limit divided among `n` replicas (at least 1).
fn share(limit: Option<NonZeroU32>, n: u32) -> Option<NonZeroU32> {
    limit.map(|l| NonZeroU32::new(l.get() / n).unwrap_or(NonZeroU32::MIN))
}

impl SharedStore {
    /// A store on the Redis at `url`; call [`SharedStore::spawn`] to connect and run it.
    pub fn new(
        url: String,
        settings: Cluster,
        replica: String,
        clock: Arc<dyn Clock>,
        shares: LedgerShares,
        on_change: Box<dyn Fn(bool) + Send + Sync>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        Arc::new(Self {
            local: MemoryStore::new(clock.clone()),
            fallback: MemoryStore::new(clock.clone()),
            conn: ArcSwapOption::empty(),
            url,
            settings,
            replica,
            up: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            queue: tx,
            queue_rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            spend: DashMap::new(),
            shares,
            clock,
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
            seed: redis::Script::new(SEED),
            on_change,
        })
    }

    /// Whether Redis answered the last time it was asked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Settlements dropped because Redis was down too long.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool, why: &dyn std::fmt::Display) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::warn!(target: "keygate::limits", "the shared limit store (Redis) is reachable again: limits are shared");
            } else {
                let mode = match self.settings.on_redis_down {
                    OnRedisDown::Local => "each replica now enforces its share of every limit",
                    OnRedisDown::Deny => "requests on keys with limits are refused (503)",
                };
                tracing::error!(target: "keygate::limits", error = %why, "the shared limit store (Redis) cannot be reached: {mode}");
            }
            (self.on_change)(up);
        }
    }

    /// Starts the connection, the settlement sender, lease renewal, probing and seeding.
    pub fn spawn(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let rx = self
            .queue_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let weak = Arc::downgrade(self);
        if let Some(rx) = rx {
            runtime.spawn(send_settlements(weak.clone(), rx));
        }
        runtime.spawn(watch(weak));
    }

    /// Before the body: this replica's own slot and request (the same limits again in Redis
    /// once the body is read).
    pub fn enter(&self, key_id: &Arc<str>, limits: &Limits) -> Result<Entry, LimitRefusal> {
        self.local.enter(key_id, limits)
    }

    /// Reserves against every limit in one script call; while Redis is down, against this
    /// replica's share (or refuses, with `on_redis_down = "deny"`).
    pub async fn reserve(
        &self,
        entry: Entry,
        req: AdmitRequest<'_>,
    ) -> Result<Admission, LimitRefusal> {
        let limits = req.limits;
        let unlimited = limits.requests_per_minute.is_none()
            && limits.tokens_per_minute.is_none()
            && limits.max_concurrent_requests.is_none()
            && limits.monthly_spend_micros.is_none()
            && req.cost_micros == 0;
        if unlimited {
            return self.local.reserve(entry, req);
        }
        if self.is_up() {
            let conn = self.conn.load_full();
            if let Some(conn) = conn {
                let call = self.admit_remote((*conn).clone(), &entry.key_id, &req);
                match tokio::time::timeout(self.settings.redis_timeout, call).await {
                    Ok(Ok(result)) => {
                        return result.map(|(admission, requests)| {
                            admission.into_admission(entry, requests, &req)
                        });
                    }
                    Ok(Err(e)) => self.set_up(false, &e),
                    Err(_) => self.set_up(false, &"no answer within cluster.redis_timeout"),
                }
            }
        }
        self.reserve_alone(entry, req)
    }

    /// Redis is down: this replica's share of each limit, counted here.
    fn reserve_alone(
        &self,
        entry: Entry,
        req: AdmitRequest<'_>,
    ) -> Result<Admission, LimitRefusal> {
        if self.settings.on_redis_down == OnRedisDown::Deny {
            return Err(LimitRefusal::Unavailable);
        }
        let n = self.settings.replicas_hint.get();
        let l = req.limits;
        let known = self
            .spend
            .get(&entry.key_id)
            .filter(|s| s.0 == req.month)
            .map_or(0, |s| s.1);
        let share_limits = Limits {
            requests_per_minute: share(l.requests_per_minute, n),
            tokens_per_minute: share(l.tokens_per_minute, n),
            max_concurrent_requests: share(l.max_concurrent_requests, n),
            monthly_spend_micros: l
                .monthly_spend_micros
                .map(|b| b.saturating_sub(known) / u64::from(n)),
            default_max_tokens: l.default_max_tokens,
        };
        let key_id = entry.key_id.clone();
        // The share's own slot and request; the entry's local slot goes with it.
        let alone = self.fallback.enter(&key_id, &share_limits)?;
        drop(entry);
        let mut admission = self.fallback.reserve(
            alone,
            AdmitRequest {
                limits: &share_limits,
                ..req
            },
        )?;
        admission.shared = Some(Ticket {
            id: None,
            tpm: share_limits
                .tokens_per_minute
                .map_or(0, |n| u64::from(n.get())),
        });
        Ok(admission)
    }

    async fn admit_remote(
        &self,
        mut conn: ConnectionManager,
        key_id: &Arc<str>,
        req: &AdmitRequest<'_>,
    ) -> redis::RedisResult<Result<(Remote, Option<Window>), LimitRefusal>> {
        let l = req.limits;
        let id = format!(
            "{}-{}",
            self.replica,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let rpm = l.requests_per_minute.map_or(0, |n| u64::from(n.get()));
        let tpm = l.tokens_per_minute.map_or(0, |n| u64::from(n.get()));
        let reply: Vec<redis::Value> = self
            .admit
            .key(redis_key(key_id, "rpm"))
            .key(redis_key(key_id, "tpm"))
            .key(redis_key(key_id, "slots"))
            .key(redis_key(key_id, "res"))
            .key(redis_key(key_id, "resamt"))
            .key(spend_key(key_id, req.month))
            .arg(rpm)
            .arg(tpm)
            .arg(l.max_concurrent_requests.map_or(0, |n| n.get()))
            .arg(
                l.monthly_spend_micros
                    .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            )
            .arg(req.tokens.min(tpm.max(1).saturating_add(1)))
            .arg(req.cost_micros)
            .arg(&id)
            .arg(u64::try_from(self.settings.lease.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut conn)
            .await?;
        self.set_up(true, &"");
        let num = |i: usize| -> u64 {
            reply.get(i).map_or(0, |v| match v {
                redis::Value::Int(n) => u64::try_from(*n).unwrap_or(0),
                redis::Value::BulkString(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                _ => 0,
            })
        };
        let admitted = num(0) == 1;
        // {1, requests left, reset, tokens left, reset, spent, reserved} or
        // {0, reason, wait, left, spent, reserved}
        let (spent, reserved) = if admitted {
            (num(5), num(6))
        } else {
            (num(4), num(5))
        };
        self.spend.insert(key_id.clone(), (req.month, spent));
        let ms = |n: u64| Duration::from_millis(n);
        if admitted {
            let window = |limit: u64, left: u64, reset: u64| {
                (limit > 0).then_some(Window {
                    limit,
                    remaining: left,
                    reset: ms(reset),
                })
            };
            if l.max_concurrent_requests.is_some() || req.cost_micros > 0 {
                self.live
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id.clone(), key_id.clone());
            }
            return Ok(Ok((
                Remote {
                    key_id: key_id.clone(),
                    id,
                    tpm,
                    tokens_window: window(tpm, num(3), num(4)),
                },
                window(rpm, num(1), num(2)),
            )));
        }
        let reason = match reply.get(1) {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            _ => String::new(),
        };
        let headers = RateHeaders::default();
        Ok(Err(match reason.as_str() {
            "requests" => LimitRefusal::Requests {
                retry_after: ms(num(2)),
                headers: RateHeaders {
                    requests: Some(Window {
                        limit: rpm,
                        remaining: 0,
                        reset: ms(num(2)),
                    }),
                    tokens: None,
                },
            },
            "tokens" => LimitRefusal::Tokens {
                retry_after: ms(num(2)),
                headers: RateHeaders {
                    requests: None,
                    tokens: Some(Window {
                        limit: tpm,
                        remaining: num(3),
                        reset: ms(num(2)),
                    }),
                },
            },
            "tokens_never_fit" => LimitRefusal::TokensNeverFit { headers },
            "concurrency" => LimitRefusal::Concurrency,
            _ => LimitRefusal::Budget(BudgetShortfall {
                budget: l.monthly_spend_micros.unwrap_or(0),
                spent,
                in_flight: reserved,
                request: req.cost_micros,
            }),
        }))
    }

    /// Settles here at once, and in Redis through the queue.
    pub fn settle(&self, admission: Admission, tokens_used: u64, cost_micros: u64) {
        let Some(ticket) = admission.shared.as_ref() else {
            return self.local.settle(admission, tokens_used, cost_micros);
        };
        let refund = i128::from(admission.tokens) - i128::from(tokens_used);
        let window = i128::from(ticket.tpm);
        let settle = Settle {
            key_id: admission.key_id.clone(),
            id: ticket.id.clone(),
            tpm: ticket.tpm,
            refund: i64::try_from(refund.clamp(-window, window)).unwrap_or(0),
            cost: cost_micros,
            month: admission.month,
        };
        if let Some(id) = &settle.id {
            self.live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(id);
        }
        if let Some(mut s) = self.spend.get_mut(&settle.key_id)
            && s.0 == settle.month
        {
            s.1 = s.1.saturating_add(cost_micros);
        }
        if settle.id.is_none() {
            // Admitted here alone: its own counts are here too.
            self.fallback.settle(admission, tokens_used, cost_micros);
        }
        if self.queue.try_send(settle).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::error!(target: "keygate::limits", dropped = n, "settlements for the shared limit store were dropped; the ledger keeps them and the next seed restores spend");
            }
        }
    }

    /// Whether the key has had a request through this replica.
    pub fn touched(&self, key_id: &str) -> bool {
        self.local.touched(key_id)
    }

    /// A key's month spend over all replicas, as Redis last said (plus what settled since).
    pub fn month_spend(&self, key_id: &str, month: u32) -> u64 {
        self.spend
            .get(key_id)
            .filter(|s| s.0 == month)
            .map_or(0, |s| s.1)
    }

    /// Reads the month spend of these keys from Redis (for metrics and reports), bounded by
    /// the Redis timeout per batch; keeps what it knew when Redis does not answer.
    pub async fn refresh_spend(&self, keys: &[Arc<str>], month: u32) {
        let Some(conn) = self.conn.load_full().filter(|_| self.is_up()) else {
            return;
        };
        let mut conn = (*conn).clone();
        for chunk in keys.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for key_id in chunk {
                pipe.cmd("HVALS").arg(spend_key(key_id, month));
            }
            let call = pipe.query_async::<Vec<Vec<u64>>>(&mut conn);
            let Ok(Ok(shares)) = tokio::time::timeout(self.settings.redis_timeout * 4, call).await
            else {
                return;
            };
            for (key_id, shares) in chunk.iter().zip(shares) {
                let total = shares.iter().fold(0u64, |a, b| a.saturating_add(*b));
                self.spend.insert(key_id.clone(), (month, total));
            }
        }
    }

    /// This replica's view of the request and token windows.
    pub fn windows(&self, key_id: &str) -> RateHeaders {
        self.local.windows(key_id)
    }

    /// Sends queued settlements in pipelined batches; keeps them while Redis is down.
    async fn send_batch(&self, batch: &[Settle]) -> redis::RedisResult<()> {
        let Some(conn) = self.conn.load_full() else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "not connected",
            )));
        };
        let mut conn = (*conn).clone();
        let mut pipe = redis::pipe();
        let hash = self.settle.get_hash();
        for s in batch {
            pipe.cmd("EVALSHA")
                .arg(hash)
                .arg(5)
                .arg(redis_key(&s.key_id, "tpm"))
                .arg(redis_key(&s.key_id, "slots"))
                .arg(redis_key(&s.key_id, "res"))
                .arg(redis_key(&s.key_id, "resamt"))
                .arg(spend_key(&s.key_id, s.month))
                .arg(s.id.as_deref().unwrap_or(""))
                .arg(s.tpm)
                .arg(s.refund)
                .arg(s.cost)
                .arg(&self.replica)
                .arg(spend_expiry(s.month));
        }
        let spent: Vec<String> = pipe.query_async(&mut conn).await?;
        for (s, total) in batch.iter().zip(spent) {
            if let Ok(total) = total.parse::<u64>() {
                self.spend.insert(s.key_id.clone(), (s.month, total));
            }
        }
        Ok(())
    }

    /// Loads the scripts, so pipelines can call them by hash.
    async fn load_scripts(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        for script in [ADMIT, SETTLE, SEED] {
            let _: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(script)
                .query_async(conn)
                .await?;
        }
        Ok(())
    }

    /// Raises this replica's share of each key's spend this month to what its ledger holds.
    async fn seed_shares(&self) -> redis::RedisResult<()> {
        let month = calendar::month_index(self.clock.now_utc());
        let shares = self.shares.clone();
        let amounts = tokio::task::spawn_blocking(move || shares(month))
            .await
            .unwrap_or_default();
        let Some(conn) = self.conn.load_full() else {
            return Ok(());
        };
        let mut conn = (*conn).clone();
        let amounts: Vec<(String, u64)> = amounts.into_iter().collect();
        for chunk in amounts.chunks(BATCH) {
            let mut call = self.seed.prepare_invoke();
            for (key_id, _) in chunk {
                call.key(spend_key(key_id, month));
            }
            call.arg(&self.replica).arg(spend_expiry(month));
            for (_, amount) in chunk {
                call.arg(*amount);
            }
            let _: i64 = call.invoke_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Renews the leases of requests still running on this replica.
    async fn renew_leases(&self) -> redis::RedisResult<()> {
        let live: Vec<(String, Arc<str>)> = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, k)| (id.clone(), k.clone()))
            .collect();
        let Some(conn) = self.conn.load_full() else {
            return Ok(());
        };
        if live.is_empty() {
            return Ok(());
        }
        let mut conn = (*conn).clone();
        let until = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
            + self.settings.lease.as_millis();
        let until = u64::try_from(until).unwrap_or(u64::MAX);
        for chunk in live.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for (id, key_id) in chunk {
                for what in ["slots", "res"] {
                    pipe.cmd("ZADD")
                        .arg(redis_key(key_id, what))
                        .arg("XX")
                        .arg("GT")
                        .arg(until)
                        .arg(id)
                        .ignore();
                }
            }
            let () = pipe.query_async(&mut conn).await?;
        }
        Ok(())
    }

    async fn connect(&self) -> redis::RedisResult<()> {
        let client = redis::Client::open(self.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let mut conn = ConnectionManager::new_with_config(client, config).await?;
        self.load_scripts(&mut conn).await?;
        self.conn.store(Some(Arc::new(conn)));
        Ok(())
    }

    /// Checks that Redis answers. Returns true when it has restarted (its scripts are gone):
    /// it may have lost its data too, which the seed restores.
    async fn ping(&self) -> redis::RedisResult<bool> {
        let Some(conn) = self.conn.load_full() else {
            self.connect().await?;
            return Ok(true);
        };
        let mut conn = (*conn).clone();
        let loaded: Vec<bool> = redis::cmd("SCRIPT")
            .arg("EXISTS")
            .arg(self.settle.get_hash())
            .query_async(&mut conn)
            .await?;
        if loaded.first().copied().unwrap_or(false) {
            return Ok(false);
        }
        self.load_scripts(&mut conn).await?;
        Ok(true)
    }
}

/// What an admission through Redis holds.
struct Remote {
    key_id: Arc<str>,
    id: String,
    tpm: u64,
    tokens_window: Option<Window>,
}

impl Remote {
    fn into_admission(
        self,
        entry: Entry,
        requests: Option<Window>,
        req: &AdmitRequest<'_>,
    ) -> Admission {
        Admission {
            key_id: self.key_id,
            tokens: req.tokens,
            cost_micros: req.cost_micros,
            month: req.month,
            // The entry's local slot is held until settlement too.
            _slot: entry.slot,
            shared: Some(Ticket {
                id: Some(self.id),
                tpm: self.tpm,
            }),
            headers: RateHeaders {
                requests,
                tokens: self.tokens_window,
            },
        }
    }
}

/// The settlement sender: batches of queued settlements, kept and retried while Redis is down.
async fn send_settlements(store: std::sync::Weak<SharedStore>, mut rx: mpsc::Receiver<Settle>) {
    let mut batch: Vec<Settle> = Vec::with_capacity(BATCH);
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(s) => batch.push(s),
                None => return,
            }
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        let Some(store) = store.upgrade() else { return };
        if !store.is_up() {
            drop(store);
            tokio::time::sleep(PROBE_EVERY).await;
            continue;
        }
        match store.send_batch(&batch).await {
            Ok(()) => batch.clear(),
            Err(e) => {
                store.set_up(false, &e);
                drop(store);
                tokio::time::sleep(PROBE_EVERY).await;
            }
        }
    }
}

/// Connects, probes while down, renews leases and re-seeds shares, for as long as the store
/// lives.
async fn watch(store: std::sync::Weak<SharedStore>) {
    let mut last_seed: Option<tokio::time::Instant> = None;
    let mut last_renew = tokio::time::Instant::now();
    loop {
        let Some(s) = store.upgrade() else { return };
        let renew_every = s.settings.lease / 3;
        let probe = tokio::time::timeout(PROBE_EVERY, s.ping()).await;
        match probe {
            Ok(Ok(restarted)) if restarted || !s.is_up() => {
                // Shares first: a Redis that came back empty is filled before it is used.
                match s.seed_shares().await {
                    Ok(()) => {
                        last_seed = Some(tokio::time::Instant::now());
                        s.set_up(true, &"");
                    }
                    Err(e) => s.set_up(false, &e),
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => s.set_up(false, &e),
            Err(_) => s.set_up(false, &"no answer to a probe within a second"),
        }
        if s.is_up() {
            if last_renew.elapsed() >= renew_every {
                last_renew = tokio::time::Instant::now();
                if let Err(e) = s.renew_leases().await {
                    s.set_up(false, &e);
                }
            }
            if last_seed.is_none_or(|t| t.elapsed() >= SEED_EVERY) {
                last_seed = Some(tokio::time::Instant::now());
                if let Err(e) = s.seed_shares().await {
                    s.set_up(false, &e);
                }
            }
        }
        drop(s);
        tokio::time::sleep(PROBE_EVERY.min(renew_every)).await;
    }
}
