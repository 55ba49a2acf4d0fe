#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark setup fails loudly

//! Micro-benchmarks for the per-request checks that run before any I/O.
//!
//! Decision informed: whether key verification (format + CRC-32 + SHA-256 + table lookup) and
//! the authorize phase (CIDR, referrer, scope, model) are cheap enough to run on every request
//! without caching, and that an unknown key or a bad checksum costs no more than a valid key
//! (no oracle for attackers, no cheap path for floods to exploit).

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use keygate::auth::{ApiKey, KeyStore};
use keygate::pipeline::{authorize, route};

fn config_with(keys: usize) -> (keygate::config::Config, Vec<ApiKey>) {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n[upstream]\nurl = \"http://127.0.0.1:1\"\napi_key_env = \"X\"\n\
         [[models]]\nname = \"deepseek-chat\"\nscope = \"chat\"\ninput_per_million = 0.27\noutput_per_million = 1.1\n",
    );
    let mut secrets = Vec::new();
    for i in 0..keys {
        let key = ApiKey::generate();
        text.push_str(&format!(
            "[[keys]]\nid = \"k{i}\"\nname = \"k{i}\"\nenvironment = \"production\"\nhash = \"{}\"\ncreated = 2026-01-01T00:00:00Z\n\
             scopes = [\"chat\"]\nmodels = [\"deepseek-chat\"]\nallowed_ips = [\"203.0.113.0/24\", \"198.51.100.0/24\", \"2001:db8::/32\"]\n\
             allowed_referrers = [\"https://app.example.com/*\", \"https://*.example.org/*\"]\n",
            key.digest()
        ));
        secrets.push(key);
    }
    (
        keygate::config::from_str(&text, Path::new(".")).unwrap(),
        secrets,
    )
}

fn key_verification(c: &mut Criterion) {
    let (config, secrets) = config_with(10_000);
    let store = KeyStore::new(&config.keys);
    let now = SystemTime::now();
    let valid = secrets[4242].expose().to_owned();
    let unknown = ApiKey::generate().expose().to_owned();
    let mut bad = valid.clone().into_bytes();
    bad[20] = if bad[20] == b'a' { b'b' } else { b'a' };
    let bad_checksum = String::from_utf8(bad).unwrap();

    let mut g = c.benchmark_group("key_verification_10k_keys");
    g.bench_function("valid", |b| {
        b.iter(|| store.authenticate(black_box(&valid), now).is_ok())
    });
    g.bench_function("unknown", |b| {
        b.iter(|| store.authenticate(black_box(&unknown), now).is_err())
    });
    g.bench_function("bad_checksum", |b| {
        b.iter(|| store.authenticate(black_box(&bad_checksum), now).is_err())
    });
    g.finish();
}

fn authorize_phase(c: &mut Criterion) {
    let (config, _) = config_with(1);
    let key = config.keys[0].clone();
    let mut headers = HeaderMap::new();
    headers.insert(
        "referer",
        "https://app.example.com/chat/page?x=1".parse().unwrap(),
    );
    headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7".parse().unwrap());
    let peer = SocketAddr::from(([10, 1, 2, 3], 5555));
    let mut g = c.benchmark_group("authorize");
    g.bench_function("client_ip_route_source_model", |b| {
        b.iter(|| {
            let ip: IpAddr = keygate::access::client_ip::resolve(
                peer,
                black_box(&headers),
                &config.server.trusted_proxies,
            )
            .unwrap();
            let route = route::resolve(&Method::POST, black_box("/v1/chat/completions")).unwrap();
            authorize::authorize_source(&key, ip, &headers, &route).unwrap();
            authorize::authorize_model(&key, &config.models, black_box("deepseek-chat")).is_ok()
        })
    });
    let body = br#"{"model":"deepseek-chat","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about gateways."}],"stream":true,"max_tokens":256,"temperature":0.7}"#;
    g.bench_function("request_json_fields", |b| {
        b.iter(|| {
            keygate::pipeline::request_json::parse(black_box(body), 128)
                .unwrap()
                .stream
        })
    });
    g.finish();
}

criterion_group!(benches, key_verification, authorize_phase);
criterion_main!(benches);
