//! The monthly budget is hard against any client, not only well-behaved ones. Each test is an
//! attack a key holder could try, against a mock upstream that behaves like a provider (it
//! honours `n` and prompt arrays, uses its own default length when no cap is given, streams
//! reasoning and tool calls, sends slow answers' heads first). Each asserts what the mock
//! generated (and so would charge) against the budget, the ledger and `keygate_key_spend_usd`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use mock_upstream::Generated;
use serde_json::{Value, json};
use tokio::sync::Barrier;

/// Extra models for per-request prices.
const PRICED_MODELS: &str = r#"
[[models]]
name = "mock-image"
scope = "image"
input_per_million = 0
output_per_million = 0
per_request_usd = 0.04

[[models]]
name = "mock-image-unpriced"
scope = "image"
input_per_million = 0
output_per_million = 0

[[models]]
name = "mock-tts"
scope = "audio"
input_per_million = 0
output_per_million = 0
per_request_usd = 0.015
"#;

/// Micro-dollars per million tokens (input, output) and per request, as configured.
fn price(model: &str) -> (u128, u128, u64) {
    match model {
        "deepseek-chat" | "deepseek-coder" => (270_000, 1_100_000, 0),
        "deepseek-reasoner" => (550_000, 2_190_000, 0),
        "mock-embedding" => (20_000, 0, 0),
        "mock-image" => (0, 0, 40_000),
        "mock-tts" => (0, 0, 15_000),
        "long-thinker" => (280_000, 420_000, 0),
        other => panic!("no price for {other}"),
    }
}

/// What a provider would charge for what the mock generated, request by request, rounded up
/// to the micro-dollar as keygate rounds.
fn money(generated: &[Generated]) -> u64 {
    generated
        .iter()
        .map(|g| {
            let (input, output, per_request) = price(&g.model);
            let tokens =
                u128::from(g.prompt_tokens) * input + u128::from(g.completion_tokens) * output;
            u64::try_from(tokens.div_ceil(1_000_000)).unwrap() + per_request * g.units
        })
        .sum()
}

fn req(
    s: &Setup,
    key: &str,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    post_req(&s.gw.url(path), Some(s.key(key)), body, headers)
}

/// The key's ledger total once every request so far is settled and written.
async fn ledger_total(s: &Setup, key: &str) -> (u64, u64, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let inflight = s.gw.gateway.metering.metrics.inflight.get();
        let rows = s.gw.ledger().daily(Some(key), "2000-01-01").unwrap();
        if inflight == 0 {
            return (
                rows.iter().map(|r| r.cost_micros).sum(),
                rows.iter().map(|r| r.requests).sum(),
                rows.iter().map(|r| r.estimated).sum(),
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests still in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `keygate_key_spend_usd{key}` in micro-dollars.
async fn spend_metric(s: &Setup, key: &str) -> u64 {
    let text = get(&s.gw.admin_url("/metrics"), None).await.text();
    let usd = sample(&text, &format!("keygate_key_spend_usd{{key=\"{key}\"}}")).unwrap_or(0.0);
    (usd * 1e6).round() as u64
}

/// The ledger, the spend gauge and the mock's generation agree, and none passes the budget.
async fn assert_money_holds(s: &Setup, key: &str, budget: u64) -> u64 {
    let (ledger, _, _) = ledger_total(s, key).await;
    let generated = money(&s.mock.generated());
    assert!(
        generated <= budget,
        "generated {generated} µ$ on a budget of {budget} µ$"
    );
    assert_eq!(
        ledger, generated,
        "the ledger bills what the upstream generated"
    );
    assert_eq!(spend_metric(s, key).await, ledger);
    generated
}

async fn budget_key(budget_usd: &str, scopes: &str) -> Setup {
    Setup::new(&[(
        "app",
        &format!("scopes = {scopes}\nlimits = {{ monthly_spend_usd = {budget_usd} }}"),
    )])
    .await
}

/// Table row 1: `"n": 128, "max_tokens": 4000` on a $0.05 budget generated $0.56 before.
#[tokio::test]
async fn n_is_reserved_as_that_many_completions() {
    let s = budget_key("0.05", r#"["chat"]"#).await;
    let long = [("x-mock-chunks", "100000")];
    let mut body = json!({"model": "deepseek-chat", "n": 128, "max_tokens": 4000, "messages": [{"role": "user", "content": "write"}]});
    let a = send(req(&s, "app", "/v1/chat/completions", &body, &long)).await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (429, "budget_exceeded".into())
    );
    assert_eq!(a.headers["x-should-retry"], "false");
    let msg = a.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("0.563") && msg.contains("0.050000"), "{msg}");
    // The attacker settles for what fits, again and again.
    body["n"] = json!(8);
    let mut ok = 0;
    for _ in 0..5 {
        ok += u32::from(
            send(req(&s, "app", "/v1/chat/completions", &body, &long))
                .await
                .status
                == 200,
        );
    }
    assert_eq!(ok, 1, "8 x 4000 tokens fit once into $0.05");
    let spent = assert_money_holds(&s, "app", 50_000).await;
    assert!(
        spent >= 35_200,
        "the admitted request ran at full length: {spent}"
    );
}

/// Table row 2: 200 prompts in one `/completions` request on $0.01 generated $0.22.
#[tokio::test]
async fn every_prompt_of_an_array_is_reserved() {
    let s = budget_key("0.01", r#"["chat"]"#).await;
    let long = [("x-mock-chunks", "100000")];
    let prompts: Vec<String> = (0..200).map(|i| format!("story {i}")).collect();
    let body = json!({"model": "deepseek-chat", "prompt": prompts, "max_tokens": 1000});
    let a = send(req(&s, "app", "/v1/completions", &body, &long)).await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (429, "budget_exceeded".into())
    );
    // Token-id prompts count one token per id, and best_of generations are reserved too.
    let ids: Vec<Vec<u32>> = (0..4).map(|_| (0..500).collect()).collect();
    let body = json!({"model": "deepseek-chat", "prompt": ids, "max_tokens": 500, "best_of": 2});
    for _ in 0..3 {
        send(req(&s, "app", "/v1/completions", &body, &long)).await;
    }
    assert_money_holds(&s, "app", 10_000).await;
    assert!(!s.mock.generated().is_empty());
}

/// Table row 3: 60 concurrent deepseek-reasoner requests without `max_tokens` on $1 spent
/// $4.16, because keygate reserved 4096 tokens and the upstream's own default is 32K.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_reserved_is_the_cap_the_upstream_enforces() {
    let s = Arc::new(budget_key("1", r#"["chat"]"#).await);
    let body = json!({"model": "deepseek-reasoner", "messages": [{"role": "user", "content": "think hard"}]});
    let barrier = Arc::new(Barrier::new(150));
    let tasks: Vec<_> = (0..150)
        .map(|_| {
            let (s, barrier, body) = (s.clone(), barrier.clone(), body.clone());
            tokio::spawn(async move {
                let r = req(
                    &s,
                    "app",
                    "/v1/chat/completions",
                    &body,
                    &[("x-mock-chunks", "100000")],
                );
                barrier.wait().await;
                send(r).await.status.as_u16()
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += u32::from(t.await.unwrap() == 200);
    }
    assert!((50..150).contains(&ok), "admitted {ok} of 150");
    for r in s.mock.requests() {
        let sent: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(sent["max_tokens"], 4096, "keygate wrote its reserved cap");
    }
    for g in s.mock.generated() {
        assert_eq!(g.completion_tokens, 4096);
    }
    assert_money_holds(&s, "app", 1_000_000).await;
}

/// Table row 4: clients that close right after the response head of a slow non-streamed
/// answer. The upstream finishes (and charges) anyway; keygate reads the answer to its end
/// and bills the usage it reports, so the key stops when the money is gone.
#[tokio::test]
async fn leaving_after_the_head_does_not_make_a_request_cheaper() {
    let s = budget_key("0.05", r#"["chat"]"#).await;
    let body = json!({"model": "deepseek-chat", "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]});
    let headers = [("x-mock-chunks", "100000"), ("x-mock-body-delay-ms", "200")];
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let resp = client()
            .request(req(&s, "app", "/v1/chat/completions", &body, &headers))
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        drop(resp); // gone right after the head
    }
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert!((10..=11).contains(&ok), "{statuses:?}");
    let spent = assert_money_holds(&s, "app", 50_000).await;
    let (_, requests, estimated) = ledger_total(&s, "app").await;
    assert_eq!(
        (requests, estimated),
        (20, 0),
        "real usage, never an estimate"
    );
    assert!(spent > 40_000);
    let a = send(req(&s, "app", "/v1/chat/completions", &body, &headers)).await;
    assert_eq!(a.code(), "budget_exceeded");
}

/// Reads a stream until `seen` of its deltas have arrived, then hangs up.
async fn read_then_abort(
    s: &Setup,
    body: &Value,
    headers: &[(&str, &str)],
    marker: &str,
    seen: usize,
) {
    let resp = client()
        .request(req(s, "app", "/v1/chat/completions", body, headers))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.into_body();
    let mut text = String::new();
    while text.matches(marker).count() < seen {
        let f = stream.frame().await.unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&f.into_data().unwrap()));
    }
}

/// An aborted stream is billed at least one token per delta seen of any kind, per choice:
/// reasoning, tool-call arguments and content alike.
#[tokio::test]
async fn aborted_streams_bill_reasoning_tool_calls_and_every_choice() {
    let s = Setup::new(&[("app", r#"scopes = ["chat"]"#)]).await;
    let paced = ("x-mock-chunk-delay-ms", "2");
    let reasoner = json!({"model": "deepseek-reasoner", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let tools = json!({"model": "deepseek-chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let three = json!({"model": "deepseek-chat", "stream": true, "n": 3, "messages": [{"role": "user", "content": "hi"}]});
    read_then_abort(
        &s,
        &reasoner,
        &[("x-mock-reasoning", "500"), paced],
        "reasoning_content\":\"r",
        20,
    )
    .await;
    read_then_abort(
        &s,
        &tools,
        &[("x-mock-tool-calls", "1"), ("x-mock-chunks", "500"), paced],
        "arguments\":\"a",
        20,
    )
    .await;
    read_then_abort(
        &s,
        &three,
        &[("x-mock-chunks", "500"), paced],
        "content\":\"w",
        30,
    )
    .await;
    let (_, requests, estimated) = ledger_total(&s, "app").await;
    assert_eq!((requests, estimated), (3, 3));
    let rows = s.gw.ledger().daily(Some("app"), "2000-01-01").unwrap();
    let billed: u64 = rows.iter().map(|r| r.completion_tokens).sum();
    let generated: u64 = s.mock.generated().iter().map(|g| g.completion_tokens).sum();
    assert!(billed >= 20 + 20 + 30, "billed {billed}");
    // What the upstream made beyond what keygate read was in flight when the client left.
    assert!(
        generated <= billed + 3 * 32,
        "generated {generated}, billed {billed}"
    );
    let reasoner_row = rows
        .iter()
        .find(|r| r.model == "deepseek-reasoner")
        .unwrap();
    assert!(reasoner_row.completion_tokens >= 20);
}

#[tokio::test]
async fn caps_and_counts_below_one_are_refused() {
    let s = budget_key("1", r#"["chat"]"#).await;
    for (field, value) in [
        ("max_tokens", json!(0)),
        ("max_tokens", json!(-1)),
        ("max_completion_tokens", json!(0)),
        ("max_tokens", json!(2.5)),
        ("n", json!(0)),
    ] {
        let mut body = chat("deepseek-chat");
        body[field] = value.clone();
        let a = send(req(&s, "app", "/v1/chat/completions", &body, &[])).await;
        assert_eq!(
            (a.status.as_u16(), a.code()),
            (400, "invalid_request".into()),
            "{field}: {value}"
        );
        assert!(
            a.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(field)
        );
    }
    assert!(s.mock.requests().is_empty());
}

/// Counts and caps at the edge of the integer types: the reservation saturates, so each is
/// refused (400 or 429), never admitted through an overflow, and the key is not left in debt.
#[tokio::test]
async fn huge_caps_and_counts_never_overflow_the_reservation() {
    let s = budget_key("1", r#"["chat"]"#).await;
    for (n, cap) in [
        (json!(4_294_967_296u64), json!(4_294_967_296u64)),
        (json!(1), json!(u64::MAX)),
        (json!(u64::MAX), json!(u64::MAX)),
        (json!(1), json!(1.8446744073709552e19)),
        (json!(1e3), json!(5)),
        (json!(u32::MAX), json!(u32::MAX)),
    ] {
        let mut body = chat("deepseek-chat");
        body["n"] = n.clone();
        body["max_tokens"] = cap.clone();
        let a = send(req(&s, "app", "/v1/chat/completions", &body, &[])).await;
        assert!(
            [400, 429].contains(&a.status.as_u16()),
            "n {n}, max_tokens {cap}: {} {}",
            a.status,
            a.text()
        );
    }
    assert!(s.mock.requests().is_empty());
    // Nothing was reserved for good: an ordinary request fits the budget.
    let mut body = chat("deepseek-chat");
    body["max_tokens"] = json!(5);
    let a = send(req(&s, "app", "/v1/chat/completions", &body, &[])).await;
    assert_eq!(a.status, 200, "{}", a.text());
}

/// Images, audio and fine-tuning are priced per request (`per_request_usd`, per image); what
/// keygate cannot price is refused for a budgeted key, and served unpriced for others.
#[tokio::test]
async fn per_request_routes_are_priced_or_refused() {
    let mock = MockUpstream::start().await.unwrap();
    let scopes = r#"scopes = ["image", "audio", "fine_tuning", "chat"]"#;
    let (budgeted, h1) = TestKey::new("budgeted");
    let (open, h2) = TestKey::new("open");
    let rest = format!(
        "{PRICED_MODELS}{}{}",
        key_toml(
            "budgeted",
            &h1,
            &format!("{scopes}\nlimits = {{ monthly_spend_usd = 0.10 }}")
        ),
        key_toml("open", &h2, scopes)
    );
    let s = Setup {
        gw: Gw::start(&config_text(&mock.url(), "", &rest)).await,
        mock,
        keys: vec![budgeted, open],
    };
    let image = |model: &str, n: u64| json!({"model": model, "prompt": "a cat", "n": n});
    let a = send(req(
        &s,
        "budgeted",
        "/v1/images/generations",
        &image("mock-image", 2),
        &[],
    ))
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    // $0.08 spent; one more image at $0.04 does not fit into $0.10.
    let a = send(req(
        &s,
        "budgeted",
        "/v1/images/generations",
        &image("mock-image", 1),
        &[],
    ))
    .await;
    assert_eq!(a.code(), "budget_exceeded");
    let a = send(req(
        &s,
        "budgeted",
        "/v1/images/generations",
        &image("mock-image-unpriced", 1),
        &[],
    ))
    .await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (403, "permission_denied".into())
    );
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per-request price")
    );
    let job = json!({"model": "deepseek-chat", "training_file": "file-1"});
    let a = send(req(&s, "budgeted", "/v1/fine_tuning/jobs", &job, &[])).await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (403, "permission_denied".into())
    );
    let speech = json!({"model": "mock-tts", "input": "hello", "voice": "alloy"});
    let a = send(req(&s, "budgeted", "/v1/audio/speech", &speech, &[])).await;
    assert_eq!(a.status, 200);
    // Without a budget, an unpriced model is served (and recorded at no cost).
    let a = send(req(
        &s,
        "open",
        "/v1/images/generations",
        &image("mock-image-unpriced", 3),
        &[],
    ))
    .await;
    assert_eq!(a.status, 200);
    let (spent, _, _) = ledger_total(&s, "budgeted").await;
    assert_eq!(spent, 2 * 40_000 + 15_000);
    assert_eq!(spend_metric(&s, "budgeted").await, spent);
    assert_eq!(ledger_total(&s, "open").await.0, 0);
}

/// An embeddings-only key once used deepseek-reasoner on /embeddings.
#[tokio::test]
async fn a_models_scope_is_checked_on_every_route() {
    let s = Setup::new(&[("emb", r#"scopes = ["embeddings"]"#)]).await;
    let body = |model: &str| json!({"model": model, "input": ["a", "b"]});
    let a = send(req(
        &s,
        "emb",
        "/v1/embeddings",
        &body("deepseek-reasoner"),
        &[],
    ))
    .await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (403, "permission_denied".into())
    );
    let a = send(req(
        &s,
        "emb",
        "/v1/embeddings",
        &body("mock-embedding"),
        &[],
    ))
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(s.mock.requests().len(), 1);
}

/// A file whose content looks like usage once put the downloading key into 584 years of
/// debt; a reported figure near u64::MAX must neither overflow a counter nor put a bucket
/// more than one window into debt.
#[tokio::test]
async fn usage_is_read_only_where_reported_and_never_overflows() {
    let s = Setup::new(&[(
        "app",
        "scopes = [\"files\", \"chat\"]\nlimits = { tokens_per_minute = 1000 }",
    )])
    .await;
    let a = get(&s.gw.url("/v1/files/file-1/content"), Some(s.key("app"))).await;
    assert_eq!(a.status, 200);
    assert!(
        a.text().contains("18446744073709551615"),
        "the file passes through"
    );
    let ok = send(req(
        &s,
        "app",
        "/v1/chat/completions",
        &json!({"model": "deepseek-chat", "max_tokens": 5, "messages": []}),
        &[],
    ))
    .await;
    assert_eq!(ok.status, 200, "no debt from a file's contents");
    let huge = r#"{"prompt_tokens":18446744073709551615,"completion_tokens":18446744073709551615}"#;
    let a = send(req(
        &s,
        "app",
        "/v1/chat/completions",
        &json!({"model": "deepseek-chat", "max_tokens": 5, "messages": []}),
        &[("x-mock-usage", huge)],
    ))
    .await;
    assert_eq!(a.status, 200);
    let b = send(req(
        &s,
        "app",
        "/v1/chat/completions",
        &json!({"model": "deepseek-chat", "max_tokens": 5, "messages": []}),
        &[],
    ))
    .await;
    assert_eq!(b.code(), "rate_limit_exceeded");
    let retry: u64 = b.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry <= 61, "at most one window of debt, got {retry} s");
    let rows = s.gw.ledger().daily(Some("app"), "2000-01-01").unwrap();
    let tokens: u64 = rows
        .iter()
        .map(|r| r.prompt_tokens + r.completion_tokens)
        .sum();
    assert!(tokens < 1 << 42, "clamped, not wrapped: {tokens}");
    let text = get(&s.gw.admin_url("/metrics"), None).await.text();
    let prompt = sample(
        &text,
        r#"keygate_tokens_total{key="app",kind="prompt",model="deepseek-chat"}"#,
    )
    .unwrap();
    assert!(
        prompt >= (1u64 << 40) as f64 && prompt < (1u64 << 41) as f64,
        "{prompt}"
    );
}

/// With the ledger unwritable (another process holds SQLite's write lock, as a full disk or a
/// stuck volume would stop writes), a key with a budget stops after `storage.max_unflushed`
/// and `/readyz` fails; keys without a budget carry on, and all recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_ledger_stops_budgeted_keys_and_recovers() {
    let mock = MockUpstream::start().await.unwrap();
    let (budgeted, h1) = TestKey::new("budgeted");
    let (open, h2) = TestKey::new("open");
    let rest = format!(
        "[storage]\npath = \"@LEDGER@\"\nmax_unflushed = \"1s\"\n{}{}",
        key_toml(
            "budgeted",
            &h1,
            "scopes = [\"chat\"]\nlimits = { monthly_spend_usd = 5 }"
        ),
        key_toml("open", &h2, "scopes = [\"chat\"]")
    );
    let gw = Gw::start(&config_text(&mock.url(), "", &rest)).await;
    let s = Setup {
        gw,
        mock,
        keys: vec![budgeted, open],
    };
    let sent = std::sync::atomic::AtomicU64::new(0);
    let chat_as = |key: &str| {
        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        send(req(
            &s,
            key,
            "/v1/chat/completions",
            &chat("deepseek-chat"),
            &[],
        ))
    };
    assert_eq!(chat_as("budgeted").await.status, 200);
    let _ = s.gw.ledger();

    let path = s.gw.gateway.runtime().config.storage.path.clone();
    let lock = rusqlite::Connection::open(&path).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    assert_eq!(
        chat_as("budgeted").await.status,
        200,
        "spend not yet at risk"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let a = chat_as("budgeted").await;
        if a.status == 503 {
            break a;
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused.code(), "ledger_unavailable");
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(
        chat_as("open").await.status,
        200,
        "keys without a budget carry on"
    );
    let ready = get(&s.gw.admin_url("/readyz"), None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["checks"]["ledger"]["status"], "fail");

    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while chat_as("budgeted").await.status != 200 {
        assert!(tokio::time::Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(&s.gw.admin_url("/readyz"), None).await.status, 200);
    // Nothing queued while the ledger was stuck was lost: every request has its row.
    let requests = ledger_total(&s, "budgeted").await.1 + ledger_total(&s, "open").await.1;
    assert_eq!(requests, sent.load(std::sync::atomic::Ordering::Relaxed));
}

/// A final flush that fails makes `serve` exit non-zero, so a supervisor notices lost usage.
#[tokio::test]
async fn serve_exits_non_zero_when_the_final_flush_fails() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, hash) = TestKey::new("app");
    let db = dir.path().join("keygate.db");
    let text = config_text(
        &mock.url(),
        "",
        &format!(
            "[storage]\npath = \"{}\"\n{}",
            db.display(),
            key_toml("app", &hash, "scopes = [\"chat\"]")
        ),
    );
    let config = dir.path().join("keygate.toml");
    std::fs::write(&config, text).unwrap();
    let gw = Binary::serve(&config, &[("KEYGATE_TEST_UNUSED", UPSTREAM_KEY)]).await;
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    assert_eq!(
        chat_request(&gw.url("/v1/chat/completions"), &key)
            .await
            .status,
        200
    );
    gw.signal("-TERM");
    let (status, log) = gw.wait().await;
    assert!(!status.success(), "exit status {status:?}\n{log}");
    assert!(log.contains("could not be flushed"), "{log}");
    drop(lock);
}

/// Review: an `input` member next to `prompt` on `/completions` once erased the prompt count.
#[tokio::test]
async fn an_input_member_cannot_hide_the_prompts_of_a_completion() {
    let s = budget_key("0.01", r#"["chat"]"#).await;
    let prompts: Vec<String> = (0..200).map(|i| format!("story {i}")).collect();
    for input in [json!(null), json!("x"), json!([])] {
        let body = json!({"model": "deepseek-chat", "prompt": prompts, "input": input, "max_tokens": 1000});
        let a = send(req(
            &s,
            "app",
            "/v1/completions",
            &body,
            &[("x-mock-chunks", "100000")],
        ))
        .await;
        assert_eq!(a.code(), "budget_exceeded", "{input}");
    }
    assert!(s.mock.requests().is_empty());
}

/// Review: DeepSeek reads its cap from `max_tokens` only. A body that sets only
/// `max_completion_tokens`, or `"max_tokens": null`, still gets the cap keygate reserved, in
/// `max_tokens`, exactly once.
#[tokio::test]
async fn the_cap_is_written_where_the_upstream_reads_it() {
    let s = budget_key("1", r#"["chat"]"#).await;
    let long = [("x-mock-chunks", "100000")];
    let only_completion = json!({"model": "deepseek-reasoner", "max_completion_tokens": 7, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        send(req(
            &s,
            "app",
            "/v1/chat/completions",
            &only_completion,
            &long
        ))
        .await
        .status,
        200
    );
    let null_cap = r#"{"model":"deepseek-reasoner","max_tokens":null,"messages":[{"role":"user","content":"hi"}]}"#;
    let raw = Request::post(s.gw.url("/v1/chat/completions"))
        .header("authorization", s.key("app").bearer())
        .header("content-type", "application/json")
        .header("x-mock-chunks", "100000")
        .body(Full::new(Bytes::from(null_cap)))
        .unwrap();
    assert_eq!(send(raw).await.status, 200);
    let seen = s.mock.requests();
    let first: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(first["max_tokens"], 7);
    let second = String::from_utf8_lossy(&seen[1].body).into_owned();
    assert_eq!(second.matches("max_tokens").count(), 1, "{second}");
    assert!(second.contains("\"max_tokens\":4096"), "{second}");
    let generated: Vec<u64> = s
        .mock
        .generated()
        .iter()
        .map(|g| g.completion_tokens)
        .collect();
    assert_eq!(generated, vec![7, 4096]);
    assert_money_holds(&s, "app", 1_000_000).await;
}

/// Review: on a key with a budget, a stream its client leaves (or stops reading) is read to
/// its end and billed the usage the upstream reports, not what the client happened to read.
#[tokio::test]
async fn a_budgeted_stream_its_client_leaves_is_billed_in_full() {
    let s = budget_key("1", r#"["chat"]"#).await;
    let body = json!({"model": "deepseek-chat", "stream": true, "max_tokens": 300, "messages": [{"role": "user", "content": "hi"}]});
    read_then_abort(
        &s,
        &body,
        &[("x-mock-chunks", "300"), ("x-mock-chunk-delay-ms", "1")],
        "content\":\"w",
        5,
    )
    .await;
    let (_, requests, estimated) = ledger_total(&s, "app").await;
    assert_eq!((requests, estimated), (1, 0), "real usage, not an estimate");
    let generated = s.mock.generated();
    assert_eq!(
        generated[0].completion_tokens, 300,
        "the upstream finished the stream"
    );
    assert_money_holds(&s, "app", 1_000_000).await;
}

/// The client leaves while keygate holds the first half of the usage line it asked for (the
/// client did not): the rest is read through the same stripper, so the request is billed the
/// upstream's usage, not its reservation.
#[tokio::test]
async fn a_client_that_leaves_mid_usage_line_is_billed_the_usage() {
    let s = budget_key("1", r#"["chat"]"#).await;
    let body = json!({"model": "deepseek-chat", "stream": true, "max_tokens": 300, "messages": [{"role": "user", "content": "hi"}]});
    let usage = r#"{"prompt_tokens":7,"completion_tokens":5}"#;
    let whole = [("x-mock-chunks", "5"), ("x-mock-usage", usage)];
    // The same answer read whole, for the price of that usage.
    let resp = send(req(&s, "app", "/v1/chat/completions", &body, &whole)).await;
    assert_eq!(resp.status, 200);
    let (one, _, _) = ledger_total(&s, "app").await;
    assert!(one > 0);
    // Read up to the last event the client gets, then leave during the 500 ms the usage line
    // is cut in two.
    let split = [
        ("x-mock-chunks", "5"),
        ("x-mock-usage", usage),
        ("x-mock-split-usage-ms", "500"),
    ];
    read_then_abort(&s, &body, &split, "\"finish_reason\":\"stop\"", 1).await;
    let (total, requests, estimated) = ledger_total(&s, "app").await;
    assert_eq!((requests, estimated), (2, 0), "real usage, not an estimate");
    assert_eq!(total, 2 * one, "billed the usage, not the reservation");
}

/// Review: image, audio and file parts have tokens the body's size does not bound.
#[tokio::test]
async fn media_inputs_are_refused_for_budgeted_keys_only() {
    let mock = MockUpstream::start().await.unwrap();
    let (budgeted, h1) = TestKey::new("budgeted");
    let (open, h2) = TestKey::new("open");
    let rest = format!(
        "{}{}",
        key_toml(
            "budgeted",
            &h1,
            "scopes = [\"chat\"]\nlimits = { monthly_spend_usd = 5 }"
        ),
        key_toml("open", &h2, "scopes = [\"chat\"]")
    );
    let s = Setup {
        gw: Gw::start(&config_text(&mock.url(), "", &rest)).await,
        mock,
        keys: vec![budgeted, open],
    };
    let body = json!({"model": "deepseek-chat", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
    ]}]});
    let a = send(req(&s, "budgeted", "/v1/chat/completions", &body, &[])).await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (403, "permission_denied".into())
    );
    assert_eq!(
        send(req(&s, "open", "/v1/chat/completions", &body, &[]))
            .await
            .status,
        200
    );
}

/// A model's own default output length (`[[models]] default_max_tokens`) is the cap reserved
/// and written for a request that sets none, unless the key sets its own.
#[tokio::test]
async fn a_models_default_length_is_reserved_and_written() {
    let mock = MockUpstream::start().await.unwrap();
    let (plain, h1) = TestKey::new("plain");
    let (capped, h2) = TestKey::new("capped");
    let rest = format!(
        "[[models]]\nname = \"long-thinker\"\nscope = \"chat\"\ninput_per_million = 0.28\noutput_per_million = 0.42\ndefault_max_tokens = 32768\n{}{}",
        key_toml("plain", &h1, "scopes = [\"chat\"]"),
        key_toml(
            "capped",
            &h2,
            "scopes = [\"chat\"]\nlimits = { default_max_tokens = 1000 }"
        )
    );
    let s = Setup {
        gw: Gw::start(&config_text(&mock.url(), "", &rest)).await,
        mock,
        keys: vec![plain, capped],
    };
    let body = json!({"model": "long-thinker", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        send(req(&s, "plain", "/v1/chat/completions", &body, &[]))
            .await
            .status,
        200
    );
    assert_eq!(
        send(req(&s, "capped", "/v1/chat/completions", &body, &[]))
            .await
            .status,
        200
    );
    let caps: Vec<Value> = s
        .mock
        .requests()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["max_tokens"].clone())
        .collect();
    assert_eq!(caps, vec![json!(32768), json!(1000)]);
}
