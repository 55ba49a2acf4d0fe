//! The built-in dashboard, driven in Debian's headless Chromium by `tests/dashboard/check.mjs`
//! (playwright-core, installed by `scripts/test.sh`), and read directly over HTTP for what a
//! hostile visitor would try: no credentials, a wrong token, markup in a key's name, a path
//! that is not a key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use mock_upstream::MockUpstream;

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

async fn page(gw: &Gw, path: &str, authorization: Option<&str>) -> Answer {
    let mut b = Request::get(gw.admin_url(path));
    if let Some(a) = authorization {
        b = b.header("authorization", a);
    }
    send(b.body(Full::new(Bytes::new())).unwrap()).await
}

async fn chat_with(gw: &Gw, key: &TestKey, model: &str, mock_status: Option<&str>) -> u16 {
    let mut b = Request::post(gw.url("/v1/chat/completions"))
        .header("authorization", key.bearer())
        .header("content-type", "application/json");
    if let Some(s) = mock_status {
        b = b.header("x-mock-status", s);
    }
    send(
        b.body(Full::new(Bytes::from(chat(model).to_string())))
            .unwrap(),
    )
    .await
    .status
    .as_u16()
}

/// Two keys, one of them named with markup; traffic on three UTC days (errors on one) through
/// an injected clock.
struct Scene {
    _mock: MockUpstream,
    gw: Gw,
    app: TestKey,
}

async fn scene() -> Scene {
    // Three days ago at noon, so the traffic falls on three distinct days inside the 30.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs((now / 86_400 - 2) * 86_400 + 43_200);
    let clock = Arc::new(keygate::limits::FakeClock::new(base));
    let mock = MockUpstream::start().await.unwrap();
    let (app, app_hash) = TestKey::new("app");
    let (_, other_hash) = TestKey::new("team-b");
    let keys = format!(
        "{}\n[[keys]]\nid = \"team-b\"\nname = \"<img src=x onerror=alert(1)> & <b>bold</b>\"\nenvironment = \"development\"\nhash = \"{other_hash}\"\ncreated = 2026-01-01T00:00:00Z\nscopes = [\"chat\"]\nlimits = {{ monthly_spend_usd = 10 }}\n",
        key_toml(
            "app",
            &app_hash,
            "scopes = [\"chat\"]\nmodels = [\"deepseek-chat\", \"deepseek-reasoner\"]\nlimits = { requests_per_minute = 1000, tokens_per_minute = 1000000, monthly_spend_usd = 25 }",
        )
    );
    let gw = Gw::start_with_clock(
        &config_text(&mock.url(), "", &keys),
        Some(UPSTREAM_KEY),
        clock.clone(),
    )
    .await;
    // Day 1: four chats on two models.
    for model in [
        "deepseek-chat",
        "deepseek-chat",
        "deepseek-reasoner",
        "deepseek-chat",
    ] {
        assert_eq!(chat_with(&gw, &app, model, None).await, 200);
    }
    clock.advance(Duration::from_secs(86_400));
    // Day 2: three good, two failed upstream.
    for _ in 0..3 {
        assert_eq!(chat_with(&gw, &app, "deepseek-chat", None).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(
            chat_with(&gw, &app, "deepseek-chat", Some("500")).await,
            500,
            "an upstream 500 is passed on"
        );
    }
    clock.advance(Duration::from_secs(86_400));
    // Day 3 (today): one.
    assert_eq!(chat_with(&gw, &app, "deepseek-reasoner", None).await, 200);
    // A refused attempt leaves a security event on the key's page.
    let wrong_model = post_json(
        &gw.url("/v1/chat/completions"),
        Some(&app),
        chat("deepseek-coder"),
    )
    .await;
    assert_eq!(wrong_model.status.as_u16(), 403, "{}", wrong_model.text());
    Scene {
        _mock: mock,
        gw,
        app,
    }
}

/// Per day: (requests, tokens, cost in micro-dollars, errors), from the ledger itself.
fn ledger_days(gw: &Gw, key: &str) -> BTreeMap<String, (u64, u64, u64, u64)> {
    let mut days = BTreeMap::new();
    for r in gw.ledger().daily(Some(key), "2000-01-01").unwrap() {
        let d: &mut (u64, u64, u64, u64) = days.entry(r.day.clone()).or_default();
        d.0 += r.requests;
        d.1 += r.prompt_tokens + r.completion_tokens;
        d.2 += r.cost_micros;
        d.3 += r.errors;
    }
    days
}

fn dashboard_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard"))
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("KEYGATE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh, which installs Debian's chromium",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser_shows_what_the_ledger_holds() {
    let chromium = chromium();
    assert!(
        dashboard_dir()
            .join("node_modules/playwright-core")
            .exists(),
        "tests/dashboard/node_modules is missing: run scripts/test.sh, which installs it"
    );
    let s = scene().await;
    let days = ledger_days(&s.gw, "app");
    assert_eq!(days.len(), 3, "{days:?}");
    // Ten forwarded, one refused (refusals count as errors too).
    assert_eq!(days.values().map(|d| d.0).sum::<u64>(), 11);

    let artifacts = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/dashboard-artifacts"
    ));
    let out = tokio::process::Command::new("node")
        .arg(dashboard_dir().join("check.mjs"))
        .current_dir(dashboard_dir())
        .env("DASHBOARD_URL", s.gw.admin_url("/"))
        .env("DASHBOARD_TOKEN", ADMIN_TOKEN)
        .env("DASHBOARD_KEY", &s.app.id)
        .env("ARTIFACTS", &artifacts)
        .env("KEYGATE_CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("the browser check timed out")
        .expect("node could not start: install Node.js 20 or later");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();

    // Logged out: a Basic challenge; logged in: every key listed.
    assert_eq!(seen["unauthorized_status"], 401);
    let mut keys: Vec<&str> = seen["overview_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["app", "team-b"]);

    // Every chart point is the ledger's figure for its day; days without traffic are zero.
    let mut charts: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for p in seen["points"].as_array().unwrap() {
        charts
            .entry(p["chart"].as_str().unwrap().to_owned())
            .or_default()
            .insert(
                p["label"].as_str().unwrap().to_owned(),
                p["value"].as_f64().unwrap(),
            );
    }
    for title in [
        "Requests per day",
        "Tokens per day",
        "Cost per day",
        "Error rate",
    ] {
        let chart = charts
            .get(title)
            .unwrap_or_else(|| panic!("no chart {title:?} in {charts:?}"));
        assert_eq!(chart.len(), 30, "{title}: one point per day for 30 days");
        for (day, value) in chart {
            let (requests, tokens, cost, errors) = days.get(day).copied().unwrap_or_default();
            let want = match title {
                "Requests per day" => requests as f64,
                "Tokens per day" => tokens as f64,
                "Cost per day" => cost as f64 / 1e6,
                _ if requests == 0 => 0.0,
                _ => errors as f64 * 100.0 / requests as f64,
            };
            assert!(
                (value - want).abs() < 1e-9,
                "{title} on {day}: chart {value}, ledger {want}"
            );
        }
    }
    assert!(charts["Error rate"].values().any(|v| *v == 40.0));
    assert!(charts["Cost per day"].values().all(|v| *v >= 0.0));

    // Nothing left the machine, and the pages fit a phone.
    let base = s.gw.admin_url("/");
    for u in seen["requests"].as_array().unwrap() {
        assert!(u.as_str().unwrap().starts_with(&base), "{u}");
    }
    assert_eq!(seen["phone_overflow"], false);
    assert_eq!(seen["key_phone_overflow"], false);
    assert_eq!(seen["console_errors"], serde_json::json!([]));
    assert_eq!(seen["screenshots"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn the_dashboard_refuses_strangers_and_never_shows_secrets_or_markup() {
    let s = scene().await;
    let gw = &s.gw;
    // No credentials, a wrong token, the token as a bearer or in the query: all 401, with a
    // challenge and without any data.
    for auth in [
        None,
        Some(basic("admin", "wrong")),
        Some(basic("admin", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1])),
        Some(format!("Bearer {ADMIN_TOKEN}")),
        Some("Basic !!!not-base64".to_owned()),
    ] {
        let a = page(gw, "/dashboard", auth.as_deref()).await;
        assert_eq!(a.status.as_u16(), 401, "{auth:?}");
        assert!(
            a.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic ")
        );
        assert!(!a.text().contains("team-b"));
        // It says how to sign in, not that the page does not exist.
        assert!(
            a.text().contains("Sign in with the admin token"),
            "{}",
            a.text()
        );
        assert!(!a.text().contains("not found"), "{}", a.text());
    }
    let q = page(gw, &format!("/dashboard?token={ADMIN_TOKEN}"), None).await;
    assert_eq!(q.status.as_u16(), 401);
    // The dashboard is not on the public listener.
    let public = get(&gw.url("/dashboard"), Some(&s.app)).await;
    assert_eq!(public.status.as_u16(), 404);

    let auth = basic("anyone", ADMIN_TOKEN);
    let overview = page(gw, "/dashboard", Some(&auth)).await;
    assert_eq!(overview.status.as_u16(), 200);
    let h = &overview.headers;
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let html = overview.text();
    // A key's name is text, never markup.
    assert!(!html.contains("<img src=x"), "{html}");
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"));
    // No secret or hash on any page.
    let cfg = std::fs::read_to_string(gw.config_path()).unwrap();
    let hashes: Vec<&str> = cfg
        .lines()
        .filter_map(|l| l.strip_prefix("hash = \""))
        .map(|l| l.trim_end_matches('"'))
        .collect();
    assert_eq!(hashes.len(), 2);
    for path in [
        "/dashboard",
        "/dashboard/keys/app",
        "/dashboard/keys/team-b",
        "/dashboard/events",
    ] {
        let a = page(gw, path, Some(&auth)).await;
        assert_eq!(a.status.as_u16(), 200, "{path}");
        let text = a.text();
        for secret in [ADMIN_TOKEN, UPSTREAM_KEY, s.app.secret.as_str()] {
            assert!(!text.contains(secret), "{path} shows a secret");
        }
        for hash in &hashes {
            assert!(!text.contains(hash), "{path} shows a key hash");
        }
    }
    // Unknown keys and odd paths are 404, never an error page with internals.
    for path in [
        "/dashboard/keys/nope",
        "/dashboard/keys/%ZZ",
        "/dashboard/keys/%C3%28",
        "/dashboard/keys/app%2F..%2F..",
        "/dashboard/nothing",
    ] {
        let a = page(gw, path, Some(&auth)).await;
        assert_eq!(a.status.as_u16(), 404, "{path}");
    }
    // The key list can be searched by id or name; what was typed comes back as text.
    let found = page(gw, "/dashboard?q=TEAM", Some(&auth)).await.text();
    assert!(found.contains("/dashboard/keys/team-b") && !found.contains("/dashboard/keys/app\""));
    let found = page(gw, "/dashboard?q=%3Cscript%3E", Some(&auth))
        .await
        .text();
    assert!(!found.contains("<script>") && found.contains("&lt;script&gt;"));
    // Looking changes nothing: the config file is byte for byte the same.
    assert_eq!(std::fs::read_to_string(gw.config_path()).unwrap(), cfg);
    // Only GET: a form post to a page is refused.
    let post = send(
        Request::post(gw.admin_url("/dashboard"))
            .header("authorization", &auth)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert!(
        [404u16, 405].contains(&post.status.as_u16()),
        "{}",
        post.status
    );
}

#[tokio::test]
async fn usage_suggests_limits_from_peaks_and_prices_the_same_tokens_at_the_cheapest_model() {
    let s = scene().await;
    let cfg = s.gw.config_path();
    let _ = s.gw.ledger(); // flushed
    let out = run_keygate(
        &[
            "usage",
            "--suggest-limits",
            "app",
            "--days",
            "30",
            "--format",
            "json",
        ],
        &cfg,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{v}");
    let k = &keys[0];
    assert_eq!(k["key_id"], "app");
    // The busiest minute was day 2's five requests; the floors win for such small peaks.
    assert_eq!(k["peak_requests_per_minute"], 5);
    assert_eq!(k["suggested_requests_per_minute"], 100);
    assert_eq!(k["suggested_tokens_per_minute"], 10_000);
    assert_eq!(k["current_requests_per_minute"], 1000);
    assert_eq!(k["current_tokens_per_minute"], 1_000_000);

    let table = run_keygate(&["usage", "--suggest-limits"], &cfg);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("SUGGESTED RPM"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("app ")), "{text}");

    let by_model = run_keygate(&["usage", "--by-model", "app", "--format", "json"], &cfg);
    assert!(
        by_model.status.success(),
        "{}",
        String::from_utf8_lossy(&by_model.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&by_model.stdout).unwrap();
    let models = v["models"].as_array().unwrap();
    let reasoner = models
        .iter()
        .find(|m| m["model"] == "deepseek-reasoner")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(reasoner["requests"], 2);
    assert_eq!(reasoner["cheapest_model"], "deepseek-chat");
    let saving: f64 = reasoner["saving_usd"].as_str().unwrap().parse().unwrap();
    assert!(saving > 0.0, "{v}");
    let chat = models
        .iter()
        .find(|m| m["model"] == "deepseek-chat")
        .unwrap();
    assert_eq!(chat["requests"], 8);
    assert_eq!(chat["saving_usd"], "0.000000", "already the cheapest");

    // Both reports refuse each other and bad input clearly.
    let both = run_keygate(&["usage", "--suggest-limits", "--by-model"], &cfg);
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
}
