//! The gateway's long-lived parts and its current [`Runtime`] snapshot.
//!
//! A `Runtime` is immutable: the validated config, the key table built from it, and the
//! upstream credential read from the environment. A request loads the snapshot once and uses it
//! throughout, so a reload (build a new one, then swap) never changes a request midway.

use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;
use sha2::Digest;
use tokio::sync::Semaphore;

use crate::access::guard::BruteForceGuard;
use crate::auth::KeyStore;
use crate::config::Config;
use crate::events::EventLog;
use crate::limits::redis::SharedStore;
use crate::limits::{Clock, Limiter, MemoryStore};
use crate::metrics::Metrics;
use crate::upstream::pool::Pool;
use crate::usage::{Ledger, Recorder, calendar};

/// Most usage events queued for the ledger before new ones are counted as dropped.
const LEDGER_QUEUE: usize = 262_144;
/// The ledger is written at least this often; a crash loses at most this much usage.
pub const LEDGER_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Limits and usage accounting, shared by every request and outliving config reloads.
pub struct Metering {
    pub limits: Limiter,
    /// `storage.max_unflushed`, fixed at start like the ledger itself.
    pub max_unflushed: std::time::Duration,
    pub recorder: Arc<Recorder>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    /// Counts invalid API keys per client address.
    pub guard: BruteForceGuard,
    /// Counts wrong admin tokens per address, apart from the API's guard.
    pub admin_guard: BruteForceGuard,
    /// Wrong admin tokens from blocked addresses are answered one at a time, slowly, so
    /// opening many connections does not buy more guesses.
    pub admin_slow_lane: tokio::sync::Semaphore,
    pub events: EventLog,
    /// Set when the shutdown grace ended with requests still open: those are cut by keygate,
    /// not by their clients, and are logged so.
    pub cut_at_shutdown: std::sync::atomic::AtomicBool,
}

pub struct Runtime {
    pub config: Config,
    pub keys: KeyStore,
    /// `Bearer <upstream key>`, marked sensitive; `None` when the variable is unset or empty.
    pub upstream_auth: Option<HeaderValue>,
    /// SHA-256 of the admin token (`admin.token_env`); `None` disables the admin API.
    pub admin_token: Option<[u8; 32]>,
}

impl Runtime {
    /// Builds a snapshot, reading the upstream key from `upstream.api_key_env` and the admin
    /// token from `admin.token_env`.
    pub fn new(config: Config) -> Self {
        let upstream = std::env::var(&config.upstream.api_key_env).ok();
        let admin = std::env::var(&config.admin.token_env).ok();
        Self::with_secrets(config, upstream.as_deref(), admin.as_deref())
    }

    /// Builds a snapshot with explicit secrets (`None` or blank: not configured).
    pub fn with_secrets(
        config: Config,
        upstream_key: Option<&str>,
        admin_token: Option<&str>,
    ) -> Self {
        let upstream_auth = upstream_key
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .and_then(|k| HeaderValue::try_from(format!("Bearer {k}")).ok())
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        let admin_token = admin_token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| sha2::Sha256::digest(t.as_bytes()).into());
        let keys = KeyStore::new(&config.keys);
        Self {
            config,
            keys,
            upstream_auth,
            admin_token,
        }
    }

    /// The snapshot for a reloaded config. A process's environment does not change, so the
    /// secrets read at start are kept unless the config now names other variables.
    pub fn reloaded(config: Config, previous: &Runtime) -> Self {
        let same_upstream = config.upstream.api_key_env == previous.config.upstream.api_key_env;
        let same_admin = config.admin.token_env == previous.config.admin.token_env;
        let mut next = if same_upstream && same_admin {
            Self::with_secrets(config, None, None)
        } else {
            Self::new(config)
        };
        if same_upstream {
            next.upstream_auth.clone_from(&previous.upstream_auth);
        }
        if same_admin {
            next.admin_token = previous.admin_token;
        }
        next
    }
}

/// What every request shares: the current snapshot, the upstream connection pool, metering.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    /// The file the config came from: what the admin API edits and reload re-reads.
    pub config_path: Option<std::path::PathBuf>,
    /// Serializes reloads (file watch, SIGHUP and admin changes).
    pub reload_lock: std::sync::Mutex<()>,
    /// The stamp of the file version the last reload read, so the watcher does not read a
    /// version again. Held only to copy it, never during a reload.
    pub read_stamp: std::sync::Mutex<Option<crate::reload::Stamp>>,
    /// Connections to the upstream, driven by the requests that use them.
    pub pool: Arc<Pool>,
    pub metering: Arc<Metering>,
    /// Request body bytes all requests may hold buffered at once
    /// (`server.max_buffered_body_bytes`); past it, requests get 503.
    pub body_budget: Arc<Semaphore>,
}

/// The shared limit store, when `[cluster]` names a variable that holds a Redis URL.
fn shared_limits(
    runtime: &Runtime,
    clock: &Arc<dyn Clock>,
    recorder: &Arc<Recorder>,
    metrics: &Metrics,
    replica: String,
) -> Option<Arc<SharedStore>> {
    let cluster = runtime.config.cluster.as_ref()?;
    let url = std::env::var(&cluster.redis_url_env)
        .ok()
        .filter(|u| !u.trim().is_empty())?;
    // This replica's share of each key's spend: its ledger, once everything queued is in it.
    let path = runtime.config.storage.path.clone();
    let for_shares = recorder.clone();
    let shares = Arc::new(move |month: u32| {
        for_shares.flush(std::time::Duration::from_secs(5));
        Ledger::open_read_only(&path)
            .ok()
            .and_then(|l| l.month_spend(month).ok())
            .unwrap_or_default()
    });
    let gauge = metrics.limit_store_up.clone();
    gauge.set(0);
    let store = SharedStore::new(
        url.trim().to_owned(),
        cluster.clone(),
        replica,
        clock.clone(),
        shares,
        Box::new(move |up| gauge.set(i64::from(up))),
    );
    store.spawn();
    Some(store)
}

/// How often the brute-force guards forget addresses that have recovered.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Prunes the guards on a timer, off the request path, for as long as `metering` lives.
fn spawn_pruner(metering: &Arc<Metering>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(metering);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(metering) = weak.upgrade() else {
                return;
            };
            metering.guard.prune();
            metering.admin_guard.prune();
        }
    });
}

impl Gateway {
    /// Opens the usage ledger, restores this month's spend from it, and starts the ledger
    /// writer and the upstream pool.
    pub fn start(runtime: Runtime, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let upstream = &runtime.config.upstream;
        let origin = http::Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| format!("upstream.url: {e}"))?;
        let pool = Pool::new(origin, upstream.connect_timeout)
            .map_err(|e| format!("cannot set up the upstream TLS client: {e}"))?;
        let path = &runtime.config.storage.path;
        let ledger = Ledger::open(path).map_err(|e| format!("storage.path: {e}"))?;
        let month = calendar::month_index(clock.now_utc());
        let spend = ledger
            .month_spend(month)
            .map_err(|e| format!("storage.path: cannot read {}: {e}", path.display()))?;
        let replica = ledger
            .replica_id()
            .map_err(|e| format!("storage.path: cannot read {}: {e}", path.display()))?;
        let recorder = Arc::new(
            Recorder::start(ledger, LEDGER_QUEUE, LEDGER_FLUSH_EVERY)
                .map_err(|e| format!("cannot start the ledger writer: {e}"))?,
        );
        let metrics = Metrics::new().map_err(|e| format!("cannot set up metrics: {e}"))?;
        let limits = match shared_limits(&runtime, &clock, &recorder, &metrics, replica) {
            Some(shared) => Limiter::Shared(shared),
            None => {
                let local = MemoryStore::new(clock.clone());
                for key in &runtime.config.keys {
                    if let Some(spent) = spend.get(&*key.id) {
                        local.seed_spend(&key.id, month, *spent);
                    }
                }
                Limiter::Memory(local)
            }
        };
        let server = &runtime.config.server.limits;
        let per_minute = NonZeroU32::new(server.invalid_keys_per_minute).unwrap_or(NonZeroU32::MIN);
        let guard = || BruteForceGuard::new(clock.clone(), per_minute, server.invalid_key_cooldown);
        let metering = Arc::new(Metering {
            limits,
            max_unflushed: runtime.config.storage.max_unflushed,
            recorder,
            guard: guard(),
            admin_guard: guard(),
            admin_slow_lane: tokio::sync::Semaphore::new(1),
            events: EventLog::default(),
            cut_at_shutdown: std::sync::atomic::AtomicBool::new(false),
            clock,
            metrics,
        });
        spawn_pruner(&metering);
        let body_budget = Arc::new(Semaphore::new(
            usize::try_from(server.max_buffered_body_bytes).unwrap_or(Semaphore::MAX_PERMITS),
        ));
        Ok(Self {
            runtime: ArcSwap::from_pointee(runtime),
            config_path: None,
            reload_lock: std::sync::Mutex::new(()),
            read_stamp: std::sync::Mutex::new(None),
            pool,
            metering,
            body_budget,
        })
    }

    pub fn with_config_path(mut self, path: std::path::PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// The current snapshot; hold it for the whole request.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Installs a new snapshot and hands back the old one; requests already running keep the
    /// one they started with.
    pub fn swap(&self, runtime: Runtime) -> Arc<Runtime> {
        self.runtime.swap(Arc::new(runtime))
    }
}
