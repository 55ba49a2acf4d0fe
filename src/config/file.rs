//! The config file exactly as written: serde structs that refuse unknown fields at every level.
//! Nothing here is interpreted; [`super::validate`] turns it into typed values.
//!
//! Unknown fields are collected (with `serde_ignored`) rather than stopping the parse at the
//! first, so one typo does not hide the other problems of the file.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::split;

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    pub upstream: RawUpstream,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub environments: BTreeMap<String, RawEnvironment>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
    pub cluster: Option<RawCluster>,
}

#[derive(Debug, Deserialize)]
pub struct RawCluster {
    pub redis_url_env: Option<String>,
    pub replicas_hint: Option<u64>,
    pub on_redis_down: Option<String>,
    pub redis_timeout: Option<String>,
    pub lease: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawServer {
    pub listen: String,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub max_header_bytes: Option<u64>,
    pub max_headers: Option<u64>,
    pub max_uri_bytes: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub max_json_depth: Option<u64>,
    pub max_connections: Option<u64>,
    pub shutdown_grace: Option<String>,
    pub invalid_keys_per_minute: Option<u64>,
    pub invalid_key_cooldown: Option<String>,
    pub max_buffered_body_bytes: Option<u64>,
    pub client_write_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_env: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
    pub per_key_metrics: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawUpstream {
    pub url: String,
    pub api_key_env: String,
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    /// How often the upstream's reachability is checked in the background.
    pub probe_interval: Option<String>,
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawStorage {
    pub path: Option<String>,
    pub max_unflushed: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawModel {
    pub name: String,
    pub scope: String,
    pub input_per_million: f64,
    pub cached_input_per_million: Option<f64>,
    pub output_per_million: f64,
    /// A price per request (images, audio, fine-tuning jobs), in USD; per image for images.
    pub per_request_usd: Option<f64>,
    /// The member the upstream reads the completion cap from for this model.
    pub cap_field: Option<String>,
    /// The completion cap reserved (and written) for a request that sets none, unless its key
    /// sets `default_max_tokens`.
    pub default_max_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawEnvironment {
    pub scopes: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub allowed_ips: Option<Vec<String>>,
    pub allowed_referrers: Option<Vec<String>>,
    #[serde(default)]
    pub limits: RawLimits,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct RawLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub monthly_spend_usd: Option<f64>,
    pub max_concurrent_requests: Option<u64>,
    pub default_max_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct RawKey {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub environment: String,
    pub hash: String,
    #[serde(default = "default_status")]
    pub status: String,
    pub created: toml::value::Datetime,
    pub expires: Option<toml::value::Datetime>,
    pub previous_hash: Option<String>,
    pub previous_expires: Option<toml::value::Datetime>,
    pub scopes: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub allowed_ips: Option<Vec<String>>,
    pub allowed_referrers: Option<Vec<String>>,
    #[serde(default)]
    pub limits: RawLimits,
}

fn default_status() -> String {
    "active".to_owned()
}

/// One `[[keys]]` table parsed alone.
#[derive(Deserialize)]
struct OneKey {
    keys: Vec<RawKey>,
}

/// Everything but the key tables, or `None` when that part holds keys of its own.
pub fn parse_rest(text: &str, parts: &split::Parts) -> Option<(RawConfig, Vec<String>)> {
    let (raw, unknown) = parse_whole(&parts.rest(text)).ok()?;
    raw.keys.is_empty().then_some((raw, unknown))
}

/// Key table `i` (at `range` of `text`) alone, its unknown fields added to `unknown` by their
/// path in the file; `None` if it does not parse as exactly one key.
pub fn parse_key(
    text: &str,
    range: &std::ops::Range<usize>,
    i: usize,
    unknown: &mut Vec<String>,
) -> Option<RawKey> {
    let mut own = Vec::new();
    let de = toml::Deserializer::parse(text.get(range.clone())?).ok()?;
    let mut note = |path: serde_ignored::Path<'_>| own.push(toml_path(&path));
    let one: OneKey =
        serde::Deserialize::deserialize(serde_ignored::Deserializer::new(de, &mut note)).ok()?;
    let [key] = <[RawKey; 1]>::try_from(one.keys).ok()?;
    for path in own {
        // `keys[0]...` in the table alone is `keys[i]...` in the file.
        let rest = path.strip_prefix("keys[0]")?;
        unknown.push(format!("keys[{i}]{rest}: unknown field"));
    }
    Some(key)
}

/// Parses the whole TOML text: the config and every unknown field by its TOML path, or every
/// unknown field met before a value that does not parse, then that error (with its path and
/// line). `config::from_str` reads a file of many keys key by key first (see [`split`]) and
/// comes here for anything the split cannot take for certain and for every error, so the
/// result and the messages are the same either way.
pub fn parse_whole(text: &str) -> Result<(RawConfig, Vec<String>), Vec<String>> {
    let de = toml::Deserializer::parse(text).map_err(|e| vec![described(text, "", &e)])?;
    let mut unknown = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| {
        unknown.push(format!("{}: unknown field", toml_path(&path)));
    };
    let parsed: Result<RawConfig, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut note));
    match parsed {
        Ok(raw) => Ok((raw, unknown)),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            unknown.push(described(text, &path, e.inner()));
            Err(unknown)
        }
    }
}

/// `path: message (line N)`.
fn described(text: &str, path: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim_end();
    let line = e
        .span()
        .map(|span| format!(" (line {})", line_of(text, span.start)))
        .unwrap_or_default();
    if path.is_empty() {
        format!("{msg}{line}")
    } else {
        format!("{path}: {msg}{line}")
    }
}

/// `keys[2].limits.rpm`, as the other problems name their fields.
fn toml_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", toml_path(parent)),
        Path::Map { parent, key } => match toml_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => toml_path(parent),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
