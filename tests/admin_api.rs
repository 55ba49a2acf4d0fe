//! The admin API and hot reload: every endpoint, the admin token, changes applied at once,
//! concurrent edits that never lose each other, rotation grace, and hand edits of the file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{Value, json};

async fn admin(
    gw: &Gw,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> Answer {
    let body = body.map(|v| Bytes::from(v.to_string())).unwrap_or_default();
    admin_bytes(gw, method, path, body, token).await
}

async fn admin_bytes(
    gw: &Gw,
    method: Method,
    path: &str,
    body: Bytes,
    token: Option<&str>,
) -> Answer {
    let mut b = Request::builder().method(method).uri(gw.admin_url(path));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send(
        b.header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap(),
    )
    .await
}

async fn call(gw: &Gw, method: Method, path: &str, body: Option<Value>) -> Answer {
    admin(gw, method, path, body, Some(ADMIN_TOKEN)).await
}

fn secret(a: &Answer) -> TestKey {
    TestKey::from_created(&a.json())
}

async fn chat_status(gw: &Gw, key: &TestKey) -> u16 {
    chat_request(&gw.url("/v1/chat/completions"), key)
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn the_admin_token_is_required() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    for token in [None, Some("wrong"), Some("")] {
        let a = admin(&s.gw, Method::GET, "/admin/keys", None, token).await;
        assert_eq!(a.status, 401, "{token:?}");
        assert_eq!(a.json()["error"]["code"], "invalid_admin_token");
    }
    assert_eq!(
        call(&s.gw, Method::GET, "/admin/keys", None).await.status,
        200
    );
    // Health and metrics need no token.
    assert_eq!(get(&s.gw.admin_url("/healthz"), None).await.status, 200);
}

#[tokio::test]
async fn keys_are_created_changed_deactivated_and_deleted_at_once() {
    let s = Setup::new(&[]).await;
    let created = call(
        &s.gw,
        Method::POST,
        "/admin/keys",
        Some(json!({"name": "web", "environment": "production", "scopes": ["chat"],
                    "limits": {"requests_per_minute": 100, "monthly_spend_usd": 50}, "expires_in": "90d"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let key = secret(&created);
    assert!(key.id.starts_with("key_"));
    assert_eq!(created.json()["limits"]["requests_per_minute"], 100);
    let file = std::fs::read_to_string(s.gw.config_path()).unwrap();
    assert!(
        !file.contains(&key.secret),
        "the secret must never be written"
    );
    assert_eq!(chat_status(&s.gw, &key).await, 200);

    let shown = call(&s.gw, Method::GET, &format!("/admin/keys/{}", key.id), None).await;
    let v = shown.json();
    assert_eq!(
        (v["name"].as_str(), v["status"].as_str()),
        (Some("web"), Some("active"))
    );
    assert!(v["last_used"].is_null() || v["last_used"].is_string());
    assert!(!shown.text().contains("sha256:") && !shown.text().contains(&key.secret));
    assert_eq!(
        call(&s.gw, Method::GET, "/admin/keys", None).await.json()["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let patched = call(
        &s.gw,
        Method::PATCH,
        &format!("/admin/keys/{}", key.id),
        Some(json!({"scopes": ["embeddings"]})),
    )
    .await;
    assert_eq!(patched.status, 200);
    assert_eq!(chat_status(&s.gw, &key).await, 403);
    call(
        &s.gw,
        Method::PATCH,
        &format!("/admin/keys/{}", key.id),
        Some(json!({"scopes": ["chat"]})),
    )
    .await;

    assert_eq!(
        call(
            &s.gw,
            Method::POST,
            &format!("/admin/keys/{}/deactivate", key.id),
            None
        )
        .await
        .status,
        200
    );
    let refused = chat_request(&s.gw.url("/v1/chat/completions"), &key).await;
    assert_eq!(refused.code(), "inactive_api_key");
    assert_eq!(
        call(
            &s.gw,
            Method::POST,
            &format!("/admin/keys/{}/activate", key.id),
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(chat_status(&s.gw, &key).await, 200);

    let usage = call(
        &s.gw,
        Method::GET,
        &format!("/admin/keys/{}/usage?days=7", key.id),
        None,
    )
    .await;
    assert_eq!(usage.status, 200);
    assert!(usage.json()["rows"].is_array());

    // A bad change is refused with the TOML path, and nothing changes.
    let before = std::fs::read_to_string(s.gw.config_path()).unwrap();
    let bad = call(
        &s.gw,
        Method::PATCH,
        &format!("/admin/keys/{}", key.id),
        Some(json!({"allowed_ips": ["10.0.0.300"]})),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("allowed_ips[0]"), "{}", bad.text());
    assert_eq!(std::fs::read_to_string(s.gw.config_path()).unwrap(), before);
    assert_eq!(
        call(
            &s.gw,
            Method::PATCH,
            "/admin/keys/key_nope",
            Some(json!({"name": "x"}))
        )
        .await
        .status,
        404
    );
    assert_eq!(
        call(
            &s.gw,
            Method::POST,
            "/admin/keys",
            Some(json!({"name": "x", "environment": "production", "colour": 1}))
        )
        .await
        .status,
        400
    );

    assert_eq!(
        call(
            &s.gw,
            Method::DELETE,
            &format!("/admin/keys/{}", key.id),
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(chat_status(&s.gw, &key).await, 401);

    let events = call(&s.gw, Method::GET, "/admin/events?limit=50", None)
        .await
        .json();
    let kinds: Vec<(String, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for wanted in [
        "key_created",
        "key_updated",
        "key_deactivated",
        "key_activated",
        "key_deleted",
    ] {
        assert!(
            kinds.contains(&("admin_change".into(), wanted.into())),
            "{wanted} missing: {kinds:?}"
        );
    }
    assert!(kinds.contains(&("unauthorized".into(), "inactive_key".into())));
    assert!(kinds.contains(&("unauthorized".into(), "unknown_key".into())));
}

#[tokio::test]
async fn rotation_keeps_both_secrets_valid_until_the_grace_ends() {
    // Injected time: the gateway's clock is moved past the seven-day grace instead of waiting.
    let clock = Arc::new(keygate::limits::FakeClock::new(std::time::SystemTime::now()));
    let mock = MockUpstream::start().await.unwrap();
    let (old, hash) = TestKey::new("app");
    let cfg = config_text(
        &mock.url(),
        "",
        &key_toml(
            "app",
            &hash,
            "scopes = [\"chat\"]\nlimits = { monthly_spend_usd = 5 }",
        ),
    );
    let gw = Gw::start_with_clock(&cfg, Some(UPSTREAM_KEY), clock.clone()).await;
    assert_eq!(chat_status(&gw, &old).await, 200);

    let rotated = call(
        &gw,
        Method::POST,
        "/admin/keys/app/rotate",
        Some(json!({"grace": "7d"})),
    )
    .await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let new = secret(&rotated);
    assert_eq!(new.id, "app");
    assert_ne!(new.secret, old.secret);
    assert_eq!(chat_status(&gw, &new).await, 200);
    assert_eq!(chat_status(&gw, &old).await, 200);
    // A second rotation inside the grace would cut off the old secret at once: refused.
    let again = call(
        &gw,
        Method::POST,
        "/admin/keys/app/rotate",
        Some(json!({"grace": "7d"})),
    )
    .await;
    assert_eq!(
        (again.status.as_u16(), again.code()),
        (409, "conflict".into())
    );
    assert_eq!(chat_status(&gw, &old).await, 200);
    // The same id: spend carries on across the rotation.
    let shown = call(&gw, Method::GET, "/admin/keys/app", None).await.json();
    assert_ne!(shown["month_spend_usd"], "0.000000", "{shown}");

    clock.advance(Duration::from_secs(6 * 86_400));
    assert_eq!(chat_status(&gw, &old).await, 200, "still within the grace");
    clock.advance(Duration::from_secs(86_400 + 1));
    let refused = chat_request(&gw.url("/v1/chat/completions"), &old).await;
    assert_eq!(
        (refused.status.as_u16(), refused.code()),
        (401, "expired_api_key".into())
    );
    assert_eq!(chat_status(&gw, &new).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_never_lose_each_other() {
    let keys: Vec<(String, String)> = (0..8)
        .map(|i| (format!("k{i}"), "scopes = [\"chat\"]".to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = keys.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let s = Arc::new(Setup::new(&refs).await);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let body = json!({"description": format!("edited {i}"), "limits": {"requests_per_minute": 100 + i}});
                call(&s.gw, Method::PATCH, &format!("/admin/keys/k{i}"), Some(body)).await.status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let config = keygate::config::load(&s.gw.config_path()).unwrap();
    for i in 0..8u32 {
        let k = config
            .keys
            .iter()
            .find(|k| *k.id == format!("k{i}"))
            .unwrap();
        assert_eq!(k.description, format!("edited {i}"));
        assert_eq!(k.limits.requests_per_minute.map(|n| n.get()), Some(100 + i));
    }
}

/// An admin change reloads the config once, and the file watcher does not read the version it
/// already applied again (with 100,000 keys a reload costs about a second of CPU). A hand edit
/// after it is still read, once.
#[tokio::test]
async fn an_admin_change_reloads_the_config_once() {
    let s = Setup::new(&[]).await;
    let reloads = || async {
        let text = get(&s.gw.admin_url("/metrics"), None).await.text();
        sample(&text, r#"keygate_config_reloads_total{result="success"}"#).unwrap_or(0.0)
    };
    // Longer than the watcher takes to notice a change and let it settle.
    let watcher_would_have_run = Duration::from_millis(1500);
    let before = reloads().await;
    for n in 0..3 {
        let created = call(
            &s.gw,
            Method::POST,
            "/admin/keys",
            Some(json!({"name": format!("k{n}"), "environment": "production", "scopes": ["chat"]})),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.text());
        assert_eq!(chat_status(&s.gw, &secret(&created)).await, 200);
    }
    tokio::time::sleep(watcher_would_have_run).await;
    assert_eq!(reloads().await - before, 3.0);

    let path = s.gw.config_path();
    let (added, hash) = TestKey::new("by_hand");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "{text}{}",
            key_toml("by_hand", &hash, "scopes = [\"chat\"]")
        ),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while reloads().await - before < 4.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hand edit was not read"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(chat_status(&s.gw, &added).await, 200);
    tokio::time::sleep(watcher_would_have_run).await;
    assert_eq!(reloads().await - before, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_edits_apply_within_a_second_and_broken_files_are_refused() {
    // The test polls with a key that is not live yet: keep the brute-force guard out of it.
    let s = Arc::new(
        Setup::with_server(
            &[("app", "scopes = [\"chat\"]")],
            "invalid_keys_per_minute = 100000",
        )
        .await,
    );
    let path = s.gw.config_path();
    let original = std::fs::read_to_string(&path).unwrap();

    // A steady load runs throughout: no request that should succeed may fail.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 5000 {
                    let status = chat_status(&s.gw, s.key("app")).await;
                    assert_eq!(status, 200, "a request failed during a reload");
                    n += 1;
                }
                n
            })
        })
        .collect();

    // Add a key by hand.
    let (added, hash) = TestKey::new("added");
    std::fs::write(
        &path,
        format!(
            "{original}{}",
            key_toml("added", &hash, "scopes = [\"chat\"]")
        ),
    )
    .unwrap();
    let started = tokio::time::Instant::now();
    while chat_status(&s.gw, &added).await != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the added key was not live within a second or two"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Broken files: the previous config keeps serving, and each failure is counted.
    let with_added = std::fs::read_to_string(&path).unwrap();
    for broken in [
        with_added[..with_added.len() / 2].to_owned(),
        with_added.replacen(
            "scopes = [\"chat\"]",
            "scopes = [\"chat\"]\nallowed_ips = [\"10.0.0.300\"]",
            1,
        ),
        format!(
            "{with_added}{}",
            key_toml("added", &TestKey::new("x").1, "scopes = [\"chat\"]")
        ),
    ] {
        let failures =
            |text: &str| sample(text, r#"keygate_config_reloads_total{result="failure"}"#).unwrap();
        let before = failures(&get(&s.gw.admin_url("/metrics"), None).await.text());
        std::fs::write(&path, &broken).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while failures(&get(&s.gw.admin_url("/metrics"), None).await.text()) <= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broken file was not noticed"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(chat_status(&s.gw, &added).await, 200);
    }

    // Deactivating by hand refuses the key within a second.
    std::fs::write(
        &path,
        with_added.replace("id = \"added\"", "id = \"added\"\nstatus = \"inactive\""),
    )
    .unwrap();
    let started = tokio::time::Instant::now();
    while chat_status(&s.gw, &added).await != 401 {
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        assert!(task.await.unwrap() > 10);
    }
}

/// `PATCH` is a JSON merge patch: `null` removes a setting, `[]` clears a list, an absent field
/// is kept; required fields cannot be removed.
#[tokio::test]
async fn patch_removes_with_null_and_clears_with_an_empty_list() {
    let s = Setup::new(&[(
        "app",
        "scopes = [\"chat\"]\nallowed_ips = [\"203.0.113.0/24\"]\nexpires = 2030-01-01T00:00:00Z\nlimits = { requests_per_minute = 1, tokens_per_minute = 50000, default_max_tokens = 64 }",
    )])
    .await;
    let key = s.key("app");
    assert_eq!(chat_status(&s.gw, key).await, 403, "outside allowed_ips");
    let patched = call(
        &s.gw,
        Method::PATCH,
        "/admin/keys/app",
        Some(json!({
            "allowed_ips": [],
            "expires_in": null,
            "limits": {"requests_per_minute": null, "default_max_tokens": null, "max_concurrent_requests": 4}
        })),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    let v = patched.json();
    assert_eq!(v["allowed_ips"], json!([]));
    assert!(v["expires"].is_null(), "{v}");
    assert!(v["limits"]["requests_per_minute"].is_null(), "{v}");
    assert!(v["limits"]["default_max_tokens"].is_null(), "{v}");
    assert_eq!(v["limits"]["tokens_per_minute"], 50000, "absent: kept");
    assert_eq!(v["limits"]["max_concurrent_requests"], 4);
    // Applied at once: any address, no request limit.
    for _ in 0..3 {
        assert_eq!(chat_status(&s.gw, key).await, 200);
    }
    // `"limits": null` removes every limit of the key.
    let v = call(
        &s.gw,
        Method::PATCH,
        "/admin/keys/app",
        Some(json!({"limits": null})),
    )
    .await
    .json();
    assert!(
        v["limits"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_null),
        "{v}"
    );
    assert!(
        !std::fs::read_to_string(s.gw.config_path())
            .unwrap()
            .contains("limits =")
    );
    // Required fields cannot be removed; the file is untouched.
    let before = std::fs::read_to_string(s.gw.config_path()).unwrap();
    for body in [json!({"name": null}), json!({"scopes": null})] {
        let a = call(&s.gw, Method::PATCH, "/admin/keys/app", Some(body)).await;
        assert_eq!(a.status, 400, "{}", a.text());
        assert!(a.text().contains("cannot be removed"));
    }
    assert_eq!(std::fs::read_to_string(s.gw.config_path()).unwrap(), before);
}

/// Out-of-range and ill-typed limits sent through the admin API are refused whole, and the
/// key keeps its limits.
#[tokio::test]
async fn limits_out_of_range_or_of_the_wrong_type_are_refused_and_change_nothing() {
    let s = Setup::new(&[(
        "app",
        "scopes = [\"chat\"]\nlimits = { requests_per_minute = 5 }",
    )])
    .await;
    for bad in [
        json!(0),
        json!(4_294_967_296_u64),
        json!(-1),
        json!(1.5),
        json!("10"),
        json!([10]),
    ] {
        let refused = call(
            &s.gw,
            Method::PATCH,
            "/admin/keys/app",
            Some(json!({"limits": {"requests_per_minute": bad}})),
        )
        .await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.text());
        assert!(
            refused.text().contains("requests_per_minute"),
            "{bad}: {}",
            refused.text()
        );
        let now = call(&s.gw, Method::GET, "/admin/keys/app", None)
            .await
            .json();
        assert_eq!(now["limits"]["requests_per_minute"], 5, "{bad}: {now}");
    }
    // A second document after the first is no patch either.
    let trailing = admin_bytes(
        &s.gw,
        Method::PATCH,
        "/admin/keys/app",
        Bytes::from_static(br#"{"limits": {"requests_per_minute": 6}} {"name": "x"}"#),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(trailing.status, 400, "{}", trailing.text());
    let ok = call(
        &s.gw,
        Method::PATCH,
        "/admin/keys/app",
        Some(json!({"limits": {"requests_per_minute": 4_294_967_295_u64}})),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        ok.json()["limits"]["requests_per_minute"],
        4_294_967_295_u64
    );
}
