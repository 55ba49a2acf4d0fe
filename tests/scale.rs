//! A gateway with 100,000 keys, through the real binary: memory and sizes, which are stable
//! enough to assert (times are shown by `benches/scale.sh`, never asserted).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::fmt::Write as _;
use std::time::Duration;

use common::*;
use mock_upstream::MockUpstream;
use serde_json::json;

const KEYS: usize = 100_000;

/// The config: the test's upstream and 100,000 keys, each with one CIDR, three limits and one
/// scope (the shape of the issue's measurement); the first key's secret is returned.
fn config(upstream: &str) -> (String, TestKey) {
    let mut keys = String::with_capacity(KEYS * 340);
    let mut first = None;
    for i in 0..KEYS {
        let (key, hash) = TestKey::new(&format!("key_{i:08}"));
        let _ = write!(
            keys,
            "\n[[keys]]\nid = \"{}\"\nname = \"customer {i}\"\nenvironment = \"production\"\nhash = \"{hash}\"\ncreated = 2026-01-01T00:00:00Z\nscopes = [\"chat\"]\nallowed_ips = [\"{}\"]\nlimits = {{ requests_per_minute = 600, tokens_per_minute = 100000, monthly_spend_usd = 50 }}\n",
            key.id,
            if i == 0 {
                "127.0.0.0/8".to_owned()
            } else {
                format!("10.{}.{}.{}/32", (i >> 16) & 255, (i >> 8) & 255, i & 255)
            }
        );
        if i == 0 {
            first = Some(key);
        }
    }
    let text = config_text(upstream, "", &keys).replace("KEYGATE_TEST_UNUSED", "KG_UPSTREAM");
    (text, first.unwrap())
}

/// Peak resident memory (kB) of a command run to its end, from the kernel's accounting
/// (`wait4` reaps the child, which std's `wait` cannot then see).
#[allow(clippy::zombie_processes)]
fn peak_kb(cmd: &mut std::process::Command) -> (std::process::ExitStatus, u64) {
    use std::os::unix::process::ExitStatusExt;
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: plain out-parameters for wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; both pointers are valid for the call.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    (
        std::process::ExitStatus::from_raw(status),
        u64::try_from(usage.ru_maxrss).unwrap(),
    )
}

async fn metric(gw: &Binary, series: &str) -> Option<f64> {
    let text = get(&gw.admin_url("/metrics"), None).await.text();
    sample(&text, series)
}

async fn reloads(gw: &Binary) -> f64 {
    metric(gw, r#"keygate_config_reloads_total{result="success"}"#)
        .await
        .unwrap_or(0.0)
}

/// The gateway's resident memory once it is at most `bound_kb`, or after 20 s: memory a retired
/// snapshot held is freed off the request path, which a debug build on a busy machine takes a
/// while to do for 100,000 keys.
async fn resident_settled(gw: &Binary, bound_kb: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut kb = gw.memory_kb("VmRSS");
    while kb > bound_kb && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        kb = gw.memory_kb("VmRSS");
    }
    kb
}

/// Waits (bounded) until the gateway has reloaded `n` times in all.
async fn until_reloads(gw: &Binary, n: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while reloads(gw).await < n {
        assert!(tokio::time::Instant::now() < deadline, "no reload {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_keys_fit_in_the_memory_and_scrape_budgets() {
    let mock = MockUpstream::start().await.unwrap();
    let (text, first) = config(&mock.url());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, &text).unwrap();
    assert!(text.len() > 30_000_000, "{} bytes", text.len());

    // check: valid, under 200 MB at its peak.
    let (status, check_kb) = peak_kb(
        std::process::Command::new(KEYGATE_BIN)
            .args(["check", "--config"])
            .arg(&path),
    );
    assert!(status.success());
    assert!(
        check_kb < 200 * 1024,
        "keygate check peaked at {check_kb} kB"
    );

    let gw = Binary::serve(
        &path,
        &[
            ("KG_UPSTREAM", UPSTREAM_KEY),
            ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    assert_eq!(chat_request(&url, &first).await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started_kb = gw.memory_kb("VmRSS");
    // Under 2 KiB per key, everything included.
    assert!(
        started_kb < 200 * 1024,
        "resident {started_kb} kB after start"
    );

    // The scrape: small, with the key in use and without the 99,999 idle ones.
    let scrape = get(&gw.admin_url("/metrics"), None).await;
    assert_eq!(scrape.status, 200);
    let body = scrape.text();
    assert!(body.len() < 5 * 1024 * 1024, "{} bytes", body.len());
    assert!(
        body.contains(r#"keygate_key_info{environment="production",key="key_00000000""#),
        "{body}"
    );
    assert!(!body.contains("key_00099999"));
    let series = body.lines().filter(|l| !l.starts_with('#')).count();
    assert!(series < 1000, "{series} series");

    // Two reloads: resident memory comes back near where it was. (Typically within 7%; glibc
    // keeps some freed pages that share a page with live data, seen up to +24%. What must
    // never happen again is the ratchet: 1.9 GB after one reload, and rising.)
    gw.signal("-HUP");
    until_reloads(&gw, 1.0).await;
    gw.signal("-HUP");
    until_reloads(&gw, 2.0).await;
    // The old snapshot is freed once its last request ends, on a blocking thread: wait for it
    // (bounded; a debug build on a busy machine takes a while to free 100,000 keys).
    let reloaded_kb = resident_settled(&gw, started_kb * 5 / 4).await;
    assert!(
        reloaded_kb <= started_kb * 5 / 4,
        "resident {started_kb} kB after start, {reloaded_kb} kB after two reloads"
    );

    // A key created through the CLI and one through the admin API both work.
    let o = run_keygate(
        &[
            "keys",
            "create",
            "--name",
            "cli",
            "--env",
            "production",
            "--scopes",
            "chat",
            "--json",
        ],
        &path,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let from_cli = TestKey::from_created(&serde_json::from_slice(&o.stdout).unwrap());
    until_reloads(&gw, 3.0).await;
    // Three through the admin API, back to back: each reads and rewrites the 34 MB file.
    let mut from_api = Vec::new();
    for n in 0..3 {
        let created = send(
            http::Request::post(gw.admin_url("/admin/keys"))
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    json!({"name": format!("api {n}"), "environment": "production", "scopes": ["chat"]})
                        .to_string(),
                )))
                .unwrap(),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.text());
        from_api.push(TestKey::from_created(&created.json()));
    }
    for key in from_api.iter().chain([&from_cli, &first]) {
        assert_eq!(chat_request(&url, key).await.status, 200, "{}", key.id);
    }
    let config = keygate::config::load(&path).unwrap();
    assert_eq!(config.keys.len(), KEYS + 4);
    // One reload per edit (the watcher does not read an edited version again: it did, so each
    // edit cost two reloads of 100,000 keys). Edits back to back leave some memory behind in
    // the allocator (measured: about 1.4x the resident memory at start after three; spaced
    // edits, within a few MB); what must never come back is the ratchet of one snapshot per
    // edit (the 100,000 keys are 80 MB here).
    tokio::time::sleep(Duration::from_millis(1500)).await; // the watcher's poll and settle
    assert_eq!(reloads(&gw).await, 6.0);
    let edited_kb = resident_settled(&gw, started_kb * 8 / 5).await;
    assert!(
        edited_kb <= started_kb * 8 / 5,
        "resident {started_kb} kB after start, {edited_kb} kB after three admin API edits"
    );
    eprintln!(
        "100,000 keys: check peak {check_kb} kB; serve resident {started_kb} kB after start, {reloaded_kb} kB after two reloads, {edited_kb} kB after three admin API edits; /metrics {} bytes, {series} series",
        body.len()
    );
    // The edits kept every other key's bytes.
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.starts_with(&text));
    drop(mock);
}
