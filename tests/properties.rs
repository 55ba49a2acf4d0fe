//! Property tests for every parser on the request path. None may panic on any input, and each
//! states the invariant it checks in its name and comment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue, Method};
use keygate::access::client_ip::{self, BadForwardedFor};
use keygate::access::{IpRules, ReferrerRules, parse_ip_or_cidr};
use keygate::auth::key::{self, ApiKey, KeyDigest, KeyFormatError};
use keygate::pipeline::request_json;
use keygate::pipeline::route;
use keygate::upstream::UsageScanner;
use keygate::upstream::usage_strip::UsageStripper;
use proptest::prelude::*;
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Key format: any string is either refused or is a well-formed key whose digest is the
    /// SHA-256 of exactly that string; nothing panics.
    #[test]
    /// The input is arbitrary text, or a real key cut short or with text added, so both
    /// branches run.
    fn key_verification_accepts_only_well_formed_keys(
        s in prop_oneof![
            ".{0,60}",
            (0usize..=44, ".{0,4}").prop_map(|(cut, extra)| {
                let key = ApiKey::generate();
                format!("{}{extra}", &key.expose()[..cut])
            }),
        ]
    ) {
        if let Ok(d) = key::verify(&s) {
            prop_assert_eq!(d, KeyDigest::of(&s));
            prop_assert!(s.starts_with("sk-kg-") && s.len() == key::KEY_LEN);
        }
    }

    /// A generated key is always accepted, and its digest is that of exactly its text.
    #[test]
    fn every_generated_key_verifies(_case in 0u8..8) {
        let key = ApiKey::generate();
        prop_assert_eq!(key::verify(key.expose()), Ok(KeyDigest::of(key.expose())));
    }

    /// Key format: changing any one character after the prefix of a real key is always caught
    /// (CRC-32 catches every single-character change), so a typo never reaches a lookup.
    #[test]
    fn a_single_changed_character_is_always_caught(at in 6usize..44, c in "[0-9A-Za-z]") {
        let key = ApiKey::generate();
        let mut bytes = key.expose().as_bytes().to_vec();
        let c = c.as_bytes()[0];
        prop_assume!(bytes[at] != c);
        bytes[at] = c;
        let typo = String::from_utf8(bytes).unwrap();
        prop_assert_eq!(key::verify(&typo), Err(KeyFormatError::BadChecksum));
    }

    /// Paths: a path keygate resolves is canonical, and what it forwards is the path itself or
    /// the path without its `/v1`, byte for byte.
    #[test]
    fn a_resolved_path_is_canonical_and_forwarded_as_is(path in "(/(v1|chat|completions|files|models|x|\\.|\\.\\.|%2e|;|[a-z0-9_:~-]{0,6})){0,5}/?") {
        for method in [Method::GET, Method::POST, Method::DELETE] {
            if let Ok(r) = route::resolve(&method, &path) {
                prop_assert!(route::check_canonical(&path).is_ok());
                let prefixed = format!("/v1{}", r.path);
                prop_assert!(path == r.path || path == prefixed);
                for seg in path.split('/').skip(1) {
                    prop_assert!(!seg.is_empty() && seg != "." && seg != "..");
                    prop_assert!(seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~:".contains(&b)));
                }
            }
        }
    }

    /// X-Forwarded-For: for any header bytes, the client is the peer when the peer is not a
    /// trusted proxy; otherwise it is an address written in the header or a trusted hop, or
    /// the request is refused; never a panic.
    #[test]
    fn forwarded_for_never_invents_an_address(raw in proptest::collection::vec(any::<u8>(), 0..80), trusted_peer in any::<bool>()) {
        let Ok(value) = HeaderValue::from_bytes(&raw) else { return Ok(()); };
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", value);
        let trusted = IpRules::new(vec![parse_ip_or_cidr("10.0.0.0/8").unwrap()]);
        let peer: SocketAddr = if trusted_peer { "10.0.0.1:1" } else { "203.0.113.5:1" }.parse().unwrap();
        match client_ip::resolve(peer, &headers, &trusted) {
            Ok(ip) if !trusted_peer => prop_assert_eq!(ip, peer.ip()),
            Ok(ip) => {
                let text = String::from_utf8_lossy(&raw);
                prop_assert!(ip == peer.ip() || text.contains(&ip.to_string()) || trusted.contains(ip), "{} from {:?}", ip, text);
            }
            Err(BadForwardedFor) => prop_assert!(trusted_peer),
        }
    }

    /// Referrers: whatever the header says, a rule for `https://allowed.example/app/*` admits
    /// only a URI whose scheme, host and port are exactly those and whose path starts with
    /// `/app/`: no userinfo, suffix or lookalike passes.
    #[test]
    fn referrer_rules_admit_only_what_they_name(
        referer in "(https?://)?([a-z@.:]{0,12}|allowed\\.example)(\\.evil\\.net|@evil\\.net|:443|:8443)?(/app/|/)?[a-z/?#]{0,8}"
    ) {
        let rules = ReferrerRules::compile(&["https://allowed.example/app/*".to_owned()]).unwrap();
        let Ok(value) = HeaderValue::from_str(&referer) else { return Ok(()); };
        let mut headers = HeaderMap::new();
        headers.insert("referer", value);
        if rules.allows(&headers) {
            let uri: http::Uri = referer.parse().unwrap();
            prop_assert_eq!(uri.scheme_str(), Some("https"));
            prop_assert_eq!(uri.host(), Some("allowed.example"));
            prop_assert!(uri.port_u16().is_none_or(|p| p == 443));
            prop_assert!(uri.path().starts_with("/app/"));
            prop_assert!(!uri.authority().unwrap().as_str().contains('@'));
        }
    }

    /// JSON reader: arbitrary bytes are refused or read, never a panic.
    #[test]
    fn the_json_reader_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = request_json::parse(&raw, 128);
    }

    /// JSON reader and splicer: for any body, the edited body means exactly the original plus
    /// the edits (`max_tokens` when there was no cap, `stream_options.include_usage: true`),
    /// and the reader reads the same model, stream flag and counts from both.
    #[test]
    fn spliced_edits_mean_exactly_the_original_plus_the_edits(
        body in json_body(),
        pretty in any::<bool>(),
        cap in proptest::option::of(1u64..100_000),
        include_usage in any::<bool>(),
    ) {
        let text = if pretty { serde_json::to_string_pretty(&body).unwrap() } else { body.to_string() };
        let fields = request_json::parse(text.as_bytes(), 128).unwrap();
        let cap = cap.filter(|_| fields.max_tokens.value().is_none());
        let Some(out) = request_json::rewrite(
            text.as_bytes(),
            &fields,
            cap.map(|c| (request_json::CapField::MaxTokens, c)),
            include_usage,
        )
        .unwrap() else {
            prop_assert!(cap.is_none() && !include_usage);
            return Ok(());
        };
        let mut expected = body.clone();
        if let Some(cap) = cap {
            expected["max_tokens"] = json!(cap);
        }
        if include_usage {
            match expected.get_mut("stream_options") {
                Some(Value::Object(o)) => { o.insert("include_usage".into(), json!(true)); }
                _ => expected["stream_options"] = json!({"include_usage": true}),
            }
        }
        let got: Value = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(&got, &expected);
        let again = request_json::parse(&out, 128).unwrap();
        prop_assert_eq!(again.model, fields.model);
        prop_assert_eq!(again.stream, fields.stream);
        prop_assert_eq!(again.n, fields.n);
        prop_assert_eq!(again.prompt, fields.prompt);
    }

    /// SSE usage scanner and stripper: cutting a stream into chunks at any boundaries gives the
    /// same usage, the same streamed tokens and the same stripped bytes as reading it whole.
    #[test]
    fn sse_results_do_not_depend_on_chunk_boundaries(stream in sse_stream(), cuts in proptest::collection::vec(0usize..4000, 0..12)) {
        let bytes = stream.as_bytes();
        let whole = scan(&[bytes]);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut at = 0;
        for c in cuts {
            pieces.push(&bytes[at..c]);
            at = c;
        }
        pieces.push(&bytes[at..]);
        prop_assert_eq!(scan(&pieces), whole);
    }

    /// Config validator: any mutation of a valid file is accepted or refused with problems,
    /// never a panic.
    #[test]
    fn the_config_validator_never_panics(at in 0usize..2000, cut in 0usize..40, insert in "[\\[\\]a-z0-9=\"\\.\\n_ -]{0,20}") {
        let text = BASE_CONFIG;
        let at = at % text.len();
        let end = (at + cut).min(text.len());
        if !text.is_char_boundary(at) || !text.is_char_boundary(end) {
            return Ok(());
        }
        let mutated = format!("{}{}{}", &text[..at], insert, &text[end..]);
        if let Err(e) = keygate::config::from_str(&mutated, std::path::Path::new(".")) {
            prop_assert!(!e.problems.is_empty());
        }
    }
}

const BASE_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8080"
trusted_proxies = ["10.0.0.0/8"]

[upstream]
url = "https://api.deepseek.com"
api_key_env = "DEEPSEEK_API_KEY"

[[models]]
name = "deepseek-chat"
scope = "chat"
input_per_million = 0.28
output_per_million = 0.42

[environments.development]
limits = { requests_per_minute = 60 }

[[keys]]
id = "key_a"
name = "a"
environment = "development"
hash = "sha256:47b8fb4f374753842571c528d64377c8ce86b31a52eeaff07d87f548d8e926a8"
created = 2026-01-01T00:00:00Z
scopes = ["chat"]
allowed_ips = ["203.0.113.0/24"]
allowed_referrers = ["https://example.com/*"]
limits = { tokens_per_minute = 1000, monthly_spend_usd = 5 }
"#;

/// (usage, streamed tokens, stripped output) of a stream fed in these pieces.
fn scan(pieces: &[&[u8]]) -> (Option<keygate::upstream::Usage>, u64, Vec<u8>) {
    // The scanner alone, as for a client that asked for usage itself.
    let mut scanner = UsageScanner::for_content_type(Some(b"text/event-stream"));
    for p in pieces {
        scanner.feed(p);
    }
    let usage = scanner.finish();
    // The stripper feeding the scanner in one pass, as for one that did not.
    let mut both = UsageScanner::for_content_type(Some(b"text/event-stream"));
    let mut stripper = UsageStripper::default();
    let mut out = bytes::BytesMut::new();
    for p in pieces {
        stripper.process(p, &mut |line| both.line(line), &mut out);
    }
    stripper.finish(&mut |line| both.line(line), &mut out);
    assert_eq!(both.finish(), usage);
    assert_eq!(both.streamed_tokens(), scanner.streamed_tokens());
    (usage, scanner.streamed_tokens(), out.to_vec())
}

fn sse_stream() -> impl Strategy<Value = String> {
    let delta = prop_oneof![
        "[a-z \\\\\"]{0,12}".prop_map(|t| json!({"content": t})),
        "[a-z ]{0,12}".prop_map(|t| json!({"reasoning_content": t, "content": null})),
        "[a-z{}\\\"]{0,12}"
            .prop_map(|t| json!({"tool_calls": [{"index": 0, "function": {"arguments": t}}]})),
        Just(json!({"role": "assistant", "content": ""})),
    ];
    (
        proptest::collection::vec((delta, 0u64..3, any::<bool>()), 0..20),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(events, usage, crlf)| {
            let nl = if crlf { "\r\n" } else { "\n" };
            let mut s = String::new();
            for (delta, index, null_usage) in events {
                let mut e = json!({"id": "x", "choices": [{"index": index, "delta": delta}]});
                if null_usage {
                    e["usage"] = Value::Null;
                }
                s.push_str(&format!("data: {e}{nl}{nl}"));
            }
            if usage {
                let u = json!({"id": "x", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "prompt_cache_hit_tokens": 2}});
                s.push_str(&format!("data: {u}{nl}{nl}"));
            }
            s.push_str(&format!("data: [DONE]{nl}{nl}"));
            s
        })
}

/// A chat or completions body with random members of the kinds keygate reads and others.
fn json_body() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        "[a-z \\\\\"{}\\[\\]]{0,10}".prop_map(Value::String),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    (
        proptest::option::of("[a-z-]{1,12}"),
        proptest::option::of(any::<bool>()),
        proptest::option::of(prop_oneof![
            (1u64..10_000).prop_map(|c| json!(c)),
            Just(Value::Null),
        ]),
        proptest::option::of(1u64..8),
        proptest::option::of(prop_oneof![
            Just(Value::Null),
            Just(json!({})),
            Just(json!({"include_usage": false})),
            Just(json!({"x": 1, "include_usage": true})),
        ]),
        proptest::option::of(prop_oneof![
            "[a-z]{0,8}".prop_map(|s| json!(s)),
            proptest::collection::vec("[a-z]{0,4}", 0..4).prop_map(|v| json!(v)),
            proptest::collection::vec(0u32..100, 0..4).prop_map(|v| json!(v)),
        ]),
        proptest::collection::btree_map("x[a-z]{0,5}", value, 0..3),
    )
        .prop_map(|(model, stream, cap, n, options, prompt, extra)| {
            let mut body = serde_json::Map::new();
            for (k, v) in extra {
                body.insert(k, v);
            }
            if let Some(m) = model {
                body.insert("model".into(), json!(m));
            }
            if let Some(s) = stream {
                body.insert("stream".into(), json!(s));
            }
            if let Some(c) = cap {
                body.insert("max_tokens".into(), c);
            }
            if let Some(n) = n {
                body.insert("n".into(), json!(n));
            }
            if let Some(o) = options {
                body.insert("stream_options".into(), o);
            }
            if let Some(p) = prompt {
                body.insert("prompt".into(), p);
            }
            Value::Object(body)
        })
}

#[test]
fn an_ip_rule_list_parses_what_it_prints() {
    let net = parse_ip_or_cidr("198.51.100.0/24").unwrap();
    let ip: IpAddr = "198.51.100.9".parse().unwrap();
    assert!(IpRules::new(vec![net]).contains(ip));
}
