//! Attacks a gateway in front of a paid API must shrug off: spoofed client addresses, path
//! tricks, header smuggling, ambiguous framing, oversized and slow requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

fn chat_req(s: &Setup, key: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    post_req(
        &s.gw.url("/v1/chat/completions"),
        Some(s.key(key)),
        &chat("deepseek-chat"),
        headers,
    )
}

const NET_KEY: &str = "scopes = [\"chat\"]\nallowed_ips = [\"203.0.113.0/24\"]";

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let s = Setup::new(&[("net", NET_KEY)]).await;
    for spoof in [
        ("x-forwarded-for", "203.0.113.5"),
        ("x-real-ip", "203.0.113.5"),
        ("forwarded", "for=203.0.113.5"),
    ] {
        let a = send(chat_req(&s, "net", &[spoof])).await;
        assert_eq!(
            (a.status.as_u16(), a.code()),
            (403, "ip_not_allowed".into()),
            "{spoof:?}"
        );
    }
    assert!(s.mock.requests().is_empty());
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_is_walked_from_the_right() {
    let s = Setup::with_server(
        &[("net", NET_KEY)],
        "trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]",
    )
    .await;
    let ok = send(chat_req(
        &s,
        "net",
        &[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.1.2.3")],
    ))
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // Only the resolved client address goes upstream, not the client-supplied chain.
    assert_eq!(
        s.mock.requests()[0].headers["x-forwarded-for"],
        "203.0.113.5"
    );
    // The client prepended an allowed address; the hop the proxy saw is 6.6.6.6.
    let spoof = send(chat_req(
        &s,
        "net",
        &[("x-forwarded-for", "203.0.113.5, 6.6.6.6")],
    ))
    .await;
    assert_eq!(spoof.status, 403);
}

#[tokio::test]
async fn path_tricks_are_refused_before_anything_is_forwarded() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let key = s.key("app").bearer();
    for path in [
        "/v1/chat/completions/../files",
        "/v1/chat/completions/..%2ffiles",
        "/v1/%2e%2e/files",
        "/v1/chat/%2E%2E/completions",
        "//v1/files",
        "/v1//chat/completions",
        "/v1/./chat/completions",
        "/v1/chat/completions;x=y",
        "/v1/chat/completions/",
    ] {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let answer = raw(s.gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(raw_status(&answer), 400, "{path}: {answer}");
        assert!(answer.contains("invalid_request"), "{path}");
    }
    let a = get(&s.gw.url("/V1/FILES"), Some(s.key("app"))).await;
    assert_eq!((a.status.as_u16(), a.code()), (404, "unknown_route".into()));
    assert!(s.mock.requests().is_empty());
}

#[tokio::test]
async fn connection_header_cannot_strip_keygates_credentials() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let a = send(chat_req(
        &s,
        "app",
        &[
            ("connection", "authorization, x-forwarded-for, x-request-id"),
            ("upgrade", "websocket"),
        ],
    ))
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = &s.mock.requests()[0];
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}").as_str()
    );
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(seen.headers.contains_key("x-request-id"));
    assert!(!seen.headers.contains_key("upgrade"));
    assert!(
        !seen.headers.contains_key("connection") || seen.headers["connection"] != "authorization"
    );
}

#[tokio::test]
async fn other_credential_headers_never_reach_the_upstream() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let a = send(chat_req(
        &s,
        "app",
        &[
            ("x-api-key", "sk-kg-leak"),
            ("api-key", "sk-kg-leak"),
            ("proxy-authorization", "Basic bGVhaw=="),
            ("cookie", "session=leak"),
            ("openai-organization", "org-attacker"),
            ("openai-project", "proj-attacker"),
        ],
    ))
    .await;
    assert_eq!(a.status, 200);
    let seen = &s.mock.requests()[0];
    for h in [
        "x-api-key",
        "api-key",
        "proxy-authorization",
        "cookie",
        "openai-organization",
        "openai-project",
    ] {
        assert!(!seen.headers.contains_key(h), "{h} was forwarded");
    }
}

#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let s = Setup::new(&[("a", "scopes = [\"chat\"]"), ("b", "scopes = [\"chat\"]")]).await;
    let body = chat("deepseek-chat").to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        s.key("a").bearer(),
        s.key("b").bearer(),
        body.len()
    );
    let answer = raw(s.gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert!(s.mock.requests().is_empty());
}

#[tokio::test]
async fn ambiguous_framing_is_refused() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let key = s.key("app").bearer();
    let body = chat("deepseek-chat").to_string();
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    for framing in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\nContent-Type: application/json\r\n{framing}Connection: close\r\n\r\n{chunked}"
        );
        let answer = raw(s.gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(raw_status(&answer), 400, "{framing:?}: {answer}");
    }
    assert!(s.mock.requests().is_empty());
    // A plain chunked body is fine, and goes upstream re-framed with its exact length.
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunked}"
    );
    assert_eq!(
        raw_status(&raw(s.gw.addr, req.as_bytes(), Duration::from_secs(5)).await),
        200
    );
    let seen = &s.mock.requests()[0];
    let forwarded = with_cap(&body, 4096);
    assert_eq!(seen.body, forwarded.as_bytes());
    assert_eq!(
        seen.headers["content-length"],
        forwarded.len().to_string().as_str()
    );
    assert!(!seen.headers.contains_key("transfer-encoding"));
}

/// TE and CL together: the chunked framing wins (RFC 9112 6.3), the connection is closed after
/// the answer, and whatever the Content-Length would have left over is never read as a second
/// request. So a request cannot be smuggled past the gateway, nor desync the upstream (which
/// only ever receives keygate's own framing).
#[tokio::test]
async fn transfer_encoding_with_content_length_cannot_smuggle_a_request() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let key = s.key("app").bearer();
    let body = chat("deepseek-chat").to_string();
    let smuggled = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n\r\n");
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    for order in [
        format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            chunked.len() + smuggled.len()
        ),
        format!(
            "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
            chunked.len() + smuggled.len()
        ),
    ] {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\nContent-Type: application/json\r\n{order}\r\n{chunked}{smuggled}"
        );
        let answer = raw(s.gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    }
    let seen = s.mock.requests();
    assert!(
        seen.iter().all(|r| r.path_and_query == "/chat/completions"
            && r.body == with_cap(&body, 4096).as_bytes())
    );
}

#[tokio::test]
async fn oversized_headers_uris_and_chunked_bodies_are_refused() {
    let s = Setup::with_server(&[("app", "scopes = [\"chat\"]")], "max_body_bytes = 4096").await;
    let key = s.key("app").bearer();
    let huge = "a".repeat(40 * 1024);
    let req = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\nX-Big: {huge}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        raw_status(&raw(s.gw.addr, req.as_bytes(), Duration::from_secs(5)).await),
        431
    );

    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n{many}Connection: close\r\n\r\n"
    );
    assert_eq!(
        raw_status(&raw(s.gw.addr, req.as_bytes(), Duration::from_secs(5)).await),
        431
    );

    let long = format!("/v1/models?{}", "q".repeat(9000));
    let req = format!(
        "GET {long} HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\nConnection: close\r\n\r\n"
    );
    let status = raw_status(&raw(s.gw.addr, req.as_bytes(), Duration::from_secs(5)).await);
    assert!(status == 414 || status == 431, "{status}");

    // A chunked body passing the limit is refused while it streams in; no Content-Length.
    let chunk = "x".repeat(1000);
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for _ in 0..6 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let answer = raw(s.gw.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&answer), 413, "{answer}");
    assert!(answer.contains("request_too_large"));
    assert!(s.mock.requests().is_empty());
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let s = Setup::with_server(
        &[("app", "scopes = [\"chat\"]")],
        "header_read_timeout = \"300ms\"",
    )
    .await;
    let started = std::time::Instant::now();
    // Read with a 10 s bound: the gateway must close the connection well before that.
    let answer = raw(
        s.gw.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "connection was not closed"
    );
    let status = raw_status(&answer);
    assert!(status == 0 || status == 408, "{answer}");
    // The gateway still serves others.
    assert_eq!(send(chat_req(&s, "app", &[])).await.status, 200);
}

#[tokio::test]
async fn an_address_that_tries_many_invalid_keys_is_blocked_for_a_while() {
    let s = Setup::with_server(
        &[("app", "scopes = [\"chat\"]")],
        "invalid_keys_per_minute = 5\ninvalid_key_cooldown = \"2s\"",
    )
    .await;
    let url = s.gw.url("/v1/chat/completions");
    for _ in 0..6 {
        let guess = TestKey {
            id: String::new(),
            secret: keygate::auth::ApiKey::generate().expose().to_owned(),
        };
        assert_eq!(chat_request(&url, &guess).await.status, 401);
    }
    // Blocked before any lookup, even with a valid key.
    let a = chat_request(&url, s.key("app")).await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (429, "rate_limit_exceeded".into())
    );
    // Retrying cannot help during the cool-down: the SDKs are told not to.
    assert_eq!(a.headers["x-should-retry"], "false");
    assert!(!a.headers.contains_key("retry-after"));
    let metrics = get(&s.gw.admin_url("/metrics"), None).await.text();
    assert_eq!(
        sample(
            &metrics,
            r#"keygate_security_events_total{type="suspicious_pattern"}"#
        ),
        Some(1.0)
    );
    // After the cool-down the address is served again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = chat_request(&url, s.key("app")).await;
        if a.status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still blocked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
