//! Turns a [`RawConfig`] into a typed [`Config`], collecting every problem with its TOML path
//! so `keygate check` can report them all at once.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Uri;
use http::uri::Scheme;

use super::file::{
    RawCluster, RawConfig, RawEnvironment, RawKey, RawLimits, RawServer, RawUpstream,
};
use super::{
    Admin, AllowedHosts, Cluster, Config, ConfigError, Environment, KeyPolicy, Limits, Model,
    Models, OnRedisDown, PerKeyMetrics, PreviousSecret, Price, Server, ServerLimits, Storage,
    TlsFiles, Upstream,
};
use crate::access::{IpRules, ReferrerRules, Scope, ScopeSet, parse_ip_or_cidr};
use crate::auth::KeyDigest;
use crate::pipeline::request_json::CapField;

/// The largest amount of money a config may name, in USD (a guard against typos like 5e9).
const MAX_USD: f64 = 1e9;
/// The longest timeout or grace period a config may set.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, path: impl std::fmt::Display, msg: impl std::fmt::Display) {
        self.0.push(format!("{path}: {msg}"));
    }

    /// Records the error of `result` (if any) under `path` and returns its value.
    fn take<T>(&mut self, path: impl std::fmt::Display, result: Result<T, String>) -> Option<T> {
        result.map_err(|e| self.add(path, e)).ok()
    }
}

pub fn validate(mut raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
    let keys = std::mem::take(&mut raw.keys);
    let count = keys.len();
    validate_keys(raw, keys, count, base)
}

/// [`validate`], with the keys taken one at a time from `keys` (about `count` of them) rather
/// than from `raw.keys`: a file read key by key is validated as it is read, so each key's
/// parse leaves no garbage between the keys that stay (see [`super::from_str`]).
pub fn validate_keys(
    raw: RawConfig,
    keys: impl IntoIterator<Item = RawKey>,
    count: usize,
    base: &Path,
) -> Result<Config, ConfigError> {
    let raw_keys = keys;
    let mut p = Problems::default();
    let server = server(&raw.server, base, &mut p);
    let admin = Admin {
        listen: p
            .take(
                "admin.listen",
                socket_addr(raw.admin.listen.as_deref().unwrap_or("127.0.0.1:8090")),
            )
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8090))),
        token_env: raw
            .admin
            .token_env
            .unwrap_or_else(|| "KEYGATE_ADMIN_TOKEN".to_owned()),
        allowed_hosts: allowed_hosts(raw.admin.allowed_hosts.as_deref(), &mut p),
        per_key_metrics: match raw.admin.per_key_metrics.as_deref() {
            None | Some("active") => PerKeyMetrics::Active,
            Some("all") => PerKeyMetrics::All,
            Some(other) => {
                p.add(
                    "admin.per_key_metrics",
                    format!("{other:?} is neither \"active\" nor \"all\""),
                );
                PerKeyMetrics::Active
            }
        },
    };
    if let Some(server) = &server {
        let (a, b) = (server.listen, admin.listen);
        let overlap = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
        if a.port() != 0 && a.port() == b.port() && overlap {
            p.add(
                "admin.listen",
                format!(
                    "{b} is also server.listen ({a}): the admin listener needs its own port (the default is 127.0.0.1:8090)"
                ),
            );
        }
    }
    let upstream = upstream(&raw.upstream, &mut p);
    let storage = Storage {
        path: base.join(raw.storage.path.as_deref().unwrap_or("data/keygate.db")),
        max_unflushed: duration(
            &mut p,
            "storage.max_unflushed",
            &raw.storage.max_unflushed,
            Duration::from_secs(5),
        ),
    };

    let mut models = Models::default();
    for (i, m) in raw.models.iter().enumerate() {
        let path = format!("models[{i}]");
        let scope = p.take(format!("{path}.scope"), Scope::parse(&m.scope));
        let input = p.take(
            format!("{path}.input_per_million"),
            usd_micros(m.input_per_million),
        );
        let cached = match m.cached_input_per_million {
            Some(v) => p.take(format!("{path}.cached_input_per_million"), usd_micros(v)),
            None => input,
        };
        let output = p.take(
            format!("{path}.output_per_million"),
            usd_micros(m.output_per_million),
        );
        let cap_field = match m.cap_field.as_deref() {
            None | Some("max_tokens") => Some(CapField::MaxTokens),
            Some("max_completion_tokens") => Some(CapField::MaxCompletionTokens),
            Some(other) => {
                p.add(
                    format!("{path}.cap_field"),
                    format!("{other:?} is not max_tokens or max_completion_tokens"),
                );
                None
            }
        };
        let default_max_tokens = match m.default_max_tokens {
            Some(v) => positive_u32(&mut p, &format!("{path}.default_max_tokens"), v).map(Some),
            None => Some(None),
        };
        let per_request = match m.per_request_usd {
            Some(v) => p
                .take(format!("{path}.per_request_usd"), usd_micros(v))
                .map(Some),
            None => Some(None),
        };
        if m.name.trim().is_empty() || m.name.trim() != m.name {
            p.add(
                format!("{path}.name"),
                "must be a non-empty name without surrounding spaces",
            );
        }
        if let (
            Some(scope),
            Some(input),
            Some(cached_input),
            Some(output),
            Some(per_request),
            Some(cap_field),
            Some(default_max_tokens),
        ) = (
            scope,
            input,
            cached,
            output,
            per_request,
            cap_field,
            default_max_tokens,
        ) {
            let model = Model {
                name: m.name.as_str().into(),
                scope,
                price: Price {
                    input,
                    cached_input,
                    output,
                },
                per_request_micros: per_request,
                cap_field,
                default_max_tokens,
            };
            if !models.insert(model) {
                p.add(
                    format!("{path}.name"),
                    format!("model {:?} is listed twice", m.name),
                );
            }
        }
    }

    let mut envs: HashMap<Environment, Defaults> = HashMap::new();
    for (name, env) in &raw.environments {
        let path = format!("environments.{name}");
        match Environment::parse(name) {
            Some(e) => {
                let defaults = defaults(&path, env, &models, &mut p);
                envs.insert(e, defaults);
            }
            None => p.add(
                path,
                "unknown environment (expected production, development or restricted)",
            ),
        }
    }

    let now = SystemTime::now();
    let mut keys = Vec::with_capacity(count);
    let mut ids: HashSet<Arc<str>> = HashSet::with_capacity(count);
    let mut digests: HashMap<KeyDigest, Arc<str>> = HashMap::with_capacity(count);
    for (i, k) in raw_keys.into_iter().enumerate() {
        let path = format!("keys[{i}]");
        if ids.contains(k.id.as_str()) {
            p.add(format!("{path}.id"), format!("duplicate key id {:?}", k.id));
        }
        if let Some(policy) = key(&path, &k, &envs, &models, now, &mut p) {
            ids.insert(policy.id.clone());
            for d in
                std::iter::once(policy.digest).chain(policy.previous.as_ref().map(|s| s.digest))
            {
                if let Some(other) = digests.insert(d, policy.id.clone()) {
                    p.add(
                        format!("{path}.hash"),
                        format!("the same key hash is already used by key {other:?}"),
                    );
                }
            }
            keys.push(Arc::new(policy));
        }
    }

    let cluster = raw.cluster.as_ref().map(|c| cluster(c, &mut p));

    if !p.0.is_empty() {
        return Err(ConfigError { problems: p.0 });
    }
    let (Some(server), Some(upstream)) = (server, upstream) else {
        return Err(ConfigError::one(
            "invalid [server] or [upstream] section".into(),
        ));
    };
    Ok(Config {
        server,
        admin,
        upstream,
        storage,
        models,
        keys,
        cluster,
    })
}

fn server(raw: &RawServer, base: &Path, p: &mut Problems) -> Option<Server> {
    let listen = p.take("server.listen", socket_addr(&raw.listen));
    let trusted = cidrs("server.trusted_proxies", &raw.trusted_proxies, p);
    let tls = match (&raw.tls_cert, &raw.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: base.join(cert),
            key: base.join(key),
        }),
        (None, None) => None,
        _ => {
            p.add(
                "server.tls_cert",
                "tls_cert and tls_key must be set together",
            );
            None
        }
    };
    let d = ServerLimits::default();
    let limits = ServerLimits {
        header_read_timeout: duration(
            p,
            "server.header_read_timeout",
            &raw.header_read_timeout,
            d.header_read_timeout,
        ),
        body_read_timeout: duration(
            p,
            "server.body_read_timeout",
            &raw.body_read_timeout,
            d.body_read_timeout,
        ),
        max_header_bytes: bounded(
            p,
            "server.max_header_bytes",
            raw.max_header_bytes,
            d.max_header_bytes,
            1024,
            1 << 20,
        ),
        max_headers: bounded(
            p,
            "server.max_headers",
            raw.max_headers,
            d.max_headers,
            8,
            1000,
        ),
        max_uri_bytes: bounded(
            p,
            "server.max_uri_bytes",
            raw.max_uri_bytes,
            d.max_uri_bytes,
            256,
            1 << 20,
        ),
        max_body_bytes: bounded(
            p,
            "server.max_body_bytes",
            raw.max_body_bytes,
            d.max_body_bytes as usize,
            1024,
            1 << 30,
        ) as u64,
        max_json_depth: bounded(
            p,
            "server.max_json_depth",
            raw.max_json_depth,
            d.max_json_depth,
            2,
            128,
        ),
        max_connections: bounded(
            p,
            "server.max_connections",
            raw.max_connections,
            d.max_connections,
            1,
            1_000_000,
        ),
        shutdown_grace: duration(
            p,
            "server.shutdown_grace",
            &raw.shutdown_grace,
            d.shutdown_grace,
        ),
        invalid_keys_per_minute: bounded(
            p,
            "server.invalid_keys_per_minute",
            raw.invalid_keys_per_minute,
            d.invalid_keys_per_minute as usize,
            1,
            1_000_000,
        ) as u32,
        invalid_key_cooldown: duration(
            p,
            "server.invalid_key_cooldown",
            &raw.invalid_key_cooldown,
            d.invalid_key_cooldown,
        ),
        max_buffered_body_bytes: bounded(
            p,
            "server.max_buffered_body_bytes",
            raw.max_buffered_body_bytes,
            usize::try_from(d.max_buffered_body_bytes).unwrap_or(usize::MAX),
            1024,
            1 << 40,
        ) as u64,
        client_write_timeout: duration(
            p,
            "server.client_write_timeout",
            &raw.client_write_timeout,
            d.client_write_timeout,
        ),
    };
    Some(Server {
        listen: listen?,
        trusted_proxies: trusted,
        tls,
        limits,
    })
}

fn upstream(raw: &RawUpstream, p: &mut Problems) -> Option<Upstream> {
    let url = p.take("upstream.url", upstream_url(&raw.url));
    if raw.api_key_env.trim().is_empty() {
        p.add("upstream.api_key_env", "must name an environment variable");
    }
    let connect_timeout = duration(
        p,
        "upstream.connect_timeout",
        &raw.connect_timeout,
        Duration::from_secs(5),
    );
    let first_byte_timeout = duration(
        p,
        "upstream.first_byte_timeout",
        &raw.first_byte_timeout,
        Duration::from_secs(120),
    );
    let idle_timeout = duration(
        p,
        "upstream.idle_timeout",
        &raw.idle_timeout,
        Duration::from_secs(120),
    );
    let probe_interval = duration(
        p,
        "upstream.probe_interval",
        &raw.probe_interval,
        Duration::from_secs(10),
    );
    let (scheme, authority, base_path) = url?;
    if scheme == Scheme::HTTP && !raw.allow_plaintext && !is_loopback_host(authority.host()) {
        p.add(
            "upstream.url",
            format!(
                "http:// to {} would send the real upstream key in clear text; use https://, or set upstream.allow_plaintext = true if the network path is private",
                authority.host()
            ),
        );
        return None;
    }
    let host_header = http::HeaderValue::from_str(authority.as_str()).ok()?;
    Some(Upstream {
        host_header,
        scheme,
        authority,
        base_path,
        api_key_env: raw.api_key_env.clone(),
        connect_timeout,
        first_byte_timeout,
        idle_timeout,
        probe_interval,
        allow_plaintext: raw.allow_plaintext,
    })
}

fn cluster(raw: &RawCluster, p: &mut Problems) -> Cluster {
    let redis_url_env = raw
        .redis_url_env
        .clone()
        .unwrap_or_else(|| "KEYGATE_REDIS_URL".to_owned());
    if redis_url_env.trim().is_empty() {
        p.add("cluster.redis_url_env", "must name an environment variable");
    }
    let replicas_hint = u32::try_from(bounded(
        p,
        "cluster.replicas_hint",
        raw.replicas_hint,
        1,
        1,
        10_000,
    ))
    .ok()
    .and_then(NonZeroU32::new)
    .unwrap_or(NonZeroU32::MIN);
    let on_redis_down = match raw.on_redis_down.as_deref() {
        None | Some("local") => OnRedisDown::Local,
        Some("deny") => OnRedisDown::Deny,
        Some(other) => {
            p.add(
                "cluster.on_redis_down",
                format!("{other:?} is not local or deny"),
            );
            OnRedisDown::Local
        }
    };
    let redis_timeout = duration(
        p,
        "cluster.redis_timeout",
        &raw.redis_timeout,
        Duration::from_millis(50),
    );
    let lease = duration(p, "cluster.lease", &raw.lease, Duration::from_secs(60));
    if lease < Duration::from_secs(1) {
        p.add("cluster.lease", "must be at least 1s");
    }
    Cluster {
        redis_url_env,
        replicas_hint,
        on_redis_down,
        redis_timeout,
        lease,
    }
}

/// `localhost`, or an address in 127.0.0.0/8 or `::1`.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

fn allowed_hosts(raw: Option<&[String]>, p: &mut Problems) -> AllowedHosts {
    let Some(list) = raw else {
        return AllowedHosts::LoopbackAndLiterals;
    };
    let mut names = Vec::with_capacity(list.len());
    for (i, name) in list.iter().enumerate() {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if valid {
            names.push(name.to_ascii_lowercase());
        } else {
            p.add(
                format!("admin.allowed_hosts[{i}]"),
                format!("{name:?} is not a host name (IP literals are always allowed; give names without port)"),
            );
        }
    }
    AllowedHosts::Names(names)
}

fn upstream_url(s: &str) -> Result<(Scheme, http::uri::Authority, String), String> {
    let uri: Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    let scheme = match uri.scheme() {
        Some(sch) if *sch == Scheme::HTTPS || *sch == Scheme::HTTP => sch.clone(),
        _ => {
            return Err(format!(
                "{s:?} must start with https:// (or http:// for a local upstream)"
            ));
        }
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{s:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err("must not contain credentials; use upstream.api_key_env".into());
    }
    if uri.query().is_some() {
        return Err(format!("{s:?} must not have a query string"));
    }
    Ok((
        scheme,
        authority,
        uri.path().trim_end_matches('/').to_owned(),
    ))
}

/// Environment defaults, validated once and copied into each key that lacks its own value.
#[derive(Default)]
struct Defaults {
    scopes: Option<ScopeSet>,
    models: Option<Vec<Arc<str>>>,
    allowed_ips: Option<IpRules>,
    allowed_referrers: Option<ReferrerRules>,
    limits: RawLimits,
}

fn defaults(path: &str, env: &RawEnvironment, models: &Models, p: &mut Problems) -> Defaults {
    Defaults {
        scopes: env
            .scopes
            .as_ref()
            .map(|s| scopes(&format!("{path}.scopes"), s, p)),
        models: env
            .models
            .as_ref()
            .map(|m| model_list(&format!("{path}.models"), m, models, p)),
        allowed_ips: env
            .allowed_ips
            .as_ref()
            .map(|v| cidrs(&format!("{path}.allowed_ips"), v, p)),
        allowed_referrers: env
            .allowed_referrers
            .as_ref()
            .map(|v| referrers(&format!("{path}.allowed_referrers"), v, p)),
        limits: env.limits.clone(),
    }
}

fn key(
    path: &str,
    k: &RawKey,
    envs: &HashMap<Environment, Defaults>,
    models: &Models,
    now: SystemTime,
    p: &mut Problems,
) -> Option<KeyPolicy> {
    let valid_id = !k.id.is_empty()
        && k.id.len() <= 64
        && k.id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid_id {
        p.add(
            format!("{path}.id"),
            "must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'",
        );
    }
    let environment = Environment::parse(&k.environment);
    if environment.is_none() {
        p.add(
            format!("{path}.environment"),
            format!(
                "unknown environment {:?} (expected production, development or restricted)",
                k.environment
            ),
        );
    }
    let empty = Defaults::default();
    let env = environment.and_then(|e| envs.get(&e)).unwrap_or(&empty);
    let digest = p.take(format!("{path}.hash"), KeyDigest::parse(&k.hash));
    let active = match k.status.as_str() {
        "active" => Some(true),
        "inactive" => Some(false),
        other => {
            p.add(
                format!("{path}.status"),
                format!("{other:?} is not active or inactive"),
            );
            None
        }
    };
    let created = p.take(format!("{path}.created"), utc(&k.created));
    let expires = k
        .expires
        .as_ref()
        .and_then(|d| p.take(format!("{path}.expires"), utc(d)));
    let previous = match (&k.previous_hash, &k.previous_expires) {
        (Some(h), Some(e)) => {
            let digest = p.take(format!("{path}.previous_hash"), KeyDigest::parse(h));
            let expires = p.take(format!("{path}.previous_expires"), utc(e));
            digest
                .zip(expires)
                .map(|(digest, expires)| PreviousSecret { digest, expires })
        }
        (None, None) => None,
        _ => {
            p.add(
                format!("{path}.previous_hash"),
                "previous_hash and previous_expires must be set together",
            );
            None
        }
    };
    let previous = previous.filter(|prev| prev.expires > now);

    let scopes = match &k.scopes {
        Some(s) => scopes(&format!("{path}.scopes"), s, p),
        None => env.scopes.unwrap_or_default(),
    };
    if scopes.is_empty() {
        p.add(
            format!("{path}.scopes"),
            "a key needs at least one scope (set scopes on the key or in its environment)",
        );
    }
    let model_list = match &k.models {
        Some(m) => Some(model_list(&format!("{path}.models"), m, models, p)),
        None => env.models.clone(),
    };
    if environment == Some(Environment::Restricted) && model_list.as_ref().is_none_or(Vec::is_empty)
    {
        p.add(
            format!("{path}.models"),
            "a key in the restricted environment must list the models it may use",
        );
    }
    let allowed_ips = match &k.allowed_ips {
        Some(v) => cidrs(&format!("{path}.allowed_ips"), v, p),
        None => env.allowed_ips.clone().unwrap_or_default(),
    };
    let allowed_referrers = match &k.allowed_referrers {
        Some(v) => referrers(&format!("{path}.allowed_referrers"), v, p),
        None => env.allowed_referrers.clone().unwrap_or_default(),
    };
    let limits = limits(&format!("{path}.limits"), &k.limits, &env.limits, p);

    Some(KeyPolicy {
        id: k.id.as_str().into(),
        name: k.name.clone(),
        description: k.description.clone(),
        environment: environment?,
        digest: digest?,
        previous,
        active: active?,
        created: created?,
        expires,
        scopes,
        models: model_list,
        allowed_ips,
        allowed_referrers,
        limits: limits?,
    })
}

fn limits(path: &str, own: &RawLimits, env: &RawLimits, p: &mut Problems) -> Option<Limits> {
    let mut ok = true;
    let mut count = |field: &str, v: Option<u64>| -> Option<NonZeroU32> {
        let n = positive_u32(p, &format!("{path}.{field}"), v?);
        ok &= n.is_some();
        n
    };
    let requests_per_minute = count(
        "requests_per_minute",
        own.requests_per_minute.or(env.requests_per_minute),
    );
    let tokens_per_minute = count(
        "tokens_per_minute",
        own.tokens_per_minute.or(env.tokens_per_minute),
    );
    let default_max_tokens = count(
        "default_max_tokens",
        own.default_max_tokens.or(env.default_max_tokens),
    );
    let max_concurrent_requests = count(
        "max_concurrent_requests",
        own.max_concurrent_requests.or(env.max_concurrent_requests),
    );
    let monthly_spend_micros = match own.monthly_spend_usd.or(env.monthly_spend_usd) {
        Some(usd) => p
            .take(format!("{path}.monthly_spend_usd"), usd_micros(usd))
            .or_else(|| {
                ok = false;
                None
            }),
        None => None,
    };
    ok.then_some(Limits {
        requests_per_minute,
        tokens_per_minute,
        monthly_spend_micros,
        max_concurrent_requests,
        default_max_tokens,
    })
}

fn scopes(path: &str, list: &[String], p: &mut Problems) -> ScopeSet {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| p.take(format!("{path}[{i}]"), Scope::parse(s)))
        .collect()
}

fn model_list(path: &str, list: &[String], models: &Models, p: &mut Problems) -> Vec<Arc<str>> {
    list.iter()
        .enumerate()
        .filter_map(|(i, name)| match models.get(name) {
            Some(m) => Some(m.name.clone()),
            None => {
                p.add(
                    format!("{path}[{i}]"),
                    format!("model {name:?} is not listed in [[models]]"),
                );
                None
            }
        })
        .collect()
}

fn cidrs(path: &str, list: &[String], p: &mut Problems) -> IpRules {
    IpRules::new(
        list.iter()
            .enumerate()
            .filter_map(|(i, s)| p.take(format!("{path}[{i}]"), parse_ip_or_cidr(s)))
            .collect(),
    )
}

fn referrers(path: &str, list: &[String], p: &mut Problems) -> ReferrerRules {
    ReferrerRules::compile(list).unwrap_or_else(|(i, e)| {
        p.add(format!("{path}[{i}]"), e);
        ReferrerRules::default()
    })
}

fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:8080 or [::1]:8080"))
}

fn duration(p: &mut Problems, path: &str, raw: &Option<String>, default: Duration) -> Duration {
    let Some(text) = raw else { return default };
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() && d <= MAX_DURATION => d,
        Ok(d) if d.is_zero() => {
            p.add(path, "must be longer than zero");
            default
        }
        Ok(_) => {
            p.add(path, format!("{text:?} is longer than a day"));
            default
        }
        Err(e) => {
            p.add(
                path,
                format!("{text:?} is not a duration like \"10s\" or \"2m\": {e}"),
            );
            default
        }
    }
}

/// A count from 1 to `u32::MAX`, else the problem named at `path`.
fn positive_u32(p: &mut Problems, path: &str, v: u64) -> Option<NonZeroU32> {
    let n = u32::try_from(v).ok().and_then(NonZeroU32::new);
    if n.is_none() {
        p.add(path, format!("{v} must be between 1 and {}", u32::MAX));
    }
    n
}

fn bounded(
    p: &mut Problems,
    path: &str,
    raw: Option<u64>,
    default: usize,
    min: u64,
    max: u64,
) -> usize {
    match raw {
        None => default,
        Some(v) if (min..=max).contains(&v) => usize::try_from(v).unwrap_or(default),
        Some(v) => {
            p.add(path, format!("{v} is outside {min}..={max}"));
            default
        }
    }
}

/// USD amount to integer micro-dollars; refuses negatives, NaN and sub-micro-dollar precision.
pub fn usd_micros(usd: f64) -> Result<u64, String> {
    if !usd.is_finite() || !(0.0..=MAX_USD).contains(&usd) {
        return Err(format!(
            "{usd} must be an amount in USD between 0 and {MAX_USD}"
        ));
    }
    let scaled = usd * 1e6;
    let micros = scaled.round();
    if (scaled - micros).abs() > 1e-3 {
        return Err(format!("{usd} is more precise than one micro-dollar"));
    }
    // In range by the checks above: 0 <= micros <= 1e15 < 2^53.
    Ok(micros as u64)
}

/// A TOML offset date-time in UTC (`2026-01-15T00:00:00Z`) as a `SystemTime`.
fn utc(dt: &toml::value::Datetime) -> Result<SystemTime, String> {
    let text = dt.to_string();
    if dt.date.is_none() || dt.time.is_none() || dt.offset.is_none() {
        return Err(format!(
            "{text} must be a full UTC timestamp like 2026-01-15T00:00:00Z"
        ));
    }
    humantime::parse_rfc3339(&text)
        .map_err(|_| format!("{text} must be in UTC, ending in Z (like 2026-01-15T00:00:00Z)"))
}
