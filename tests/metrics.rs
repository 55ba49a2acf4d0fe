//! The Prometheus endpoint after a known sequence of requests: exact counter values, histogram
//! counts, types and HELP that promtool accepts, health endpoints, and bounded cardinality.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use keygate::auth::ApiKey;
use serde_json::json;

async fn scrape(gw: &Gw) -> String {
    let a = get(&gw.admin_url("/metrics"), None).await;
    assert_eq!(a.status, 200);
    assert!(
        a.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    a.text()
}

const APP: &str = "scopes = [\"chat\"]\nexpires = 2999-01-01T00:00:00Z\nlimits = { requests_per_minute = 5, tokens_per_minute = 100000, monthly_spend_usd = 10 }";

#[tokio::test]
async fn counters_match_a_known_sequence_of_requests_and_promtool_accepts_them() {
    let s = Setup::new(&[
        ("app", APP),
        (
            "net",
            "scopes = [\"chat\"]\nallowed_ips = [\"203.0.113.0/24\"]",
        ),
    ])
    .await;
    let url = s.gw.url("/v1/chat/completions");
    // Two plain completions and one stream: each 4 prompt + 3 completion tokens.
    for _ in 0..2 {
        assert_eq!(chat_request(&url, s.key("app")).await.status, 200);
    }
    let stream = json!({"model": "deepseek-chat", "stream": true, "messages": [{"role": "user", "content": "Say hello"}]});
    let r = Request::post(&url)
        .header("authorization", s.key("app").bearer())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(stream.to_string())))
        .unwrap();
    let body = client()
        .request(r)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    assert!(!body.to_bytes().is_empty());
    // Refusals: an unknown key, a denied IP, an unconfigured model, and two past the RPM of 5.
    let unknown = TestKey {
        id: "x".into(),
        secret: ApiKey::generate().expose().to_owned(),
    };
    assert_eq!(chat_request(&url, &unknown).await.status, 401);
    assert_eq!(chat_request(&url, s.key("net")).await.status, 403);
    assert_eq!(
        post_json(&url, Some(s.key("app")), chat("nope"))
            .await
            .status,
        404
    );
    for _ in 0..3 {
        chat_request(&url, s.key("app")).await;
    }

    // Settlement of the stream happens as its body ends; wait for the in-flight gauge.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let text = loop {
        let text = scrape(&s.gw).await;
        if sample(&text, "keygate_inflight_requests") == Some(0.0)
            || tokio::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let v =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
    let ok = r#"keygate_requests_total{endpoint="/chat/completions",key="app",model="deepseek-chat",status="2xx"}"#;
    // 2 plain + 1 stream + the 5th request of the minute: the request refused for its model
    // counted against the RPM of 5 too, since a request counts before its body is read.
    assert_eq!(v(ok), 4.0);
    // The unconfigured model and the two refused by the RPM, before their bodies were read.
    assert_eq!(
        v(
            r#"keygate_requests_total{endpoint="/chat/completions",key="app",model="",status="4xx"}"#
        ),
        3.0
    );
    // The unknown key: no key, but the endpoint the client called.
    assert_eq!(
        v(r#"keygate_requests_total{endpoint="/chat/completions",key="",model="",status="4xx"}"#),
        1.0
    );
    assert_eq!(
        v(r#"keygate_tokens_total{key="app",kind="prompt",model="deepseek-chat"}"#),
        16.0
    );
    assert_eq!(
        v(r#"keygate_tokens_total{key="app",kind="completion",model="deepseek-chat"}"#),
        12.0
    );
    // 4 * $0.27/M + 3 * $1.10/M = 4.38 micro-dollars, rounded up to 5 per request.
    assert!(
        (v(r#"keygate_cost_usd_total{key="app",model="deepseek-chat"}"#) - 20e-6).abs() < 1e-12
    );
    assert_eq!(
        v(r#"keygate_rate_limited_total{key="app",limit="requests"}"#),
        2.0
    );
    assert_eq!(
        v(r#"keygate_auth_failures_total{reason="unknown_key"}"#),
        1.0
    );
    assert_eq!(
        v(r#"keygate_auth_failures_total{reason="expired_key"}"#),
        0.0
    );
    assert_eq!(v(r#"keygate_security_events_total{type="ip_denied"}"#), 1.0);
    // Every request called /chat/completions, the unknown key's too.
    assert_eq!(
        v(r#"keygate_request_duration_seconds_count{endpoint="/chat/completions"}"#),
        9.0
    );
    assert_eq!(
        sample(
            &text,
            r#"keygate_request_duration_seconds_count{endpoint="unmatched"}"#
        ),
        None
    );
    assert_eq!(
        v(r#"keygate_upstream_duration_seconds_count{endpoint="/chat/completions"}"#),
        4.0
    );
    assert_eq!(
        v(r#"keygate_overhead_seconds_count{endpoint="/chat/completions"}"#),
        9.0
    );
    assert!(text.contains(
        r#"keygate_request_duration_seconds_bucket{endpoint="/chat/completions",le="0.0001"}"#
    ));
    assert!(text.contains(
        r#"keygate_request_duration_seconds_bucket{endpoint="/chat/completions",le="600"}"#
    ));
    assert!((v(r#"keygate_key_spend_usd{key="app"}"#) - 20e-6).abs() < 1e-12);
    assert_eq!(
        v(r#"keygate_key_limit{key="app",kind="requests_per_minute"}"#),
        5.0
    );
    assert_eq!(
        v(r#"keygate_key_limit{key="app",kind="monthly_spend_usd"}"#),
        10.0
    );
    assert_eq!(
        v(r#"keygate_key_expiry_timestamp_seconds{key="app"}"#),
        32472144000.0
    );
    assert!(sample(&text, r#"keygate_key_expiry_timestamp_seconds{key="net"}"#).is_none());
    assert_eq!(v(r#"keygate_config_reloads_total{result="failure"}"#), 0.0);
    assert_eq!(v("keygate_upstream_up"), 1.0);
    assert!(text.contains("# TYPE keygate_request_duration_seconds histogram"));
    assert!(text.contains("# TYPE keygate_requests_total counter"));
    assert!(text.contains("# HELP keygate_overhead_seconds "));
    assert!(!text.contains(&s.key("app").secret));

    let mut check = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
}

#[tokio::test]
async fn health_and_readiness_explain_themselves() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let a = get(&s.gw.admin_url("/healthz"), None).await;
    assert_eq!(
        (a.status.as_u16(), a.json()["status"].as_str()),
        (200, Some("pass"))
    );
    let a = get(&s.gw.admin_url("/readyz"), None).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["status"], "pass");
    for check in [
        "config",
        "ledger",
        "upstream",
        "rate_limit_utilization",
        "error_rate",
    ] {
        assert_eq!(v["checks"][check]["status"], "pass", "{check}: {v}");
    }
    assert_eq!(get(&s.gw.admin_url("/nothing"), None).await.status, 404);
    assert_eq!(get(&s.gw.admin_url("/admin/keys"), None).await.status, 401);

    let (gw, key) = Gw::with_dead_upstream().await;
    assert_eq!(
        chat_request(&gw.url("/v1/chat/completions"), &key)
            .await
            .status,
        502
    );
    // An unreachable upstream is a warning, not a failure: taking every replica out of the
    // load balancer at once would not help. (The error rate fails on its own here.)
    let a = get(&gw.admin_url("/readyz"), None).await;
    assert_eq!(a.status, 503);
    let v = a.json();
    assert_eq!(
        (
            v["status"].as_str(),
            v["checks"]["upstream"]["status"].as_str()
        ),
        (Some("fail"), Some("warning"))
    );
    assert_eq!(v["checks"]["upstream"]["reachable"], false);
    assert_eq!(v["checks"]["error_rate"]["server_errors"], 1);
    assert_eq!(sample(&scrape(&gw).await, "keygate_upstream_up"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_random_requests_add_no_series() {
    // Random keys from one address would trip the brute-force guard; this test counts series.
    let s = Arc::new(
        Setup::with_server(
            &[("app", "scopes = [\"chat\"]")],
            "invalid_keys_per_minute = 1000000",
        )
        .await,
    );
    let url = |p: &str| s.gw.url(p);
    let good = s.key("app").secret.clone();
    // One request of each kind first, so the bounded series exist.
    let warmup = [
        (url("/v1/chat/completions"), good.clone(), "deepseek-chat"),
        (url("/v1/chat/completions"), good.clone(), "random-model"),
        (url("/v1/no/such/route"), good.clone(), "deepseek-chat"),
        (
            url("/v1/chat/completions"),
            ApiKey::generate().expose().to_owned(),
            "deepseek-chat",
        ),
        (
            url("/v1/chat/completions"),
            "sk-kg-garbage".to_owned(),
            "deepseek-chat",
        ),
    ];
    for (u, k, m) in &warmup {
        let t = TestKey {
            id: String::new(),
            secret: k.clone(),
        };
        post_json(u, Some(&t), chat(m)).await;
    }
    let before = series(&scrape(&s.gw).await);

    let tasks: Vec<_> = (0..32u64)
        .map(|task| {
            let s = s.clone();
            let good = good.clone();
            tokio::spawn(async move {
                let client = client();
                for i in 0..3125u64 {
                    let n = task * 3125 + i;
                    let (path, key, model) = match n % 4 {
                        0 => (
                            "/v1/chat/completions".to_owned(),
                            ApiKey::generate().expose().to_owned(),
                            "deepseek-chat".to_owned(),
                        ),
                        1 => (
                            "/v1/chat/completions".to_owned(),
                            format!("sk-kg-{n}"),
                            format!("m{n}"),
                        ),
                        2 => (
                            "/v1/chat/completions".to_owned(),
                            good.clone(),
                            format!("model-{n}"),
                        ),
                        _ => (
                            format!("/v1/r{n}/x{}", n * 7),
                            good.clone(),
                            "deepseek-chat".to_owned(),
                        ),
                    };
                    let req = Request::post(s.gw.url(&path))
                        .header("authorization", format!("Bearer {key}"))
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(chat(&model).to_string())))
                        .unwrap();
                    let resp = client.request(req).await.unwrap();
                    assert!(resp.status().is_client_error());
                    resp.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let text = scrape(&s.gw).await;
    let after = series(&text);
    let added: Vec<_> = after.difference(&before).collect();
    assert!(added.is_empty(), "new series: {added:?}");
    assert_eq!(
        sample(
            &text,
            r#"keygate_auth_failures_total{reason="unknown_key"}"#
        ),
        Some(25_001.0)
    );
}

/// By default only keys an alert or panel can concern get per-key gauges: keys with a request
/// since start or spend this month, and keys expiring within 30 days. `"all"` shows every key.
#[tokio::test]
async fn per_key_gauges_cover_active_and_expiring_keys_unless_all_are_asked_for() {
    let at = |days: u64| {
        humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + std::time::Duration::from_secs(days * 86_400),
        )
        .to_string()
    };
    let keys = [
        (
            "busy",
            "scopes = [\"chat\"]\nlimits = { requests_per_minute = 100 }".to_owned(),
        ),
        (
            "idle",
            "scopes = [\"chat\"]\nlimits = { requests_per_minute = 100 }".to_owned(),
        ),
        ("soon", format!("scopes = [\"chat\"]\nexpires = {}", at(3))),
        (
            "later",
            format!("scopes = [\"chat\"]\nexpires = {}", at(60)),
        ),
    ];
    for (setting, shown) in [
        ("", vec!["busy", "soon"]),
        ("per_key_metrics = \"active\"", vec!["busy", "soon"]),
        (
            "per_key_metrics = \"all\"",
            vec!["busy", "idle", "later", "soon"],
        ),
    ] {
        let mock = mock_upstream::MockUpstream::start().await.unwrap();
        let mut rest = String::new();
        let mut made = Vec::new();
        for (id, extra) in &keys {
            let (key, hash) = TestKey::new(id);
            rest.push_str(&key_toml(id, &hash, extra));
            made.push(key);
        }
        let text = config_text(&mock.url(), "", &rest).replacen(
            "[admin]\n",
            &format!("[admin]\n{setting}\n"),
            1,
        );
        let gw = Gw::start(&text).await;
        let busy = made.iter().find(|k| k.id == "busy").unwrap();
        assert_eq!(
            chat_request(&gw.url("/v1/chat/completions"), busy)
                .await
                .status,
            200
        );
        let text = scrape(&gw).await;
        let mut with_info: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("keygate_key_info{"))
            .filter_map(|l| l.split("key=\"").nth(1)?.split('"').next())
            .collect();
        with_info.sort_unstable();
        assert_eq!(with_info, shown, "{setting:?}");
        // The gauges an alert joins on are there for each key shown.
        assert!(text.contains("keygate_key_limit{key=\"busy\",kind=\"requests_per_minute\"} 100"));
        assert!(text.contains("keygate_key_expiry_timestamp_seconds{key=\"soon\"}"));
        assert_eq!(
            text.contains("keygate_key_limit{key=\"idle\""),
            setting.contains("all"),
            "{setting:?}"
        );
    }
}
