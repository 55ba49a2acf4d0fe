//! One test per row of PRODUCT.md's error table: status, `error.code`, OpenAI error shape,
//! and nothing forwarded upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use keygate::auth::ApiKey;
use serde_json::json;

fn assert_openai_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status.as_u16(), status, "{}", a.text());
    let v = a.json();
    assert_eq!(v["error"]["code"], code);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(v["error"]["type"].as_str().is_some());
    assert!(
        a.headers["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
}

#[tokio::test]
async fn missing_unknown_malformed_and_badly_checksummed_keys_are_401_invalid_api_key() {
    let s = Setup::new(&[("app", r#"scopes = ["chat"]"#)]).await;
    let url = s.gw.url("/v1/chat/completions");
    let unknown = ApiKey::generate();
    let good = &s.key("app").secret;
    let mut typo = good.clone().into_bytes();
    typo[12] = if typo[12] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    for auth in [
        None,
        Some(format!("Bearer {}", unknown.expose())),
        Some("Bearer sk-kg-short".to_owned()),
        Some(format!("Bearer {typo}")),
        Some("Bearer ".to_owned()),
    ] {
        let mut b = Request::post(&url).header("content-type", "application/json");
        if let Some(a) = &auth {
            b = b.header("authorization", a);
        }
        let a = send(
            b.body(Full::new(Bytes::from(chat("deepseek-chat").to_string())))
                .unwrap(),
        )
        .await;
        assert_openai_error(&a, 401, "invalid_api_key");
        assert!(!a.text().contains("sk-kg-"), "the key must never be echoed");
    }
    assert!(s.mock.requests().is_empty());
}

#[tokio::test]
async fn expired_and_inactive_keys_have_their_own_codes() {
    let s = Setup::new(&[
        ("old", "scopes = [\"chat\"]\nexpires = 2026-01-02T00:00:00Z"),
        ("off", "scopes = [\"chat\"]\nstatus = \"inactive\""),
        (
            "future",
            "scopes = [\"chat\"]\nexpires = 2999-01-01T00:00:00Z",
        ),
    ])
    .await;
    let url = s.gw.url("/v1/chat/completions");
    assert_openai_error(
        &chat_request(&url, s.key("old")).await,
        401,
        "expired_api_key",
    );
    assert_openai_error(
        &chat_request(&url, s.key("off")).await,
        401,
        "inactive_api_key",
    );
    assert_eq!(chat_request(&url, s.key("future")).await.status, 200);
    assert_eq!(s.mock.requests().len(), 1);
}

#[tokio::test]
async fn rotated_out_secret_works_until_its_grace_ends() {
    let mock = MockUpstream::start().await.unwrap();
    let (current, hash) = TestKey::new("app");
    let (old, old_hash) = TestKey::new("app");
    let (gone, gone_hash) = TestKey::new("gone");
    let (gone_current, gone_current_hash) = TestKey::new("gone");
    let mut rest = key_toml(
        "app",
        &hash,
        &format!(
            "scopes = [\"chat\"]\nprevious_hash = \"{old_hash}\"\nprevious_expires = 2999-01-01T00:00:00Z"
        ),
    );
    rest.push_str(&key_toml("gone", &gone_current_hash, &format!("scopes = [\"chat\"]\nprevious_hash = \"{gone_hash}\"\nprevious_expires = 2026-01-02T00:00:00Z")));
    let gw = Gw::start(&config_text(&mock.url(), "", &rest)).await;
    let url = gw.url("/v1/chat/completions");
    assert_eq!(chat_request(&url, &current).await.status, 200);
    assert_eq!(chat_request(&url, &old).await.status, 200);
    assert_eq!(chat_request(&url, &gone_current).await.status, 200);
    // A previous secret past its grace is no longer in the table at all.
    assert_openai_error(&chat_request(&url, &gone).await, 401, "invalid_api_key");
}

#[tokio::test]
async fn ip_not_allowed_is_403() {
    let s = Setup::new(&[
        (
            "net",
            "scopes = [\"chat\"]\nallowed_ips = [\"203.0.113.0/24\", \"2001:db8::/32\"]",
        ),
        (
            "local",
            "scopes = [\"chat\"]\nallowed_ips = [\"127.0.0.0/8\"]",
        ),
    ])
    .await;
    let url = s.gw.url("/v1/chat/completions");
    assert_openai_error(
        &chat_request(&url, s.key("net")).await,
        403,
        "ip_not_allowed",
    );
    assert_eq!(chat_request(&url, s.key("local")).await.status, 200);
    assert_eq!(s.mock.requests().len(), 1);
}

#[tokio::test]
async fn referrer_not_allowed_is_403_and_a_missing_referrer_is_refused() {
    let s = Setup::new(&[(
        "web",
        "scopes = [\"chat\"]\nallowed_referrers = [\"https://allowed.example/*\"]",
    )])
    .await;
    let url = s.gw.url("/v1/chat/completions");
    let with = |name: &'static str, value: &'static str| {
        let url = url.clone();
        let key = s.key("web").bearer();
        async move {
            let mut b = Request::post(&url)
                .header("authorization", key)
                .header("content-type", "application/json");
            if !name.is_empty() {
                b = b.header(name, value);
            }
            send(
                b.body(Full::new(Bytes::from(chat("deepseek-chat").to_string())))
                    .unwrap(),
            )
            .await
        }
    };
    assert_eq!(
        with("referer", "https://allowed.example/page").await.status,
        200
    );
    assert_eq!(with("origin", "https://allowed.example").await.status, 200);
    assert_openai_error(&with("", "").await, 403, "referrer_not_allowed");
    for evil in [
        "https://allowed.example@evil.net/",
        "https://allowed.example.evil.net/",
        "http://allowed.example/",
        "https://evil.net/?https://allowed.example/",
    ] {
        assert_openai_error(&with("referer", evil).await, 403, "referrer_not_allowed");
    }
    assert_eq!(s.mock.requests().len(), 2);
}

#[tokio::test]
async fn scope_and_model_restrictions_are_403_permission_denied() {
    let s = Setup::new(&[
        ("chat", "scopes = [\"chat\"]"),
        (
            "pinned",
            "scopes = [\"chat\", \"embeddings\"]\nmodels = [\"deepseek-chat\"]",
        ),
    ])
    .await;
    let chat_url = s.gw.url("/v1/chat/completions");
    // The code model's scope is "code", which the chat key lacks.
    assert_openai_error(
        &post_json(&chat_url, Some(s.key("chat")), chat("deepseek-coder")).await,
        403,
        "permission_denied",
    );
    assert_openai_error(
        &post_json(
            &s.gw.url("/v1/embeddings"),
            Some(s.key("chat")),
            json!({"model": "mock-embedding", "input": "x"}),
        )
        .await,
        403,
        "permission_denied",
    );
    assert_openai_error(
        &get(&s.gw.url("/v1/files"), Some(s.key("chat"))).await,
        403,
        "permission_denied",
    );
    assert_openai_error(
        &post_json(&chat_url, Some(s.key("pinned")), chat("deepseek-reasoner")).await,
        403,
        "permission_denied",
    );
    assert_eq!(chat_request(&chat_url, s.key("pinned")).await.status, 200);
    assert_eq!(s.mock.requests().len(), 1);
}

#[tokio::test]
async fn unconfigured_model_is_404_model_not_found() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let a = post_json(
        &s.gw.url("/v1/chat/completions"),
        Some(s.key("app")),
        chat("unlisted-model"),
    )
    .await;
    assert_openai_error(&a, 404, "model_not_found");
    assert!(s.mock.requests().is_empty());
}

#[tokio::test]
async fn unknown_routes_are_404_and_never_forwarded() {
    let s = Setup::new(&[("app", "scopes = [\"chat\", \"files\"]")]).await;
    let key = s.key("app");
    for path in [
        "/v1/assistants",
        "/V1/FILES",
        "/v1/chat",
        "/admin/keys",
        "/v1/v1/chat/completions",
        "/",
    ] {
        assert_openai_error(&get(&s.gw.url(path), Some(key)).await, 404, "unknown_route");
    }
    assert_eq!(
        get(&s.gw.url("/v1/chat/completions"), Some(key))
            .await
            .status,
        405
    );
    assert!(s.mock.requests().is_empty());
}

#[tokio::test]
async fn malformed_requests_are_400_invalid_request() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let url = s.gw.url("/v1/chat/completions");
    let key = s.key("app");
    let raw_post = |body: &'static str, ct: &'static str| {
        let url = url.clone();
        let bearer = key.bearer();
        async move {
            send(
                Request::post(&url)
                    .header("authorization", bearer)
                    .header("content-type", ct)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
            .await
        }
    };
    for (body, ct) in [
        ("", "application/json"),
        ("{}", "Application/JSON; charset=utf-8"),
        ("{not json", "application/json"),
        ("[1,2,3]", "application/json"),
        (
            r#"{"model":"deepseek-chat","model":"deepseek-reasoner","messages":[]}"#,
            "application/json",
        ),
        (r#"{"messages":[]}"#, "application/json"),
        (
            r#"{"model":"deepseek-chat","stream":"yes"}"#,
            "application/json",
        ),
        (r#"{"model":"deepseek-chat"}"#, "text/plain"),
    ] {
        assert_openai_error(&raw_post(body, ct).await, 400, "invalid_request");
    }
    let deep = format!(
        "{{\"model\":\"deepseek-chat\",\"x\":{}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let a = send(
        Request::post(&url)
            .header("authorization", key.bearer())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(deep)))
            .unwrap(),
    )
    .await;
    assert_openai_error(&a, 400, "invalid_request");
    assert!(s.mock.requests().is_empty());
}

#[tokio::test]
async fn body_too_large_is_413() {
    let s = Setup::with_server(&[("app", "scopes = [\"chat\"]")], "max_body_bytes = 4096").await;
    let big = format!(
        "{{\"model\":\"deepseek-chat\",\"pad\":\"{}\"}}",
        "x".repeat(5000)
    );
    let a = post_json_raw(&s, big).await;
    assert_openai_error(&a, 413, "request_too_large");
    assert!(s.mock.requests().is_empty());
}

async fn post_json_raw(s: &Setup, body: String) -> Answer {
    send(
        Request::post(s.gw.url("/v1/chat/completions"))
            .header("authorization", s.key("app").bearer())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn upstream_unreachable_is_502_and_timeout_is_504() {
    let (gw, key) = Gw::with_dead_upstream().await;
    let a = chat_request(&gw.url("/v1/chat/completions"), &key).await;
    assert_openai_error(&a, 502, "upstream_error");

    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let req = Request::post(s.gw.url("/v1/chat/completions"))
        .header("authorization", s.key("app").bearer())
        .header("content-type", "application/json")
        .header("x-mock-delay-ms", "5000")
        .body(Full::new(Bytes::from(chat("deepseek-chat").to_string())))
        .unwrap();
    // first_byte_timeout is 3 s in the test config.
    assert_openai_error(&send(req).await, 504, "upstream_error");
}

#[tokio::test]
async fn upstream_rejecting_keygates_key_is_a_generic_502_without_upstream_text() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    // 402 is the upstream account's balance: no retry can fix it, nor keygate's own key.
    for status in ["401", "403", "402"] {
        let req = Request::post(s.gw.url("/v1/chat/completions"))
            .header("authorization", s.key("app").bearer())
            .header("content-type", "application/json")
            .header("x-mock-status", status)
            .body(Full::new(Bytes::from(chat("deepseek-chat").to_string())))
            .unwrap();
        let a = send(req).await;
        assert_openai_error(&a, 502, "upstream_error");
        assert_eq!(a.headers["x-should-retry"], "false", "{status}");
        assert!(!a.text().contains(UPSTREAM_SECRET_TEXT));
        assert!(!a.text().contains("mock"));
    }
}

#[tokio::test]
async fn missing_upstream_key_is_502_and_nothing_is_sent() {
    let mock = MockUpstream::start().await.unwrap();
    let (key, hash) = TestKey::new("app");
    let gw = Gw::start_with_key(
        &config_text(
            &mock.url(),
            "",
            &key_toml("app", &hash, "scopes = [\"chat\"]"),
        ),
        None,
    )
    .await;
    let a = chat_request(&gw.url("/v1/chat/completions"), &key).await;
    assert_openai_error(&a, 502, "upstream_error");
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn environment_defaults_apply_to_keys_that_do_not_set_their_own() {
    let mock = MockUpstream::start().await.unwrap();
    let (inherits, h1) = TestKey::new("inherits");
    let (own, h2) = TestKey::new("own");
    let env =
        "\n[environments.development]\nscopes = [\"chat\"]\nallowed_ips = [\"203.0.113.0/24\"]\n";
    let keys = format!(
        "{env}{}{}",
        key_toml("inherits", &h1, "").replace("production", "development"),
        key_toml("own", &h2, "allowed_ips = []").replace("production", "development"),
    );
    let gw = Gw::start(&config_text(&mock.url(), "", &keys)).await;
    let url = gw.url("/v1/chat/completions");
    // Inherits both the chat scope and the IP rule, which refuses 127.0.0.1.
    assert_openai_error(&chat_request(&url, &inherits).await, 403, "ip_not_allowed");
    // Its own (empty) allow-list wins over the environment's; the scope is still inherited.
    assert_eq!(chat_request(&url, &own).await.status, 200);
    assert_openai_error(
        &post_json(&url, Some(&own), chat("deepseek-coder")).await,
        403,
        "permission_denied",
    );
}
