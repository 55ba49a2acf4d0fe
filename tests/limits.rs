//! Per-key limits and metering through the real gateway: requests and tokens per minute,
//! concurrency, the monthly budget, OpenAI's rate-limit headers, streaming usage, and the
//! ledger records each request leaves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::sync::Barrier;

fn req(
    url: &str,
    key: &TestKey,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    post_req(url, Some(key), body, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrier_released_burst_of_200_on_rpm_10_admits_exactly_10() {
    let s = Arc::new(
        Setup::new(&[(
            "app",
            "scopes = [\"chat\"]\nlimits = { requests_per_minute = 10 }",
        )])
        .await,
    );
    let barrier = Arc::new(Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (s, barrier) = (s.clone(), barrier.clone());
            tokio::spawn(async move {
                let r = req(
                    &s.gw.url("/v1/chat/completions"),
                    s.key("app"),
                    &chat("deepseek-chat"),
                    &[],
                );
                barrier.wait().await;
                send(r).await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let a = t.await.unwrap();
        match a.status.as_u16() {
            200 => ok += 1,
            429 => {
                assert_eq!(a.code(), "rate_limit_exceeded");
                assert!(
                    a.json()["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("requests per minute")
                );
                let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=6).contains(&retry), "retry-after {retry}");
                assert_eq!(a.headers["x-ratelimit-limit-requests"], "10");
                assert_eq!(a.headers["x-ratelimit-remaining-requests"], "0");
            }
            other => panic!("unexpected status {other}: {}", a.text()),
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(s.mock.requests().len(), 10);
}

#[tokio::test]
async fn rate_limit_headers_are_on_every_answer_and_count_down() {
    let s = Setup::new(&[(
        "app",
        // Slow refills (17 tokens a second, one request every 0.6 s): the second answer
        // shows less left than the first unless seconds pass between them.
        "scopes = [\"chat\"]\nlimits = { requests_per_minute = 100, tokens_per_minute = 1000 }",
    )])
    .await;
    let url = s.gw.url("/v1/chat/completions");
    let body = json!({"model": "deepseek-chat", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    // 50 completion tokens each: the bucket takes 3 s to refill what the first one used.
    let fifty = [("x-mock-chunks", "50")];
    let first = send(req(&url, s.key("app"), &body, &fifty)).await;
    let second = send(req(&url, s.key("app"), &body, &fifty)).await;
    let h = |a: &Answer, n: &str| a.headers[n].to_str().unwrap().to_owned();
    assert_eq!(h(&first, "x-ratelimit-limit-requests"), "100");
    assert_eq!(h(&first, "x-ratelimit-remaining-requests"), "99");
    assert_eq!(h(&second, "x-ratelimit-remaining-requests"), "98");
    assert_eq!(h(&first, "x-ratelimit-limit-tokens"), "1000");
    let tokens = |a: &Answer| h(a, "x-ratelimit-remaining-tokens").parse::<u64>().unwrap();
    assert!(tokens(&second) < tokens(&first) && tokens(&first) < 1000);
    // Go-style durations: one request refills in 600 ms.
    assert!(
        h(&first, "x-ratelimit-reset-requests").ends_with("ms"),
        "{}",
        h(&first, "x-ratelimit-reset-requests")
    );

    // Streams carry them too.
    let stream = json!({"model": "deepseek-chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = client()
        .request(req(&url, s.key("app"), &stream, &[]))
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "97");
    assert!(resp.headers().contains_key("x-ratelimit-reset-tokens"));
}

#[tokio::test]
async fn real_usage_above_the_reservation_puts_the_token_bucket_in_debt() {
    let s = Setup::new(&[(
        "app",
        "scopes = [\"chat\"]\nlimits = { tokens_per_minute = 1000 }",
    )])
    .await;
    let url = s.gw.url("/v1/chat/completions");
    let small = json!({"model": "deepseek-chat", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    // The (misbehaving) upstream answers with 1500 completion tokens although 10 were asked.
    let a = send(req(
        &url,
        s.key("app"),
        &small,
        &[(
            "x-mock-usage",
            r#"{"prompt_tokens":5,"completion_tokens":1500}"#,
        )],
    ))
    .await;
    assert_eq!(a.status, 200);
    let b = send(req(&url, s.key("app"), &small, &[])).await;
    assert_eq!(
        (b.status.as_u16(), b.code()),
        (429, "rate_limit_exceeded".into())
    );
    assert!(
        b.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokens per minute")
    );
    assert_eq!(b.headers["x-ratelimit-remaining-tokens"], "0");
    let retry: u64 = b.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        retry > 25,
        "the debt of ~500 tokens takes ~30 s to repay, got {retry}"
    );
    // A request that could never fit is told so.
    let huge = json!({"model": "deepseek-chat", "max_tokens": 5000, "messages": []});
    let c = send(req(&url, s.key("app"), &huge, &[])).await;
    assert_eq!(c.status, 429);
    assert!(
        c.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lower max_tokens")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_burst_cannot_spend_past_the_budget() {
    // $0.01; each request reserves ~1,100 micro-dollars (1000 completion tokens at $1.10/M).
    let s = Arc::new(
        Setup::new(&[(
            "app",
            "scopes = [\"chat\"]\nlimits = { monthly_spend_usd = 0.01 }",
        )])
        .await,
    );
    let body = json!({"model": "deepseek-chat", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]});
    let barrier = Arc::new(Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (s, barrier, body) = (s.clone(), barrier.clone(), body.clone());
            tokio::spawn(async move {
                let r = req(
                    &s.gw.url("/v1/chat/completions"),
                    s.key("app"),
                    &body,
                    &[("x-mock-delay-ms", "300"), ("x-mock-chunks", "900")],
                );
                barrier.wait().await;
                send(r).await
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let a = t.await.unwrap();
        match a.status.as_u16() {
            200 => ok += 1,
            429 => {
                assert_eq!(a.code(), "budget_exceeded");
                let msg = a.json()["error"]["message"].as_str().unwrap().to_owned();
                // The numbers a client can act on: what is left, what this request needs.
                assert!(
                    msg.contains("0.010000") && msg.contains("max_tokens"),
                    "{msg}"
                );
                assert!(a.headers.contains_key("x-should-retry"));
                refused += 1;
            }
            other => panic!("{other}"),
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok} refused {refused}");
    let ledger = s.gw.ledger();
    let spent: u64 = ledger
        .daily(Some("app"), "2000-01-01")
        .unwrap()
        .iter()
        .map(|r| r.cost_micros)
        .sum();
    // Every admitted request stayed within its reservation, so the bound is the budget itself.
    assert!(
        spent <= 10_000,
        "spent {spent} micro-dollars of a 10,000 budget"
    );
    assert!(spent > 0);
}

#[tokio::test]
async fn max_concurrent_requests_is_enforced() {
    let s = Arc::new(
        Setup::new(&[(
            "app",
            "scopes = [\"chat\"]\nlimits = { max_concurrent_requests = 2 }",
        )])
        .await,
    );
    let slow = |s: Arc<Setup>| async move {
        send(req(
            &s.gw.url("/v1/chat/completions"),
            s.key("app"),
            &chat("deepseek-chat"),
            &[("x-mock-delay-ms", "500")],
        ))
        .await
    };
    let a = tokio::spawn(slow(s.clone()));
    let b = tokio::spawn(slow(s.clone()));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while s.mock.requests().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let c = send(req(
        &s.gw.url("/v1/chat/completions"),
        s.key("app"),
        &chat("deepseek-chat"),
        &[],
    ))
    .await;
    assert_eq!(
        (c.status.as_u16(), c.code()),
        (429, "rate_limit_exceeded".into())
    );
    assert_eq!(a.await.unwrap().status, 200);
    assert_eq!(b.await.unwrap().status, 200);
    assert_eq!(
        send(req(
            &s.gw.url("/v1/chat/completions"),
            s.key("app"),
            &chat("deepseek-chat"),
            &[]
        ))
        .await
        .status,
        200
    );
}

async fn stream_bytes(url: &str, key: Option<&TestKey>, body: &serde_json::Value) -> String {
    let mut b = Request::post(url)
        .header("content-type", "application/json")
        .header("x-mock-chunks", "4");
    if let Some(k) = key {
        b = b.header("authorization", k.bearer());
    }
    let resp = client()
        .request(b.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn streams_are_metered_and_the_client_sees_exactly_what_it_asked_for() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let url = s.gw.url("/v1/chat/completions");
    let direct = format!("{}/v1/chat/completions", s.mock.url());
    for include_usage in [false, true] {
        let mut body = json!({"model": "deepseek-chat", "stream": true, "messages": [{"role": "user", "content": "count to four"}]});
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let through = stream_bytes(&url, Some(s.key("app")), &body).await;
        let upstream = stream_bytes(&direct, None, &body).await;
        assert_eq!(through, upstream, "include_usage={include_usage}");
        assert_eq!(through.contains("\"usage\""), include_usage);
    }
    // keygate asked the upstream for usage on the stream that did not ask for it.
    let seen = s.mock.requests();
    let first: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(first["stream_options"]["include_usage"], true);

    let rows = s.gw.ledger().daily(Some("app"), "2000-01-01").unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!((r.requests, r.errors, r.estimated), (2, 0, 0));
    // Two streams of 4 completion tokens; prompt "count to four" = 13 chars -> 4 + 1 tokens.
    assert_eq!((r.prompt_tokens, r.completion_tokens), (10, 8));
    // 10 * 0.27 + 8 * 1.10 = 11.5 micro-dollars, each request rounded up: 2*ceil(5.75) = 12.
    assert_eq!(r.cost_micros, 12);
}

#[tokio::test]
async fn a_client_that_aborts_after_5_chunks_is_billed_once_with_an_estimate() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let body = json!({"model": "deepseek-chat", "stream": true, "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]});
    let r = req(
        &s.gw.url("/v1/chat/completions"),
        s.key("app"),
        &body,
        &[("x-mock-chunks", "200"), ("x-mock-chunk-delay-ms", "20")],
    );
    let resp = client().request(r).await.unwrap();
    let mut stream = resp.into_body();
    let mut text = String::new();
    while text.matches("\"content\":\"w").count() < 5 {
        let f = stream.frame().await.unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&f.into_data().unwrap()));
    }
    drop(stream);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let rows = loop {
        let rows = s.gw.ledger().daily(Some("app"), "2000-01-01").unwrap();
        if !rows.is_empty() || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!((r.requests, r.estimated), (1, 1));
    assert!(
        (5..=10).contains(&r.completion_tokens),
        "completion {}",
        r.completion_tokens
    );
    assert!(r.prompt_tokens > 0 && r.cost_micros > 0);
}
