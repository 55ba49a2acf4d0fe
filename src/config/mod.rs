//! Configuration: [`file`] reads the TOML as written, [`validate`] turns it into the typed
//! [`Config`] below. After validation nothing handles a string that should be a type.

pub mod edit;
pub mod file;
pub mod split;
pub mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::{Authority, Scheme};

use crate::access::{IpRules, ReferrerRules, Scope, ScopeSet};
use crate::auth::KeyDigest;

/// A validated configuration. Built once per load or reload, then shared read-only.
#[derive(Debug)]
pub struct Config {
    pub server: Server,
    pub admin: Admin,
    pub upstream: Upstream,
    pub storage: Storage,
    pub models: Models,
    pub keys: Vec<Arc<KeyPolicy>>,
    /// Limits shared with other replicas on Redis; `None` without a `[cluster]` section.
    pub cluster: Option<Cluster>,
}

/// `[cluster]`: per-key limits shared on Redis by every replica that uses the same Redis and
/// config. Applied at start.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The variable holding the Redis URL; unset or empty: limits stay this process's own.
    pub redis_url_env: String,
    /// How many replicas share the Redis: while it is down, each enforces this share of
    /// every rate and of the remaining budget.
    pub replicas_hint: NonZeroU32,
    pub on_redis_down: OnRedisDown,
    /// The longest a request waits for Redis before the store counts as down.
    pub redis_timeout: Duration,
    /// How long a replica's reservations and concurrency slots outlive it if it dies
    /// (renewed while the request runs).
    pub lease: Duration,
}

/// What a replica does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisDown {
    /// Enforce its share (`1 / replicas_hint`) of every limit on its own.
    Local,
    /// Refuse requests on keys with limits: 503 `limits_unavailable`.
    Deny,
}

#[derive(Debug)]
pub struct Server {
    pub listen: SocketAddr,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: IpRules,
    pub tls: Option<TlsFiles>,
    pub limits: ServerLimits,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Hard limits on what a client may send; each has a default and can be set in `[server]`.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    /// How long the whole request body may take to arrive.
    pub body_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    pub max_json_depth: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// Invalid keys one client address may present per minute before it is blocked.
    pub invalid_keys_per_minute: u32,
    /// How long such an address is then refused before any key lookup.
    pub invalid_key_cooldown: Duration,
    /// Request body bytes all requests together may hold buffered; past it, 503.
    pub max_buffered_body_bytes: u64,
    /// How long a client may read nothing while keygate has bytes for it, before it is cut.
    pub client_write_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 8 * 1024 * 1024,
            max_json_depth: 128,
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(30),
            invalid_keys_per_minute: 20,
            invalid_key_cooldown: Duration::from_secs(300),
            max_buffered_body_bytes: 256 * 1024 * 1024,
            client_write_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
pub struct Admin {
    pub listen: SocketAddr,
    pub token_env: String,
    /// `Host` values the admin listener answers; others get 421, so a web page cannot read
    /// it through DNS rebinding.
    pub allowed_hosts: AllowedHosts,
    /// Which keys get per-key gauge series on `/metrics`.
    pub per_key_metrics: PerKeyMetrics,
}

/// Which keys `/metrics` shows per-key gauges for (`keygate_key_spend_usd`, `keygate_key_limit`,
/// `keygate_key_info`, `keygate_key_expiry_timestamp_seconds`). Per-key counters exist only for
/// keys that had requests since start, whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PerKeyMetrics {
    /// Keys with a request since start or spend this month, and keys expiring within 30 days:
    /// every key a shipped alert or dashboard panel can concern, and a scrape that stays small
    /// with 100,000 keys of which few are busy.
    #[default]
    Active,
    /// Every configured key.
    All,
}

/// The `Host` values an admin listener answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    /// Loopback names and IP literals (the default).
    LoopbackAndLiterals,
    /// These names (lowercase, without port), plus IP literals.
    Names(Vec<String>),
}

impl AllowedHosts {
    /// Whether a request's `Host` header (name or literal, with an optional port) is allowed.
    pub fn allows(&self, host: &[u8]) -> bool {
        let Ok(host) = std::str::from_utf8(host) else {
            return false;
        };
        let name = match host.strip_prefix('[') {
            // An IPv6 literal.
            Some(rest) => {
                return rest.split_once(']').is_some_and(|(ip, port)| {
                    ip.parse::<std::net::Ipv6Addr>().is_ok()
                        && (port.is_empty() || port.strip_prefix(':').is_some_and(is_port))
                });
            }
            None => match host.rsplit_once(':') {
                Some((name, port)) if is_port(port) => name,
                Some(_) => return false,
                None => host,
            },
        };
        if name.parse::<std::net::Ipv4Addr>().is_ok() {
            return true;
        }
        let name = name.trim_end_matches('.');
        match self {
            AllowedHosts::LoopbackAndLiterals => name.eq_ignore_ascii_case("localhost"),
            AllowedHosts::Names(names) => names.iter().any(|n| n.eq_ignore_ascii_case(name)),
        }
    }
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

#[derive(Debug)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// `Host` of every upstream request: the authority of `upstream.url`.
    pub host_header: http::HeaderValue,
    /// Path prefix of `upstream.url` without a trailing slash (`""` or e.g. `/v1`).
    pub base_path: String,
    pub api_key_env: String,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    /// How often the upstream's reachability is checked in the background
    /// (`keygate_upstream_up`).
    pub probe_interval: Duration,
    /// `http://` to a host other than loopback was allowed explicitly.
    pub allow_plaintext: bool,
}

#[derive(Debug)]
pub struct Storage {
    pub path: PathBuf,
    /// How long usage may stay unwritten before keys with a budget are refused (503
    /// `ledger_unavailable`): spend that is not durable could be lost by a restart.
    pub max_unflushed: Duration,
}

/// Integer micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub cached_input: u64,
    pub output: u64,
}

#[derive(Debug)]
pub struct Model {
    pub name: Arc<str>,
    pub scope: Scope,
    pub price: Price,
    /// Micro-dollars charged per request (per image on image routes), for routes whose
    /// answers report no token usage; `None` when the model has no such price.
    pub per_request_micros: Option<u64>,
    /// The member the upstream reads this model's completion cap from (`max_tokens` for
    /// DeepSeek; `max_completion_tokens` for OpenAI's reasoning models).
    pub cap_field: crate::pipeline::request_json::CapField,
    /// The completion cap for a request that sets none (the model's own default output
    /// length, e.g. 32K for deepseek-reasoner), unless the key sets `default_max_tokens`.
    pub default_max_tokens: Option<NonZeroU32>,
}

/// The `[[models]]` table, in file order, with lookup by name.
#[derive(Debug, Default)]
pub struct Models {
    ordered: Vec<Arc<Model>>,
    by_name: HashMap<Arc<str>, Arc<Model>>,
}

impl Models {
    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.ordered.iter()
    }

    fn insert(&mut self, model: Model) -> bool {
        let model = Arc::new(model);
        if self.by_name.contains_key(&model.name) {
            return false;
        }
        self.by_name.insert(model.name.clone(), model.clone());
        self.ordered.push(model);
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Environment {
    Production,
    Development,
    Restricted,
}

impl Environment {
    pub const ALL: [Environment; 3] = [
        Environment::Production,
        Environment::Development,
        Environment::Restricted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Development => "development",
            Environment::Restricted => "restricted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == s)
    }
}

/// Per-key limits, after environment defaults are applied. `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub requests_per_minute: Option<NonZeroU32>,
    pub tokens_per_minute: Option<NonZeroU32>,
    pub monthly_spend_micros: Option<u64>,
    pub max_concurrent_requests: Option<NonZeroU32>,
    /// Completion tokens reserved for a request that sets no `max_tokens`.
    pub default_max_tokens: Option<NonZeroU32>,
}

/// A rotated-out secret that stays valid until `expires`.
#[derive(Debug, Clone)]
pub struct PreviousSecret {
    pub digest: KeyDigest,
    pub expires: SystemTime,
}

/// Everything keygate knows about one key, with environment defaults already applied.
#[derive(Debug)]
pub struct KeyPolicy {
    /// Stable id: usage, limits and metrics are keyed by it, never by the secret.
    pub id: Arc<str>,
    pub name: String,
    pub description: String,
    pub environment: Environment,
    pub digest: KeyDigest,
    pub previous: Option<PreviousSecret>,
    pub active: bool,
    pub created: SystemTime,
    pub expires: Option<SystemTime>,
    pub scopes: ScopeSet,
    /// `None`: any configured model within the key's scopes.
    pub models: Option<Vec<Arc<str>>>,
    pub allowed_ips: IpRules,
    pub allowed_referrers: ReferrerRules,
    pub limits: Limits,
}

impl KeyPolicy {
    /// The completion cap reserved (and written into the body) for a request to `model` that
    /// sets none: the key's `default_max_tokens`, else the model's, else keygate's default.
    pub fn default_cap(&self, model: &Model) -> u64 {
        self.limits
            .default_max_tokens
            .or(model.default_max_tokens)
            .map_or(crate::limits::estimate::DEFAULT_MAX_TOKENS, |n| {
                u64::from(n.get())
            })
    }

    /// Whether this key may use `model`: its scope is granted and any model list names it.
    pub fn may_use(&self, model: &Model) -> bool {
        self.scopes.contains(model.scope)
            && self
                .models
                .as_ref()
                .is_none_or(|list| list.iter().any(|m| **m == *model.name))
    }
}

/// Why a config file could not be used; each line names the TOML path and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: String) -> Self {
        Self {
            problems: vec![problem],
        }
    }
}

/// Reads, parses and validates a config file. Relative paths inside it are resolved against
/// the file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(format!("cannot read {}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    from_str(&text, base)
}

/// Parses and validates config text; `base` anchors relative paths.
pub fn from_str(text: &str, base: &Path) -> Result<Config, ConfigError> {
    // Key by key: each table is parsed and validated before the next is read, so the parse of
    // 100,000 keys never holds more than one key's parse tree, and leaves no garbage between
    // the keys that stay. Anything unusual falls back to the whole-file parse.
    if let Some(parts) = split::split(text)
        && let Some((raw, mut unknown)) = file::parse_rest(text, &parts)
    {
        let mut failed = false;
        let keys = parts.keys.iter().enumerate().map_while(|(i, range)| {
            let key = file::parse_key(text, range, i, &mut unknown);
            failed |= key.is_none();
            key
        });
        let validated = validate::validate_keys(raw, keys, parts.keys.len(), base);
        if !failed {
            return merged(validated, unknown);
        }
    }
    let (raw, unknown) = file::parse_whole(text).map_err(|problems| ConfigError { problems })?;
    merged(validate::validate(raw, base), unknown)
}

/// A validation's result with the unknown fields found while parsing.
fn merged(
    validated: Result<Config, ConfigError>,
    unknown: Vec<String>,
) -> Result<Config, ConfigError> {
    match validated {
        Ok(config) if unknown.is_empty() => Ok(config),
        Ok(_) => Err(ConfigError { problems: unknown }),
        Err(mut e) => {
            // Unknown fields first: a misspelt field often explains a missing-value problem.
            let mut problems = unknown;
            problems.append(&mut e.problems);
            Err(ConfigError { problems })
        }
    }
}
