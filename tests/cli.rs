//! The real `keygate` binary: `check` on good and bad files, `keys generate`, and `serve`
//! with a graceful SIGTERM drain.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::time::Duration;

use common::*;
use http_body_util::BodyExt;

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, text).unwrap();
    let out = run_keygate(&["check"], &path);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn valid_with(keys: &str) -> String {
    config_text("https://api.deepseek.com", "", keys)
}

#[test]
fn the_shipped_example_config_is_valid() {
    let out = std::process::Command::new(KEYGATE_BIN)
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/keygate.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn check_names_the_toml_path_of_every_problem() {
    let (_, hash) = TestKey::new("a");
    let (_, hash2) = TestKey::new("b");
    let cases: Vec<(String, &[&str])> = vec![
        (
            valid_with(&key_toml(
                "a",
                &hash,
                "scopes = [\"chat\"]\nallowed_ips = [\"10.0.0.300/8\"]",
            )),
            &["keys[0].allowed_ips[0]", "10.0.0.300/8"],
        ),
        (
            valid_with(&key_toml("a", &hash, "scopes = [\"chat\", \"admin\"]")),
            &["keys[0].scopes[1]", "unknown scope"],
        ),
        (
            valid_with(&key_toml(
                "a",
                &hash,
                "scopes = [\"chat\"]\ncolour = \"blue\"",
            )),
            &["keys[0].colour: unknown field"],
        ),
        (
            valid_with(&format!(
                "{}{}",
                key_toml("a", &hash, "scopes = [\"chat\"]"),
                key_toml("a", &hash2, "scopes = [\"chat\"]")
            )),
            &["keys[1].id", "duplicate key id"],
        ),
        (
            valid_with(&format!(
                "{}{}",
                key_toml("a", &hash, "scopes = [\"chat\"]"),
                key_toml("b", &hash, "scopes = [\"chat\"]")
            )),
            &["keys[1].hash", "already used by key \"a\""],
        ),
        (
            valid_with(
                &key_toml("a", &hash, "scopes = [\"chat\"]").replace("production", "restricted"),
            ),
            &["keys[0].models", "restricted"],
        ),
        (
            valid_with(&key_toml("a", "sha256:1234", "scopes = [\"chat\"]")),
            &["keys[0].hash", "64 hex digits"],
        ),
        (
            valid_with(&key_toml(
                "a",
                &hash,
                "scopes = [\"chat\"]\nmodels = [\"gpt-9\"]",
            )),
            &["keys[0].models[0]", "gpt-9"],
        ),
        (
            valid_with(&key_toml(
                "a",
                &hash,
                "scopes = [\"chat\"]\nallowed_referrers = [\"allowed.example\"]",
            )),
            &["keys[0].allowed_referrers[0]"],
        ),
        (
            valid_with(&key_toml(
                "a",
                &hash,
                "scopes = [\"chat\"]\nexpires = 2026-04-15",
            )),
            &["keys[0].expires", "UTC"],
        ),
        (
            valid_with(&key_toml("a", &hash, "scopes = []")),
            &["keys[0].scopes", "at least one scope"],
        ),
        (
            valid_with(&key_toml(
                "a",
                &hash,
                "scopes = [\"chat\"]\nlimits = { monthly_spend_usd = -5 }",
            )),
            &["keys[0].limits.monthly_spend_usd"],
        ),
        (
            valid_with("").replace("connect_timeout = \"1s\"", "connect_timeout = \"soon\""),
            &["upstream.connect_timeout"],
        ),
        (
            valid_with("").replace("listen = \"127.0.0.1:0\"", "listen = \"localhost\""),
            &["server.listen"],
        ),
        (
            valid_with("").replace("url = \"https://api.deepseek.com\"", "url = \"ftp://x\""),
            &["upstream.url"],
        ),
        (
            valid_with("").replace("scope = \"code\"", "scope = \"coding\""),
            &["models[1].scope"],
        ),
        (
            valid_with("") + "\n[environments.staging]\nscopes = [\"chat\"]\n",
            &["environments.staging"],
        ),
        ("[server\nlisten = 1".to_owned(), &["line"]),
    ];
    for (text, expected) in cases {
        let (ok, stderr) = check(&text);
        assert!(!ok, "accepted an invalid file; expected {expected:?}");
        for e in expected {
            assert!(stderr.contains(e), "expected {e:?} in:\n{stderr}");
        }
    }
    // Several problems are all reported at once.
    let (_, stderr) = check(&valid_with(&key_toml(
        "a",
        &hash,
        "scopes = [\"chat\", \"nope\"]\nallowed_ips = [\"x\"]",
    )));
    assert!(
        stderr.contains("keys[0].scopes[1]") && stderr.contains("keys[0].allowed_ips[0]"),
        "{stderr}"
    );
    // A typo hides nothing: every unknown field, at any depth, and the other problems too.
    let (ok, stderr) = check(
        &valid_with(&key_toml(
            "a",
            &hash,
            "scopes = [\"chat\"]\nallowed_ips = [\"x\"]\ncolour = 1\nlimits = { rpm = 5, tokens_per_minute = 10 }",
        ))
        .replace("connect_timeout", "conect_timeout")
        .replacen("[server]\n", "[server]\nlisten_on = 1\n", 1),
    );
    assert!(!ok);
    for e in [
        "server.listen_on: unknown field",
        "upstream.conect_timeout: unknown field",
        "keys[0].colour: unknown field",
        "keys[0].limits.rpm: unknown field",
        "keys[0].allowed_ips[0]",
    ] {
        assert!(stderr.contains(e), "expected {e:?} in:\n{stderr}");
    }
    // The two listeners cannot share an address.
    for (server, admin) in [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("127.0.0.1:9000", "0.0.0.0:9000"),
    ] {
        let text = valid_with("")
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{server}\""),
                1,
            )
            .replacen(
                "[admin]\nlisten = \"127.0.0.1:0\"",
                &format!("[admin]\nlisten = \"{admin}\""),
                1,
            );
        let (ok, stderr) = check(&text);
        assert!(!ok, "{server} and {admin} accepted");
        assert!(
            stderr.contains("admin.listen") && stderr.contains("is also server.listen"),
            "{stderr}"
        );
    }
    let apart = valid_with("")
        .replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:8080\"", 1)
        .replacen(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"127.0.0.1:8090\"",
            1,
        );
    assert!(check(&apart).0, "{}", check(&apart).1);
    assert!(check(&valid_with(&key_toml("a", &hash, "scopes = [\"chat\"]"))).0);
}

#[test]
fn keys_generate_prints_a_valid_key_and_its_hash() {
    let out = std::process::Command::new(KEYGATE_BIN)
        .args(["keys", "generate", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = v["key"].as_str().unwrap();
    let digest = keygate::auth::key::verify(key).unwrap();
    assert_eq!(v["hash"], digest.to_string());
}

#[tokio::test]
async fn serve_drains_in_flight_streams_on_sigterm_and_exits_zero() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = app_config(dir.path(), &mock.url(), "shutdown_grace = \"20s\"");
    let gw = Binary::serve(&path, &[("KG_TEST_UPSTREAM_KEY", UPSTREAM_KEY)]).await;

    let body = serde_json::json!({"model": "deepseek-chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let req = post_req(
        &gw.url("/v1/chat/completions"),
        Some(&key),
        &body,
        &[("x-mock-chunks", "10"), ("x-mock-chunk-delay-ms", "100")],
    );
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.into_body();
    let first = stream.frame().await.unwrap().unwrap();
    assert!(first.is_data());

    gw.signal("-TERM");

    // The stream already running finishes completely.
    let mut text = String::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), stream.frame())
        .await
        .unwrap()
    {
        if let Ok(d) = frame.unwrap().into_data() {
            text.push_str(&String::from_utf8_lossy(&d));
        }
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "stream was cut: {text}");

    let addr = gw.addr.clone();
    let (status, logs) = gw.wait().await;
    assert!(status.success(), "exit status {status}");
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
    assert!(logs.contains("SIGTERM"), "{logs}");
    assert!(!logs.contains(&key.secret) && !logs.contains(UPSTREAM_KEY));
}
