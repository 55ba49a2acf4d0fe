//! Property: for any mix of concurrent requests against a key with $1 left (chat, completions
//! and embeddings; streamed or not; `n`, `best_of`, prompt and token-id arrays; with and
//! without caps; clients that hang up after the head or mid-stream), the money the upstream
//! generates never exceeds $1: every admitted request costs at most its reservation,
//! reservations never add up past the budget, and on a key with a budget an answer its client
//! leaves is read to its end and billed in full, streams included.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use mock_upstream::Generated;
use proptest::prelude::*;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
enum Abort {
    Never,
    AfterHead,
    /// After this many body frames.
    AfterFrames(usize),
}

#[derive(Debug, Clone)]
struct Call {
    path: &'static str,
    model: &'static str,
    stream: bool,
    n: Option<u64>,
    best_of: Option<u64>,
    prompts: Option<Value>,
    max_tokens: Option<u64>,
    natural: u64,
    reasoning: u64,
    abort: Abort,
}

fn call() -> impl Strategy<Value = Call> {
    let abort = prop_oneof![
        3 => Just(Abort::Never),
        1 => Just(Abort::AfterHead),
        2 => (1usize..20).prop_map(Abort::AfterFrames),
    ];
    let prompts = prop_oneof![
        proptest::collection::vec("[a-z ]{1,40}", 1..20).prop_map(|v| json!(v)),
        proptest::collection::vec(proptest::collection::vec(0u32..50_000, 1..50), 1..6)
            .prop_map(|v| json!(v)),
        proptest::collection::vec(0u32..50_000, 1..100).prop_map(|v| json!(v)),
    ];
    (
        0u8..10,
        any::<bool>(),
        proptest::option::of(1u64..6),
        proptest::option::of(1u64..4),
        prompts,
        proptest::option::of(1u64..20_000),
        1u64..50_000,
        0u64..100,
        abort,
    )
        .prop_map(
            |(route, stream, n, best_of, prompts, max_tokens, natural, reasoning, abort)| {
                let (path, model) = match route {
                    0..=3 => ("/v1/chat/completions", "deepseek-chat"),
                    4..=6 => ("/v1/chat/completions", "deepseek-reasoner"),
                    7..=8 => ("/v1/completions", "deepseek-chat"),
                    _ => ("/v1/embeddings", "mock-embedding"),
                };
                let embeddings = path == "/v1/embeddings";
                Call {
                    path,
                    model,
                    stream: stream && !embeddings,
                    n,
                    best_of: best_of.filter(|_| path == "/v1/completions"),
                    prompts: (path != "/v1/chat/completions").then_some(prompts),
                    max_tokens: max_tokens.filter(|_| !embeddings),
                    // Streams are sent one event at a time; keep them short.
                    natural: if stream { natural % 300 + 1 } else { natural },
                    reasoning: if model == "deepseek-reasoner" {
                        reasoning
                    } else {
                        0
                    },
                    abort,
                }
            },
        )
}

fn money(generated: &[Generated]) -> u64 {
    generated
        .iter()
        .map(|g| {
            let (input, output): (u128, u128) = match g.model.as_str() {
                "deepseek-chat" => (270_000, 1_100_000),
                "deepseek-reasoner" => (550_000, 2_190_000),
                "mock-embedding" => (20_000, 0),
                other => panic!("unpriced {other}"),
            };
            let micros =
                u128::from(g.prompt_tokens) * input + u128::from(g.completion_tokens) * output;
            u64::try_from(micros.div_ceil(1_000_000)).unwrap()
        })
        .sum()
}

/// Sends one call (and hangs up where it says).
async fn run(s: &Setup, c: Call) {
    let mut body = json!({"model": c.model});
    match c.path {
        "/v1/chat/completions" => {
            body["messages"] = json!([{"role": "user", "content": "tell me"}])
        }
        "/v1/completions" => body["prompt"] = c.prompts.clone().unwrap_or(json!("x")),
        _ => body["input"] = c.prompts.clone().unwrap_or(json!("x")),
    }
    if c.stream {
        body["stream"] = json!(true);
    }
    for (field, v) in [
        ("n", c.n),
        ("best_of", c.best_of.map(|b| b.max(c.n.unwrap_or(1)))),
        ("max_tokens", c.max_tokens),
    ] {
        if let Some(v) = v {
            body[field] = json!(v);
        }
    }
    let req = Request::post(s.gw.url(c.path))
        .header("authorization", s.key("app").bearer())
        .header("content-type", "application/json")
        .header("x-mock-chunks", c.natural.to_string())
        .header("x-mock-reasoning", c.reasoning.to_string())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(30), client().request(req)).await
    else {
        panic!("request failed or hung");
    };
    let mut body = resp.into_body();
    let frames = match c.abort {
        Abort::Never => usize::MAX,
        Abort::AfterHead => 0,
        Abort::AfterFrames(n) => n,
    };
    let mut read = 0;
    while read < frames {
        match body.frame().await {
            Some(Ok(_)) => read += 1,
            _ => break,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_upstream_never_generates_more_than_the_budget(calls in proptest::collection::vec(call(), 10..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let s = Setup::new(&[(
                "app",
                "scopes = [\"chat\", \"embeddings\"]\nlimits = { monthly_spend_usd = 1 }",
            )])
            .await;
            futures_join(&s, calls).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while s.gw.gateway.metering.metrics.inflight.get() > 0 {
                assert!(tokio::time::Instant::now() < deadline, "requests still in flight");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Give cancelled streams a moment to notice, so what they made is all counted.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let generated = money(&s.mock.generated());
            assert!(generated <= 1_000_000, "generated {generated} µ$ on a budget of $1");
        });
    }
}

/// Runs every call at once, concurrently on this task.
async fn futures_join(s: &Setup, calls: Vec<Call>) {
    let mut pinned: Vec<_> = calls
        .into_iter()
        .map(|c| Some(Box::pin(run(s, c))))
        .collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in pinned.iter_mut() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(()) => *slot = None,
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
}
