//! The usage ledger survives restarts: a key's month-to-date spend is the same after SIGTERM
//! (everything flushed) and after SIGKILL (at most one flush interval lost), and `keygate usage`
//! reads it in all three formats, with or without a running gateway.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

fn usage(config: &Path, args: &[&str]) -> String {
    let out = run_keygate(&[&["usage"], args].concat(), config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn cost_of(config: &Path, key: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&usage(config, &[key, "--format", "json"])).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .first()
        .map_or(0, |k| k["cost_micros"].as_u64().unwrap())
}

/// A request whose (misbehaving) upstream answer costs more than the whole $0.001 budget.
async fn overspend(gw: &Binary, key: &TestKey) -> Answer {
    let body = json!({"model": "deepseek-chat", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let r = http::Request::post(gw.url("/v1/chat/completions"))
        .header("authorization", key.bearer())
        .header("content-type", "application/json")
        .header(
            "x-mock-usage",
            r#"{"prompt_tokens":5,"completion_tokens":1000}"#,
        )
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    send(r).await
}

#[tokio::test]
async fn spend_survives_sigterm_and_sigkill_and_usage_reads_it() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (term_key, h1) = TestKey::new("term");
    let (kill_key, h2) = TestKey::new("kill");
    let limits = "scopes = [\"chat\"]\nlimits = { monthly_spend_usd = 0.001 }";
    let keys = format!(
        "{}{}",
        key_toml("term", &h1, limits),
        key_toml("kill", &h2, limits)
    );
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        config_text(&mock.url(), "", &keys).replace("KEYGATE_TEST_UNUSED", "KG_UPSTREAM"),
    )
    .unwrap();
    let env = [("KG_UPSTREAM", UPSTREAM_KEY)];

    // SIGTERM: everything is flushed on the way out.
    let gw = Binary::serve(&config, &env).await;
    assert_eq!(overspend(&gw, &term_key).await.status, 200);
    let refused = chat_request(&gw.url("/v1/chat/completions"), &term_key).await;
    assert_eq!(
        (refused.status.as_u16(), refused.code()),
        (429, "budget_exceeded".into())
    );
    gw.signal("-TERM");
    let (status, _) = gw.wait().await;
    assert!(status.success());
    let spent = cost_of(&config, "term");
    assert!(spent > 1000, "spent {spent}");

    // After the restart the budget is still used up, and the spend is the same.
    let gw = Binary::serve(&config, &env).await;
    let refused = chat_request(&gw.url("/v1/chat/completions"), &term_key).await;
    assert_eq!(refused.code(), "budget_exceeded");
    assert_eq!(cost_of(&config, "term"), spent);

    // SIGKILL: what was flushed (at least every second) survives.
    assert_eq!(overspend(&gw, &kill_key).await.status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let before_kill = loop {
        let c = cost_of(&config, "kill");
        if c > 0 {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger was not flushed within its interval"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    gw.signal("-KILL");
    let (status, _) = gw.wait().await;
    assert!(!status.success());
    let gw = Binary::serve(&config, &env).await;
    assert_eq!(cost_of(&config, "kill"), before_kill);
    let refused = chat_request(&gw.url("/v1/chat/completions"), &kill_key).await;
    assert_eq!(refused.code(), "budget_exceeded");

    // `keygate usage` in all three formats, while the gateway runs.
    let table = usage(&config, &[]);
    assert!(table.starts_with("KEY"), "{table}");
    assert!(table.contains("term") && table.contains("kill") && table.contains("deepseek-chat"));
    assert!(
        table.contains("error rate")
            && table.contains("per 1k tokens")
            && table.contains("peak day")
    );
    let csv = usage(&config, &["--format", "csv", "--days", "7"]);
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("key_id,day,model,requests,errors,prompt_tokens")
    );
    assert!(lines.all(|l| l.split(',').count() == 11));
    assert!(csv.contains("term,") && csv.contains("kill,"));
    let v: serde_json::Value =
        serde_json::from_str(&usage(&config, &["term", "--format", "json"])).unwrap();
    let k = &v["keys"][0];
    assert_eq!(k["key_id"], "term");
    // One answered request and two budget refusals (one before, one after the restart).
    assert_eq!(
        (k["requests"].as_u64(), k["errors"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(k["error_rate"], "66.66%");
    assert_eq!(k["completion_tokens"], 1000);
    assert!(k["peak_day"]["day"].is_string());
    gw.signal("-TERM");
    assert!(gw.wait().await.0.success());
}
