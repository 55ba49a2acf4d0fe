//! The config file exactly as written: serde structs that refuse unknown fields at every level.
//! Nothing here is interpreted; [`super::validate`] turns it into typed values.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub redis_url_env: Option<String>,
    pub replicas_hint: Option<u64>,
    pub on_redis_down: Option<String>,
    pub redis_timeout: Option<String>,
    pub lease: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_env: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    pub api_key_env: String,
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub path: Option<String>,
    pub max_unflushed: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct RawEnvironment {
    pub scopes: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub allowed_ips: Option<Vec<String>>,
    pub allowed_referrers: Option<Vec<String>>,
    #[serde(default)]
    pub limits: RawLimits,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub monthly_spend_usd: Option<f64>,
    pub max_concurrent_requests: Option<u64>,
    pub default_max_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// Parses TOML text; the error names the TOML path and the line.
pub fn parse(text: &str) -> Result<RawConfig, String> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.message().trim_end().to_owned();
        let line = inner
            .span()
            .map(|span| format!(" (line {})", line_of(text, span.start)))
            .unwrap_or_default();
        if path == "." || path.is_empty() {
            format!("{msg}{line}")
        } else {
            format!("{path}: {msg}{line}")
        }
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
