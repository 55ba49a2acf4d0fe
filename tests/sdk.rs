//! Through the real OpenAI Python SDK (installed into `.venv` by `scripts/test.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use common::*;

#[tokio::test]
async fn the_openai_python_sdk_works_against_keygate() {
    let python = python();
    let s = Setup::new(&[
        (
            "app",
            "scopes = [\"chat\", \"embeddings\"]\nmodels = [\"deepseek-chat\", \"mock-embedding\"]",
        ),
        ("chat_only", "scopes = [\"chat\"]"),
    ])
    .await;
    let out = tokio::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sdk/openai_sdk_check.py"
        ))
        .env("KEYGATE_BASE_URL", s.gw.url("/v1"))
        .env("KEYGATE_KEY", &s.key("app").secret)
        .env("KEYGATE_CHAT_ONLY_KEY", &s.key("chat_only").secret)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "SDK check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The SDK's own requests went upstream with keygate's key.
    let seen = s.mock.requests();
    assert!(seen.len() >= 5);
    assert!(
        seen.iter()
            .all(|r| r.headers["authorization"] == format!("Bearer {UPSTREAM_KEY}").as_str())
    );
}
