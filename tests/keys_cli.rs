//! `keygate keys ...` on real files: output, the file afterwards (comments kept, hash right,
//! secret absent), refusals that leave the file untouched, and a running gateway following.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;

fn keys(path: &Path, args: &[&str]) -> Output {
    run_keygate(&[&["keys"], args].concat(), path)
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `keygate keys create <args> --json`, which must succeed: the key it printed.
fn create(path: &Path, args: &[&str]) -> TestKey {
    let o = keys(path, &[&["create"], args, &["--json"]].concat());
    assert!(o.status.success(), "{}", err(&o));
    TestKey::from_created(&serde_json::from_str(&out(&o)).unwrap())
}

fn config_file(dir: &Path, upstream: &str) -> std::path::PathBuf {
    let path = dir.join("keygate.toml");
    let text = format!(
        "# my gateway\n{}",
        config_text(upstream, "invalid_keys_per_minute = 100000", "")
    )
    .replace("KEYGATE_TEST_UNUSED", "KG_UPSTREAM")
    .replace(
        "[[models]]\nname = \"deepseek-chat\"",
        "# the cheap one\n[[models]]\nname = \"deepseek-chat\"",
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn create_prints_the_key_once_and_writes_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), "https://api.deepseek.com");
    let o = keys(
        &path,
        &[
            "create",
            "--name",
            "my-app",
            "--env",
            "production",
            "--scopes",
            "chat,embeddings",
            "--rpm",
            "1000",
            "--tpm",
            "100000",
            "--monthly-budget",
            "500",
            "--allow-ip",
            "203.0.113.0/24",
            "--allow-referrer",
            "https://yourdomain.com/*",
            "--expires",
            "90d",
            "--description",
            "web app",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    let secret = v["key"].as_str().unwrap();
    let digest = keygate::auth::key::verify(secret).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("# my gateway\n") && text.contains("# the cheap one"),
        "comments lost"
    );
    assert!(text.contains(&digest.to_string()));
    assert!(!text.contains(secret));
    let config = keygate::config::load(&path).unwrap();
    let k = &config.keys[0];
    assert_eq!(
        (k.name.as_str(), k.description.as_str()),
        ("my-app", "web app")
    );
    assert_eq!(k.limits.monthly_spend_micros, Some(500_000_000));
    assert!(k.expires.is_some());

    // Plain output shows the key once too.
    let o = keys(
        &path,
        &[
            "create",
            "--name",
            "other",
            "--env",
            "development",
            "--scopes",
            "chat",
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).matches("sk-kg-").count(), 1);
}

#[test]
fn bad_flags_are_refused_and_the_file_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), "https://api.deepseek.com");
    let before = std::fs::read_to_string(&path).unwrap();
    for (args, wanted) in [
        (
            vec!["--scopes", "chat", "--allow-ip", "10.0.0.300/8"],
            "allowed_ips[0]",
        ),
        (vec!["--scopes", "chat,admin"], "unknown scope"),
        (vec!["--scopes", "chat", "--models", "gpt-9"], "gpt-9"),
        (vec!["--scopes", "chat", "--expires", "soon"], "--expires"),
        (
            vec!["--scopes", "chat", "--rpm", "0"],
            "`none` removes the limit",
        ),
        (
            vec!["--scopes", "chat", "--tpm", "lots"],
            "not a whole number",
        ),
        (vec!["--scopes", "chat", "--monthly-budget=-5"], "between 0"),
        (
            vec![
                "--scopes",
                "chat",
                "--allow-ip",
                "none",
                "--allow-ip",
                "10.0.0.0/8",
            ],
            "cannot be combined",
        ),
    ] {
        let mut all = vec!["create", "--name", "x", "--env", "production"];
        all.extend(args);
        let o = keys(&path, &all);
        assert!(!o.status.success());
        assert!(err(&o).contains(wanted), "{wanted}: {}", err(&o));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    }
}

#[test]
fn list_show_update_rotate_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), "https://api.deepseek.com");
    let TestKey { id, secret } = create(
        &path,
        &[
            "--name",
            "app",
            "--env",
            "production",
            "--scopes",
            "chat",
            "--rpm",
            "10",
        ],
    );

    let table = out(&keys(&path, &["list"]));
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "NAME", "STATUS", "CREATED", "LAST_USED"]);
    assert!(table.contains(&id) && table.contains("active") && table.contains("never"));
    let csv = out(&keys(&path, &["list", "--format", "csv"]));
    assert!(csv.starts_with("id,name,status,created,last_used\n"));
    let json: serde_json::Value =
        serde_json::from_str(&out(&keys(&path, &["list", "--format", "json"]))).unwrap();
    assert_eq!(json[0]["status"], "active");

    let o = keys(
        &path,
        &["update", &id, "--tpm", "5000", "--description", "changed"],
    );
    assert!(o.status.success(), "{}", err(&o));
    let shown = out(&keys(&path, &["show", &id, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["limits"]["tokens_per_minute"], 5000);
    assert_eq!(v["limits"]["requests_per_minute"], 10);
    assert_eq!(v["description"], "changed");
    assert!(!shown.contains(&secret) && !shown.contains("sha256:"));
    assert!(out(&keys(&path, &["show", &id])).contains("current_window"));

    assert!(keys(&path, &["deactivate", &id]).status.success());
    assert!(out(&keys(&path, &["list"])).contains("inactive"));
    assert!(keys(&path, &["activate", &id]).status.success());

    let o = keys(&path, &["rotate", &id, "--grace", "7d", "--json"]);
    assert!(o.status.success(), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    let config = keygate::config::load(&path).unwrap();
    assert_eq!(config.keys[0].id.as_ref(), id);
    assert_eq!(
        config.keys[0].digest,
        keygate::auth::key::verify(v["key"].as_str().unwrap()).unwrap()
    );
    assert_eq!(
        config.keys[0].previous.as_ref().unwrap().digest,
        keygate::auth::key::verify(&secret).unwrap()
    );

    let o = keys(&path, &["delete", &id]);
    assert!(!o.status.success() && err(&o).contains("--yes"));
    assert!(keys(&path, &["delete", &id, "--yes"]).status.success());
    assert!(keygate::config::load(&path).unwrap().keys.is_empty());
    assert!(!keys(&path, &["show", &id]).status.success());
}

#[test]
fn diagnose_says_what_is_wrong_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), "https://api.deepseek.com");
    let TestKey { id, secret } = create(
        &path,
        &[
            "--name",
            "app",
            "--env",
            "production",
            "--scopes",
            "chat",
            "--allow-ip",
            "203.0.113.0/24",
            "--monthly-budget",
            "5",
        ],
    );

    let o = keys(&path, &["diagnose", &secret]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    let text = out(&o);
    for wanted in [
        "well-formed",
        "known",
        "active",
        "scopes: chat",
        "203.0.113.0/24",
        "monthly spend $0.000000 of $5.000000",
        "no problems",
    ] {
        assert!(text.contains(wanted), "{wanted}:\n{text}");
    }
    assert!(!text.contains(&secret));

    let mut typo = secret.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let o = keys(&path, &["diagnose", &String::from_utf8(typo).unwrap()]);
    assert!(!o.status.success() && out(&o).contains("checksum"));
    let o = keys(
        &path,
        &["diagnose", keygate::auth::ApiKey::generate().expose()],
    );
    assert!(!o.status.success() && out(&o).contains("unknown"));

    keys(&path, &["deactivate", &id]);
    let o = keys(&path, &["diagnose", &secret]);
    assert!(!o.status.success());
    assert!(
        out(&o).contains(&format!("keygate keys activate {id}")),
        "{}",
        out(&o)
    );
}

#[tokio::test]
async fn a_running_gateway_follows_cli_changes() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), &mock.url());
    let gw = Binary::serve(&path, &[("KG_UPSTREAM", UPSTREAM_KEY)]).await;
    let key = create(
        &path,
        &["--name", "app", "--env", "production", "--scopes", "chat"],
    );
    let url = gw.url("/v1/chat/completions");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while chat_request(&url, &key).await.status != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key was not live"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    keys(&path, &["deactivate", &key.id]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while chat_request(&url, &key).await.code() != "inactive_api_key" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deactivated key was still served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGHUP reloads too: seen in the reload counter before the gateway is stopped.
    let reloads = || async {
        let text = get(&gw.admin_url("/metrics"), None).await.text();
        sample(&text, "keygate_config_reloads_total{result=\"success\"}").unwrap_or(0.0)
    };
    let before = reloads().await;
    gw.signal("-HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while reloads().await <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.signal("-TERM");
    let (status, logs) = gw.wait().await;
    assert!(status.success());
    assert!(logs.contains("SIGHUP received"), "{logs}");
    assert!(logs.matches("config reloaded").count() >= 3, "{logs}");
    assert!(!logs.contains(&key.secret));
}

/// Every setting that can be set can be taken away again: `none` removes a limit, `never` the
/// expiry, `--allow-ip none` clears the list; the running gateway follows.
#[tokio::test]
async fn settings_can_be_removed_from_the_command_line() {
    let mock = mock_upstream::MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), &mock.url());
    let key = create(
        &path,
        &[
            "--name",
            "app",
            "--env",
            "production",
            "--scopes",
            "chat",
            "--rpm",
            "1",
            "--default-max-tokens",
            "64",
            "--allow-ip",
            "203.0.113.0/24",
            "--allow-referrer",
            "https://example.com/*",
            "--expires",
            "30d",
        ],
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("default_max_tokens = 64"), "{text}");

    let gw = Binary::serve(&path, &[("KG_UPSTREAM", UPSTREAM_KEY)]).await;
    let url = gw.url("/v1/chat/completions");
    // From 127.0.0.1, outside 203.0.113.0/24: refused.
    assert_eq!(chat_request(&url, &key).await.code(), "ip_not_allowed");

    let o = keys(
        &path,
        &[
            "update",
            &key.id,
            "--allow-ip",
            "none",
            "--allow-referrer",
            "none",
            "--expires",
            "never",
            "--default-max-tokens",
            "none",
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("allowed_ips = []"), "{text}");
    assert!(text.contains("allowed_referrers = []"), "{text}");
    assert!(!text.contains("expires"), "{text}");
    assert!(!text.contains("default_max_tokens"), "{text}");
    assert!(text.contains("requests_per_minute = 1"), "{text}");
    let shown = keys(&path, &["show", &key.id, "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&out(&shown)).unwrap();
    assert!(shown["expires"].is_null(), "{shown}");

    // The gateway follows: allowed now, and held to one request a minute.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    while std::time::Instant::now() < deadline {
        status = chat_request(&url, &key).await.status.as_u16();
        if status != 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    assert_eq!(chat_request(&url, &key).await.status.as_u16(), 429);

    let o = keys(&path, &["update", &key.id, "--rpm", "none"]);
    assert!(o.status.success(), "{}", err(&o));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("requests_per_minute"), "{text}");
    assert!(!text.contains("limits"), "{text}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = chat_request(&url, &key).await.status.as_u16();
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A limit removed from a key whose environment sets one falls back to it, and says so.
#[test]
fn removing_a_limit_names_the_environment_default_that_remains() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), "https://api.deepseek.com");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[environments.production]\nlimits = { requests_per_minute = 600 }\n");
    std::fs::write(&path, text).unwrap();
    let created = create(
        &path,
        &[
            "--name",
            "app",
            "--env",
            "production",
            "--scopes",
            "chat",
            "--rpm",
            "5",
        ],
    );
    let id = created.id.as_str();
    let o = keys(&path, &["update", id, "--rpm", "none"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains(
            "requests_per_minute is still 600, the default of environment \"production\""
        ),
        "{}",
        out(&o)
    );
}

fn keys_with_env(path: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(KEYGATE_BIN);
    cmd.arg("keys")
        .args(args)
        .arg("--config")
        .arg(path)
        .env_remove("KEYGATE_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `show` says why it cannot see the live windows (no token, a wrong token, no gateway), once;
/// budgets read as percentages; `list --format json` has `null` for a key never used;
/// `diagnose` warns when a request without max_tokens cannot fit in what is left of a budget.
#[tokio::test]
async fn show_and_diagnose_say_what_they_cannot_see_and_what_will_be_refused() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(dir.path(), &mock.url());
    // A fixed admin port, so the CLI finds the gateway the config names.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"127.0.0.1:{port}\""),
        1,
    );
    assert!(text.contains(&format!("127.0.0.1:{port}")));
    std::fs::write(&path, text).unwrap();
    // The key: $0.004 to spend, nothing spent, and a request without max_tokens on
    // deepseek-chat reserves 4096 output tokens at $1.10 per million (about $0.0045).
    let TestKey { id, secret } = create(
        &path,
        &[
            "--name",
            "tiny",
            "--env",
            "production",
            "--scopes",
            "chat",
            "--models",
            "deepseek-chat",
            "--rpm",
            "10",
            "--monthly-budget",
            "0.004",
        ],
    );

    let o = keys(&path, &["diagnose", &secret]);
    let text = out(&o);
    assert!(!o.status.success(), "{text}");
    assert!(!text.contains("no problems"), "{text}");
    for wanted in [
        "FAIL monthly spend $0.000000 of $0.004000 (0%)",
        "a request without max_tokens on deepseek-chat reserves up to $0.004",
        "max_tokens 4096 by default",
        "more than the $0.004000 left",
        "Send max_tokens of at most",
        &format!("keygate keys update {id} --default-max-tokens"),
        "KEYGATE_ADMIN_TOKEN is not set",
    ] {
        assert!(text.contains(wanted), "{wanted}:\n{text}");
    }
    // Following the advice makes diagnose content.
    let at_most: u64 = text
        .split("max_tokens of at most ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let o = keys(
        &path,
        &["update", &id, "--default-max-tokens", &at_most.to_string()],
    );
    assert!(o.status.success(), "{}", err(&o));
    let o = keys(&path, &["diagnose", &secret]);
    assert!(o.status.success(), "{}", out(&o));

    // No token in this shell: said once, with the variable to set.
    let shown = out(&keys(&path, &["show", &id]));
    assert_eq!(shown.matches("current_window").count(), 1, "{shown}");
    assert!(shown.contains("KEYGATE_ADMIN_TOKEN is not set"), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("budget_used") && l.ends_with(" 0.00%")),
        "{shown}"
    );
    assert!(!shown.contains("e-"), "no exponent notation: {shown}");
    // No gateway running.
    let shown = out(&keys_with_env(
        &path,
        &["show", &id],
        &[("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    ));
    assert!(
        shown.contains("is not reachable") && shown.contains("is the gateway running?"),
        "{shown}"
    );
    // A gateway, and a wrong token, then the right one.
    let gw = Binary::serve(
        &path,
        &[
            ("KG_UPSTREAM", UPSTREAM_KEY),
            ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await;
    let shown = out(&keys_with_env(
        &path,
        &["show", &id],
        &[("KEYGATE_ADMIN_TOKEN", "not-the-token")],
    ));
    assert!(
        shown.contains("refused the token in KEYGATE_ADMIN_TOKEN"),
        "{shown}"
    );
    let shown = out(&keys_with_env(
        &path,
        &["show", &id],
        &[("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
    ));
    assert!(!shown.contains("unavailable"), "{shown}");
    assert!(shown.contains("\"limit\":10"), "{shown}");
    drop(gw);

    // Never used: null in JSON, "never" in the table.
    let json: serde_json::Value =
        serde_json::from_str(&out(&keys(&path, &["list", "--format", "json"]))).unwrap();
    assert!(json[0]["last_used"].is_null(), "{json}");
    assert!(out(&keys(&path, &["list"])).contains("never"));

    // Each subcommand's help is its own.
    let help = out(&run_keygate(&["keys", "activate", "--help"], &path));
    assert!(help.starts_with("Accept a deactivated key again"), "{help}");
    assert!(!help.contains("shared by every"), "{help}");
}
