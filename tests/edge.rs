//! The edge, tried as a client, a proxy and an attacker would: early refusals that keep pooled
//! connections usable, `X-Forwarded-For` with bytes above 0x7f, an admin guard apart from the
//! API's, admission before the body with bounded memory, keyless floods, plaintext upstreams,
//! charsets, clients that stop reading, query strings, `Host` checks, and config files behind
//! a Kubernetes ConfigMap's symlinks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn head(method: &str, path: &str, key: &str, len: usize, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n{extra}\r\n"
    )
}

/// Item 1: a refusal sent before the body is read. With the body in a later segment (as on
/// real networks), the connection must stay usable for the next request, or say it closes.
#[tokio::test]
async fn an_early_refusal_keeps_the_connection_usable() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let body = chat("deepseek-chat").to_string();
    let unknown = keygate::auth::ApiKey::generate().expose().to_owned();
    let mut conn = TcpStream::connect(s.gw.addr).await.unwrap();
    for path in ["/v1/chat/completions", "/v1/nowhere"] {
        let key = if path == "/v1/nowhere" {
            &s.key("app").secret
        } else {
            &unknown
        };
        conn.write_all(head("POST", path, key, body.len(), "").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.write_all(body.as_bytes()).await.unwrap();
        let (status, head, _) = read_response(&mut conn).await.expect("answered");
        assert!(status == 401 || status == 404, "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
    // The next, valid, request on the same connection is served.
    let ok = head(
        "POST",
        "/v1/chat/completions",
        &s.key("app").secret,
        body.len(),
        "",
    );
    conn.write_all(format!("{ok}{body}").as_bytes())
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut conn).await.expect("served");
    assert_eq!(status, 200);

    // A body too large to read (or that never comes) is refused with `Connection: close`.
    let mut conn = TcpStream::connect(s.gw.addr).await.unwrap();
    conn.write_all(head("POST", "/v1/chat/completions", &unknown, 1 << 20, "").as_bytes())
        .await
        .unwrap();
    let (status, answer, _) = read_response(&mut conn).await.expect("answered");
    assert_eq!(status, 401);
    assert!(answer.contains("connection: close"), "{answer}");

    // A small body that never comes, or trickles in too slowly: keygate waits up to a second
    // for it, then answers with `Connection: close` rather than leave the socket in doubt.
    for trickle in [false, true] {
        let mut conn = TcpStream::connect(s.gw.addr).await.unwrap();
        conn.write_all(head("POST", "/v1/chat/completions", &unknown, body.len(), "").as_bytes())
            .await
            .unwrap();
        // The trickle goes on for 3 s (15 bytes, short of the body): the answer must not
        // wait for it to stop.
        let times = if trickle { 15 } else { 0 };
        let (answer, took) = trickle_and_read(&mut conn, Duration::from_millis(200), times).await;
        let (status, head, _) = answer.expect("answered");
        assert_eq!(status, 401, "trickle {trickle}");
        assert!(
            head.contains("connection: close"),
            "trickle {trickle}: {head}"
        );
        assert!(
            took >= Duration::from_millis(900),
            "answered before the body had its second"
        );
        assert!(
            took < Duration::from_millis(2500),
            "trickle {trickle}: each byte restarted the wait ({took:?})"
        );
    }
}

/// Item 2: one byte above 0x7f in `X-Forwarded-For` once made keygate take the trusted proxy's
/// own address as the client's.
#[tokio::test]
async fn forwarded_for_is_read_as_bytes_and_garbage_never_means_the_proxy() {
    let s = Setup::with_server(
        &[
            (
                "proxy_only",
                "scopes = [\"chat\"]\nallowed_ips = [\"127.0.0.0/8\"]",
            ),
            ("app", "scopes = [\"chat\"]"),
        ],
        "trusted_proxies = [\"127.0.0.0/8\"]\ninvalid_keys_per_minute = 5",
    )
    .await;
    let send_xff = |key: &TestKey, xff: &'static [u8]| {
        let req = Request::post(s.gw.url("/v1/chat/completions"))
            .header("authorization", key.bearer())
            .header("content-type", "application/json")
            .header(
                "x-forwarded-for",
                http::HeaderValue::from_bytes(xff).unwrap(),
            )
            .body(Full::new(Bytes::from(chat("deepseek-chat").to_string())))
            .unwrap();
        send(req)
    };
    // nginx's $proxy_add_x_forwarded_for: whatever the client sent, then the client.
    let a = send_xff(s.key("proxy_only"), b"\x80junk, 198.51.100.7").await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (403, "ip_not_allowed".into())
    );
    // Garbage where keygate needs an address is refused, never read as the proxy.
    let a = send_xff(s.key("proxy_only"), b"198.51.100.7, \x80junk").await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (400, "invalid_request".into())
    );
    // Invalid keys with the trick are charged to the client, not to the proxy.
    let guess = TestKey {
        id: String::new(),
        secret: keygate::auth::ApiKey::generate().expose().to_owned(),
    };
    for _ in 0..10 {
        let status = send_xff(&guess, b"\xffx, 198.51.100.66").await.status;
        assert!(status == 401 || status == 429, "{status}");
    }
    assert_eq!(send_xff(s.key("app"), b"198.51.100.9").await.status, 200);
    assert_eq!(
        send_xff(s.key("app"), b"198.51.100.66").await.code(),
        "rate_limit_exceeded"
    );
}

async fn admin_call(gw: &Gw, token: &str) -> Answer {
    let req = Request::get(gw.admin_url("/admin/keys"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(req).await
}

/// Item 3: the admin listener has its own guard. The right token is never refused; wrong ones
/// are counted, recorded and slowed, and they never block API clients (nor the reverse).
#[tokio::test]
async fn wrong_admin_tokens_never_lock_out_the_right_one_or_api_clients() {
    let s = Setup::with_server(
        &[("app", "scopes = [\"chat\"]")],
        "invalid_keys_per_minute = 5",
    )
    .await;
    for _ in 0..8 {
        assert_eq!(admin_call(&s.gw, "wrong").await.status, 401);
    }
    let started = tokio::time::Instant::now();
    assert_eq!(admin_call(&s.gw, "wrong").await.status, 401);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "wrong tokens are slowed"
    );
    assert_eq!(admin_call(&s.gw, ADMIN_TOKEN).await.status, 200);
    assert_eq!(
        chat_request(&s.gw.url("/v1/chat/completions"), s.key("app"))
            .await
            .status,
        200
    );
    // And invalid API keys do not block the admin.
    let guess = TestKey {
        id: String::new(),
        secret: keygate::auth::ApiKey::generate().expose().to_owned(),
    };
    for _ in 0..8 {
        chat_request(&s.gw.url("/v1/chat/completions"), &guess).await;
    }
    assert_eq!(
        chat_request(&s.gw.url("/v1/chat/completions"), s.key("app"))
            .await
            .code(),
        "rate_limit_exceeded"
    );
    assert_eq!(admin_call(&s.gw, ADMIN_TOKEN).await.status, 200);
    let req = Request::get(s.gw.admin_url("/admin/events?limit=100"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let events = send(req).await.json();
    let wrong = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "invalid_admin_token")
        .unwrap();
    assert_eq!(wrong["count"], 9, "repeats are counted in one entry");
}

/// Item 4: per-key limits are taken before the body is read, and all bodies together are
/// bounded by `server.max_buffered_body_bytes`, so memory stays bounded under the attacks
/// that once took the process to 694 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_happens_before_the_body_and_memory_stays_bounded() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (two, h1) = TestKey::new("two");
    let (open, h2) = TestKey::new("open");
    let (slow, h3) = TestKey::new("slow");
    let text = config_text(
        &mock.url(),
        "max_buffered_body_bytes = 67108864\nbody_read_timeout = \"30s\"",
        &format!(
            "[storage]\npath = \"{}\"\n{}{}{}",
            dir.path().join("keygate.db").display(),
            key_toml(
                "two",
                &h1,
                "scopes = [\"chat\"]\nlimits = { max_concurrent_requests = 2 }"
            ),
            key_toml("open", &h2, "scopes = [\"chat\"]"),
            key_toml(
                "slow",
                &h3,
                "scopes = [\"chat\"]\nlimits = { requests_per_minute = 1 }"
            ),
        ),
    );
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, text).unwrap();
    let gw = Arc::new(Binary::serve(&path, &[("KEYGATE_TEST_UNUSED", UPSTREAM_KEY)]).await);
    let base = gw.memory_kb("VmRSS");

    // 50 stalled uploads on a key with max_concurrent_requests = 2: two are held, the other 48
    // are refused at once, before a byte of their body is read.
    // The first two are held: nothing comes back within 300 ms. The others must be refused;
    // how long a refusal takes on a loaded machine does not decide which is which.
    let mut held = Vec::new();
    let mut refused = 0;
    for n in 0..50 {
        let mut conn = TcpStream::connect(&gw.addr).await.unwrap();
        conn.write_all(head("POST", "/v1/chat/completions", &two.secret, 8 << 20, "").as_bytes())
            .await
            .unwrap();
        if n < 2 {
            let answered =
                tokio::time::timeout(Duration::from_millis(300), read_response(&mut conn)).await;
            assert!(answered.is_err(), "upload {n} was answered: {answered:?}");
            held.push(conn);
            continue;
        }
        match read_response(&mut conn).await {
            Some((429, head, _)) => {
                assert!(head.contains("connection: close"));
                refused += 1;
            }
            other => panic!("upload {n}: {other:?}"),
        }
    }
    assert_eq!((held.len(), refused), (2, 48));
    // Hanging up frees the two slots at once, not when the body timeout (30 s) ends.
    drop(held);
    let freed = tokio::time::Instant::now();
    while chat_request(&gw.url("/v1/chat/completions"), &two)
        .await
        .status
        != 200
    {
        assert!(
            freed.elapsed() < Duration::from_secs(5),
            "the aborted uploads' slots were not freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let forwarded = mock.requests().len();

    // 40 bodies of 8 MiB at once on a key without limits: at most 64 MiB are ever buffered;
    // the others are told to come back (503).
    let big = format!(
        "{{\"model\":\"deepseek-chat\",\"max_tokens\":5,\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "a".repeat((8 << 20) - 1024)
    );
    let big = Arc::new(big);
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (gw, big, key) = (gw.clone(), big.clone(), open.bearer());
            tokio::spawn(async move {
                let req = Request::post(gw.url("/v1/chat/completions"))
                    .header("authorization", key)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(big.as_bytes().to_vec())))
                    .unwrap();
                client()
                    .request(req)
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    // 0: the client was still sending when keygate refused early and closed.
    assert!(
        statuses.iter().all(|s| [200, 503, 0].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&503), "{statuses:?}");
    // What was admitted reached the upstream whole; nothing else did.
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!(admitted > 0, "{statuses:?}");
    let upstream = mock.requests();
    assert_eq!(upstream.len() - forwarded, admitted, "{statuses:?}");
    assert!(
        upstream[forwarded..]
            .iter()
            .all(|r| r.body.len() == big.len())
    );
    // Six 8 MiB streamed bodies with stream_options, refused by the RPM after the first.
    let streamed = format!(
        "{{\"model\":\"deepseek-chat\",\"stream\":true,\"stream_options\":{{\"include_usage\":false}},\"max_tokens\":5,\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "b".repeat((8 << 20) - 1024)
    );
    let forwarded = mock.requests().len();
    let mut streamed_statuses = Vec::new();
    for _ in 0..6 {
        let req = Request::post(gw.url("/v1/chat/completions"))
            .header("authorization", slow.bearer())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(streamed.clone())))
            .unwrap();
        let status = match client().request(req).await {
            Ok(r) => {
                let status = r.status().as_u16();
                let _ = r.into_body().collect().await;
                status
            }
            Err(_) => 0,
        };
        streamed_statuses.push(status);
    }
    // The first is forwarded with include_usage spliced in (true: keygate bills from it), the
    // others are refused by the RPM (0: refused early, while the client was still sending).
    assert_eq!(streamed_statuses[0], 200, "{streamed_statuses:?}");
    assert!(
        streamed_statuses[1..].iter().all(|s| [429, 0].contains(s)),
        "{streamed_statuses:?}"
    );
    let upstream = mock.requests();
    assert_eq!(upstream.len() - forwarded, 1);
    let body = &upstream[forwarded].body;
    assert!(body.len() > (8 << 20) - 2048);
    assert!(
        memchr::memmem::find(body, b"\"include_usage\":true").is_some(),
        "include_usage was not spliced in"
    );
    let peak = gw.memory_kb("VmHWM");
    eprintln!(
        "memory: start {} KiB, peak {} KiB, statuses {statuses:?}",
        base, peak
    );
    // 40 * 8 MiB = 320 MiB were sent at once; the process never held more than the budget
    // (64 MiB) plus the bodies on their way upstream and its own working set.
    assert!(
        peak < base + 128 * 1024,
        "peak {} MiB, at start {} MiB",
        peak / 1024,
        base / 1024
    );
}

/// Review: a body's bytes count against the buffered-body budget as they arrive, so requests
/// that only declare large bodies cannot starve everyone else.
#[tokio::test]
async fn declared_but_unsent_bodies_hold_no_buffer() {
    let s = Setup::with_server(
        &[("app", "scopes = [\"chat\"]")],
        "max_buffered_body_bytes = 1048576\nbody_read_timeout = \"20s\"",
    )
    .await;
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut conn = TcpStream::connect(s.gw.addr).await.unwrap();
        conn.write_all(
            head(
                "POST",
                "/v1/chat/completions",
                &s.key("app").secret,
                4 << 20,
                "",
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        stalled.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        chat_request(&s.gw.url("/v1/chat/completions"), s.key("app"))
            .await
            .status,
        200
    );
    drop(stalled);
}

/// Item 5: keyless requests count toward the guard, and a flood of them cannot push real
/// events out of `/admin/events`.
#[tokio::test]
async fn keyless_floods_are_throttled_and_cannot_flush_the_event_log() {
    let s = Setup::with_server(
        &[(
            "net",
            "scopes = [\"chat\"]\nallowed_ips = [\"203.0.113.0/24\"]",
        )],
        "invalid_keys_per_minute = 20",
    )
    .await;
    let url = s.gw.url("/v1/chat/completions");
    assert_eq!(
        chat_request(&url, s.key("net")).await.code(),
        "ip_not_allowed"
    );
    let mut statuses = Vec::new();
    for _ in 0..1000 {
        statuses.push(
            post_json(&url, None, chat("deepseek-chat"))
                .await
                .status
                .as_u16(),
        );
    }
    // 20 in a burst, the 21st trips the guard, the rest are refused before any lookup.
    assert_eq!(statuses.iter().filter(|&&s| s == 401).count(), 21);
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 979);
    let req = Request::get(s.gw.admin_url("/admin/events?limit=1000"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let events = send(req).await.json();
    let events = events["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["type"] == "ip_denied"),
        "{events:?}"
    );
    assert!(
        events.len() < 10,
        "folded, not 1000 entries: {}",
        events.len()
    );
}

/// Item 6: an `http://` upstream on another host would carry the real key in clear text.
#[test]
fn plaintext_upstreams_need_an_explicit_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, text).unwrap();
        let out = run_keygate(&["check"], &path);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check(&config_text("http://api.example.com", "", ""));
    assert!(
        !ok && err.contains("upstream.url") && err.contains("allow_plaintext"),
        "{err}"
    );
    let opted = config_text("http://api.example.com", "", "").replace(
        "idle_timeout = \"3s\"",
        "idle_timeout = \"3s\"\nallow_plaintext = true",
    );
    assert!(check(&opted).0);
    assert!(check(&config_text("http://127.0.0.1:9", "", "")).0);
    assert!(check(&config_text("http://localhost:9", "", "")).0);
}

/// Item 6: what keygate cannot read the way the upstream would is refused.
#[tokio::test]
async fn other_charsets_and_query_strings_on_model_routes_are_refused() {
    let s = Setup::new(&[("app", "scopes = [\"chat\", \"files\"]")]).await;
    let req = |ct: &str, path: &str| {
        Request::post(s.gw.url(path))
            .header("authorization", s.key("app").bearer())
            .header("content-type", ct)
            .body(Full::new(Bytes::from(chat("deepseek-chat").to_string())))
            .unwrap()
    };
    for ct in [
        "application/json; charset=utf-16",
        "application/json;charset=latin1",
    ] {
        let a = send(req(ct, "/v1/chat/completions")).await;
        assert_eq!(
            (a.status.as_u16(), a.code()),
            (400, "invalid_request".into()),
            "{ct}"
        );
    }
    let a = send(req(
        "application/json; charset=UTF-8",
        "/v1/chat/completions",
    ))
    .await;
    assert_eq!(a.status, 200);
    let a = send(req(
        "application/json",
        "/v1/chat/completions?model=deepseek-reasoner",
    ))
    .await;
    assert_eq!(
        (a.status.as_u16(), a.code()),
        (400, "invalid_request".into())
    );
    assert_eq!(s.mock.requests().len(), 1);
    // Listings keep their query strings.
    assert_eq!(
        get(&s.gw.url("/v1/files?purpose=batch"), Some(s.key("app")))
            .await
            .status,
        404
    );
    assert_eq!(
        s.mock.requests().last().unwrap().path_and_query,
        "/files?purpose=batch"
    );
}

/// A stream of 100,000 chunks asked for with key `app` on a socket with a small receive
/// buffer, which the test then never reads.
async fn stream_never_read(s: &Setup) -> TcpStream {
    let body = json!({"model": "deepseek-chat", "stream": true, "max_tokens": 100000, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(s.gw.addr).await.unwrap();
    let req = head(
        "POST",
        "/v1/chat/completions",
        &s.key("app").secret,
        body.len(),
        "x-mock-chunks: 100000\r\n",
    );
    conn.write_all(format!("{req}{body}").as_bytes())
        .await
        .unwrap();
    conn
}

/// Key `app`'s ledger rows once there are any (within `limit`).
async fn settled_rows(s: &Setup, limit: Duration) -> Vec<keygate::usage::ledger::DailyRow> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let rows = s.gw.ledger().daily(Some("app"), "2000-01-01").unwrap();
        if !rows.is_empty() {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request was never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Item 6: a client that stops reading a stream is cut after `client_write_timeout`, which
/// frees the upstream connection and bills the stream as aborted.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_and_billed() {
    let s = Setup::with_server(
        &[("app", "scopes = [\"chat\"]")],
        "client_write_timeout = \"1s\"",
    )
    .await;
    let conn = stream_never_read(&s).await;
    // Never read. The gateway gives up on this client, and the upstream stream is cancelled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while s.mock.cancelled_streams() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled client was never cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = settled_rows(&s, Duration::from_secs(10)).await;
    assert_eq!((rows[0].requests, rows[0].estimated), (1, 1));
    assert!(rows[0].completion_tokens > 0);
    drop(conn);
}

/// Item 6: `/metrics` and `/readyz` answer only the `Host` names they are meant for, so a page
/// in an operator's browser cannot read them by DNS rebinding.
#[tokio::test]
async fn the_admin_listener_answers_only_allowed_hosts() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let port = s.gw.admin.port();
    for (host, status) in [
        (format!("127.0.0.1:{port}"), 200),
        (format!("localhost:{port}"), 200),
        ("[::1]".to_owned(), 200),
        ("10.1.2.3:8090".to_owned(), 200),
        (format!("rebind.attacker.example:{port}"), 421),
        ("localhost.attacker.example".to_owned(), 421),
    ] {
        let mut conn = TcpStream::connect(s.gw.admin).await.unwrap();
        conn.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (got, head, _) = read_response(&mut conn).await.unwrap();
        assert_eq!(got, status, "{host}: {head}");
    }
}

/// Item 6: `keys diagnose -` reads the key from standard input, never from the command line.
#[test]
fn diagnose_reads_the_key_from_standard_input() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (key, hash) = TestKey::new("app");
    let path = dir.path().join("keygate.toml");
    std::fs::write(
        &path,
        config_text(
            "https://api.deepseek.com",
            "",
            &key_toml("app", &hash, "scopes = [\"chat\"]"),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(KEYGATE_BIN)
        .args(["keys", "diagnose", "-", "--config"])
        .arg(&path)
        .env_remove("KEYGATE_ADMIN_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{}", key.secret).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("known: key app"), "{text}");
    assert!(!text.contains(&key.secret));
}

/// Item 7: a Kubernetes ConfigMap update swaps the `..data` symlink and deletes the old
/// target; reloads must follow the path as given.
#[tokio::test]
async fn reloads_follow_a_configmap_symlink_swap() {
    use std::os::unix::fs::symlink;
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (first, h1) = TestKey::new("first");
    let (second, h2) = TestKey::new("second");
    let storage = format!(
        "[storage]\npath = \"{}\"\n",
        root.join("keygate.db").display()
    );
    let v1 = config_text(
        &mock.url(),
        "",
        &format!("{storage}{}", key_toml("first", &h1, "scopes = [\"chat\"]")),
    );
    let v2 = format!("{v1}{}", key_toml("second", &h2, "scopes = [\"chat\"]"));
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::write(root.join("..v1/keygate.toml"), &v1).unwrap();
    symlink("..v1", root.join("..data")).unwrap();
    symlink("..data/keygate.toml", root.join("keygate.toml")).unwrap();
    let gw = Binary::serve(
        &root.join("keygate.toml"),
        &[("KEYGATE_TEST_UNUSED", UPSTREAM_KEY)],
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    assert_eq!(chat_request(&url, &first).await.status, 200);
    assert_eq!(chat_request(&url, &second).await.status, 401);

    // What kubelet does: write the new version, swap `..data` atomically, delete the old one.
    std::fs::create_dir(root.join("..v2")).unwrap();
    std::fs::write(root.join("..v2/keygate.toml"), &v2).unwrap();
    symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..v1")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while chat_request(&url, &second).await.status != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the swap was never picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(chat_request(&url, &first).await.status, 200);
}

/// A body that stops arriving is cut at `server.body_read_timeout` with 408 and
/// `Connection: close`, nothing reaches the upstream, and the key's concurrency slot is free
/// again at once. Also a body that trickles in, a byte at a time, never resets the clock.
#[tokio::test]
async fn a_stalled_or_trickling_body_gets_408_and_frees_its_slot() {
    let s = Setup::with_server(
        &[(
            "app",
            "scopes = [\"chat\"]\nlimits = { max_concurrent_requests = 1 }",
        )],
        "body_read_timeout = \"500ms\"",
    )
    .await;
    let secret = s.key("app").secret.clone();
    let addr = s.gw.addr;
    for trickle in [false, true] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(head("POST", "/v1/chat/completions", &secret, 100, "").as_bytes())
            .await
            .unwrap();
        conn.write_all(b"{\"model\":").await.unwrap();
        // A byte every 100 ms for 3 s: 30 more bytes, far short of 100. The answer must come
        // at the timeout, not when the trickle stops.
        let times = if trickle { 30 } else { 0 };
        let (answered, took) = trickle_and_read(&mut conn, Duration::from_millis(100), times).await;
        assert!(
            took < Duration::from_millis(2000),
            "trickle {trickle}: each byte restarted the timeout ({took:?})"
        );
        let (status, head, body) = answered.expect("the connection closed without an answer");
        assert_eq!(status, 408, "trickle {trickle}: {head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(String::from_utf8_lossy(&body).contains("invalid_request"));
        // The slot is free: an ordinary request on the same key is served.
        assert_eq!(
            chat_request(&s.gw.url("/v1/chat/completions"), s.key("app"))
                .await
                .status,
            200
        );
    }
    // Only the two ordinary requests reached the upstream.
    assert_eq!(s.mock.requests().len(), 2);
}

/// The same stalled reader on a key with a budget: once cut, its stream is read to its end and
/// billed the usage the upstream reports (what the provider charges), not an estimate, and
/// the upstream's stream is not cancelled.
#[tokio::test]
async fn a_budgeted_stream_whose_client_stops_reading_is_billed_its_real_usage() {
    let s = Setup::with_server(
        &[(
            "app",
            "scopes = [\"chat\"]\nlimits = { monthly_spend_usd = 1 }",
        )],
        "client_write_timeout = \"1s\"",
    )
    .await;
    let conn = stream_never_read(&s).await;
    let rows = settled_rows(&s, Duration::from_secs(30)).await;
    let generated = s.mock.generated();
    assert_eq!(generated.len(), 1);
    assert_eq!(s.mock.cancelled_streams(), 0);
    assert_eq!((rows[0].requests, rows[0].estimated), (1, 0));
    assert_eq!(rows[0].completion_tokens, generated[0].completion_tokens);
    assert_eq!(rows[0].completion_tokens, 100_000);
    drop(conn);
}

/// `server.max_connections`: past it, a new connection waits in the listen queue (served
/// nothing) until one of the open ones closes; then it is served.
#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let s = Setup::with_server(&[("app", "scopes = [\"chat\"]")], "max_connections = 2").await;
    let body = chat("deepseek-chat").to_string();
    // Two connections that send half a request head and stall.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = TcpStream::connect(s.gw.addr).await.unwrap();
        conn.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(s.gw.addr).await.unwrap();
    let req = head(
        "POST",
        "/v1/chat/completions",
        &s.key("app").secret,
        body.len(),
        "",
    );
    third
        .write_all(format!("{req}{body}").as_bytes())
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), read_response(&mut third)).await;
    assert!(waited.is_err(), "served past the cap: {waited:?}");
    assert!(s.mock.requests().is_empty());
    drop(held.pop());
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(5), read_response(&mut third))
        .await
        .expect("served once a connection closed")
        .expect("answered");
    assert_eq!(status, 200);
}
