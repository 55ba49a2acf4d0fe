//! Through the official Node `openai` SDK (installed into `tests/node_sdk/node_modules` by
//! `scripts/test.sh`), with clients built as an application builds them, default retries
//! included: what the SDK does with keygate's refusals. A budget refusal is given up at once;
//! a refusal that a retry can fix is retried after its `retry-after`, and the retry succeeds.
//!
//! keygate's `retry-after` per refusal (src/error.rs, src/pipeline/limit.rs): requests or
//! tokens per minute, the time until the bucket holds enough again, rounded up to whole
//! seconds, between 1 and 60 (so 60 for `requests_per_minute = 1`); concurrency, 1 s; a budget
//! that requests in flight hold, 1 s; a budget that cannot fit, none (`x-should-retry: false`).
//! Only the concurrency path lets a test watch a retry succeed within seconds without faking
//! time, so the successful retry is shown there, and the per-minute refusal is shown being
//! waited out (the SDK sleeps its 60 s instead of retrying sooner).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// How long the mock holds the request that fills the busy key's only slot: shorter than the
/// 1 s retry-after of a concurrency refusal, long enough for two refused calls to fit in it.
const SLOW_MS: u64 = 600;

fn check_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node_sdk")
}

/// Sum of a metric's samples whose labels include `key="<id>"` (and `extra`, if given).
fn per_key(exposition: &str, metric: &str, id: &str, extra: &str) -> f64 {
    let key = format!("key=\"{id}\"");
    exposition
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| l.contains(&key) && l.contains(extra))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The user message of a recorded chat request.
fn message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["messages"][0]["content"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_node_openai_sdk_gives_up_on_budgets_and_retries_after_retry_after() {
    let dir = check_dir();
    assert!(
        dir.join("node_modules/openai/package.json").exists(),
        "{} has no openai SDK: run scripts/test.sh, which runs npm install there",
        dir.display()
    );
    let s = Setup::new(&[
        // One request reserves 4096 completion tokens at $1.10/M, about $0.0045.
        (
            "budget",
            "scopes = [\"chat\"]\nlimits = { monthly_spend_usd = 0.001 }",
        ),
        (
            "rpm",
            "scopes = [\"chat\"]\nlimits = { requests_per_minute = 1 }",
        ),
        (
            "busy",
            "scopes = [\"chat\"]\nlimits = { max_concurrent_requests = 1 }",
        ),
    ])
    .await;
    let run = tokio::process::Command::new("node")
        .arg(dir.join("check.mjs"))
        .current_dir(&dir)
        .env("KEYGATE_BASE_URL", s.gw.url("/v1"))
        .env("KEYGATE_METRICS_URL", s.gw.admin_url("/metrics"))
        .env("KEYGATE_BUDGET_KEY", &s.key("budget").secret)
        .env("KEYGATE_RPM_KEY", &s.key("rpm").secret)
        .env("KEYGATE_BUSY_KEY", &s.key("busy").secret)
        .env("KEYGATE_SLOW_MS", SLOW_MS.to_string())
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_LOG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the Node SDK check timed out")
        .expect("node could not start: install Node.js 20 or later (scripts/test.sh does)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Node SDK check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("check.mjs printed no JSON line ({e}):\n{stdout}"));
    eprintln!("node openai SDK results: {seen:#}");
    let ms = |v: &Value| v["ms"].as_f64().unwrap();
    let metrics = get(&s.gw.admin_url("/metrics"), None).await.text();
    let upstream: Vec<(String, Option<String>)> = s
        .mock
        .requests()
        .iter()
        .map(|r| {
            let retry = r.headers.get("x-stainless-retry-count");
            (
                message(&r.body),
                retry.map(|v| v.to_str().unwrap().to_owned()),
            )
        })
        .collect();
    let reached = |text: &str| upstream.iter().filter(|(m, _)| m == text).count();

    // 1. Budget: refused with `x-should-retry: false` and no retry-after, and the SDK gave up
    // at once: one request at the gateway, none upstream. (Its default backoff would have
    // retried twice, after at least 0.375 s and 0.75 s.)
    let budget = &seen["budget"];
    assert_eq!(budget["ok"], false, "{budget}");
    assert_eq!(budget["status"], 429, "{budget}");
    assert_eq!(budget["code"], "budget_exceeded", "{budget}");
    assert_eq!(budget["error_class"], "RateLimitError", "{budget}");
    assert_eq!(budget["should_retry"], "false", "{budget}");
    assert_eq!(budget["retry_after"], Value::Null, "{budget}");
    assert!(
        ms(budget) < 5000.0,
        "the SDK did not give up at once: {budget}"
    );
    assert_eq!(
        per_key(&metrics, "keygate_requests_total", "budget", ""),
        1.0,
        "the SDK retried a budget refusal:\n{metrics}"
    );
    assert_eq!(
        per_key(
            &metrics,
            "keygate_rate_limited_total",
            "budget",
            "limit=\"spend\""
        ),
        1.0
    );
    assert_eq!(reached("budget"), 0);

    // 2. requests_per_minute = 1: the second call is refused for the rest of the minute
    // (retry-after 60, x-should-retry true), and the default client sleeps that out: 3 s later
    // its call is still pending after a single attempt.
    assert_eq!(seen["rpm_first"]["ok"], true, "{}", seen["rpm_first"]);
    let probe = &seen["rpm_probe"];
    assert_eq!(probe["status"], 429, "{probe}");
    assert_eq!(probe["code"], "rate_limit_exceeded", "{probe}");
    assert_eq!(probe["should_retry"], "true", "{probe}");
    let retry_after: u64 = probe["retry_after"].as_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{probe}");
    let pending = &seen["rpm_default"];
    assert_eq!(
        pending["pending"], true,
        "the default client did not wait out retry-after {retry_after}: {pending}"
    );
    assert_eq!(
        per_key(
            &metrics,
            "keygate_rate_limited_total",
            "rpm",
            "limit=\"requests\""
        ),
        2.0,
        "the probe and the default client's one attempt, no early retry:\n{metrics}"
    );
    assert_eq!(
        per_key(&metrics, "keygate_requests_total", "rpm", ""),
        3.0,
        "{metrics}"
    );
    assert_eq!(reached("rpm-first"), 1);
    assert_eq!(reached("rpm-probe") + reached("rpm-default"), 0);

    // 3. max_concurrent_requests = 1: refused while the slow request holds the slot (retry-after
    // 1), the default client waited at least that long, retried once, and succeeded.
    let probe = &seen["busy_probe"];
    assert_eq!(probe["status"], 429, "{probe}");
    assert_eq!(probe["code"], "rate_limit_exceeded", "{probe}");
    assert_eq!(probe["should_retry"], "true", "{probe}");
    assert_eq!(probe["retry_after"], "1", "{probe}");
    let retried = &seen["busy_retried"];
    assert_eq!(
        retried["ok"], true,
        "the retry after retry-after failed: {retried}"
    );
    assert_eq!(retried["content"], "w0 w1 w2 ");
    assert!(
        ms(retried) >= 1000.0,
        "the SDK retried before the 1 s retry-after: {retried}"
    );
    assert!(ms(retried) < 5000.0, "{retried}");
    assert_eq!(seen["busy_slow"]["ok"], true, "{}", seen["busy_slow"]);
    assert!(ms(&seen["busy_slow"]) >= SLOW_MS as f64);
    assert_eq!(
        per_key(
            &metrics,
            "keygate_rate_limited_total",
            "busy",
            "limit=\"concurrency\""
        ),
        2.0,
        "the probe and the retried call's first attempt:\n{metrics}"
    );
    assert_eq!(
        per_key(&metrics, "keygate_requests_total", "busy", "status=\"2xx\""),
        2.0
    );
    assert_eq!(
        per_key(&metrics, "keygate_requests_total", "busy", "status=\"4xx\""),
        2.0
    );
    // Upstream saw the retried call once: its second attempt, numbered 1 by the SDK.
    let retries: Vec<_> = upstream
        .iter()
        .filter(|(m, _)| m == "busy-retried")
        .map(|(_, n)| n.as_deref())
        .collect();
    assert_eq!(retries, [Some("1")]);
    assert_eq!(reached("busy-slow"), 1);
    assert_eq!(reached("busy-probe"), 0);
}
