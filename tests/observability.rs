//! What an SRE reads: request log lines and metrics through the real binary. Every line says
//! what the client called (method, path, endpoint) without its query; upstream failures are
//! `upstream_error`, not `refused`; a stream cut when the shutdown grace runs out is
//! `shutdown_cut`, not `client_aborted`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use mock_upstream::MockUpstream;

/// The request log lines (target keygate::request) of a finished gateway's stderr.
fn request_lines(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| l.contains("keygate::request"))
        .collect()
}

#[tokio::test]
async fn every_request_line_says_what_was_called_and_upstream_failures_are_upstream_errors() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = app_config(dir.path(), &mock.url(), "");
    let gw = Binary::serve(&path, &[("KG_TEST_UPSTREAM_KEY", UPSTREAM_KEY)]).await;

    // A bad key on a real route, and a good key on a route that does not exist, with a
    // secret-looking query the log must not keep.
    let (wrong, _) = TestKey::new("nobody");
    let a = chat_request(&gw.url("/v1/chat/completions"), &wrong).await;
    assert_eq!(a.status, 401);
    let a = post_json(
        &gw.url("/v1/nothing/here?api_key=sk-query-secret-123"),
        Some(&key),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(a.status, 404);
    // The upstream rejects keygate's key: a generic 502, logged as an upstream error.
    let req = Request::post(gw.url("/v1/chat/completions"))
        .header("authorization", key.bearer())
        .header("content-type", "application/json")
        .header("x-mock-status", "401")
        .body(Full::new(Bytes::from(chat("deepseek-chat").to_string())))
        .unwrap();
    assert_eq!(send(req).await.status, 502);

    let metrics = get(&gw.admin_url("/metrics"), None).await.text();
    // Requests counted, summed over the series of an endpoint and status class.
    let requests = |endpoint: &str, status: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("keygate_requests_total{"))
            .filter(|l| {
                l.contains(&format!("endpoint=\"{endpoint}\""))
                    && l.contains(&format!("status=\"{status}\""))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(requests("/chat/completions", "4xx"), 1.0, "{metrics}");
    assert_eq!(requests("unmatched", "4xx"), 1.0, "{metrics}");
    assert_eq!(requests("/chat/completions", "5xx"), 1.0, "{metrics}");
    drop(mock);

    gw.signal("-TERM");
    let (status, logs) = gw.wait().await;
    assert!(status.success());
    let lines = request_lines(&logs);
    assert_eq!(lines.len(), 3, "{logs}");
    let (unauthorized, unknown, upstream) = (lines[0], lines[1], lines[2]);
    for (line, wanted) in [
        (
            unauthorized,
            [
                "method=\"POST\"",
                "path=\"/v1/chat/completions\"",
                "endpoint=\"/chat/completions\"",
                "status=401",
                "outcome=\"refused\"",
            ],
        ),
        (
            unknown,
            [
                "method=\"POST\"",
                "path=\"/v1/nothing/here\"",
                "endpoint=\"unmatched\"",
                "status=404",
                "outcome=\"refused\"",
            ],
        ),
        (
            upstream,
            [
                "method=\"POST\"",
                "path=\"/v1/chat/completions\"",
                "endpoint=\"/chat/completions\"",
                "status=502",
                "outcome=\"upstream_error\"",
            ],
        ),
    ] {
        for w in wanted {
            assert!(line.contains(w), "{w} missing in:\n{line}");
        }
    }
    assert!(
        !logs.contains("sk-query-secret-123"),
        "the query reached the log"
    );
    assert!(!logs.contains(&key.secret) && !logs.contains(UPSTREAM_KEY));
}

#[tokio::test]
async fn an_unreachable_upstream_is_an_upstream_error() {
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = app_config(dir.path(), &url, "");
    let gw = Binary::serve(&path, &[("KG_TEST_UPSTREAM_KEY", UPSTREAM_KEY)]).await;
    let a = chat_request(&gw.url("/v1/chat/completions"), &key).await;
    assert_eq!(a.status, 502, "{}", a.text());
    gw.signal("-TERM");
    let (_, logs) = gw.wait().await;
    let lines = request_lines(&logs);
    assert_eq!(lines.len(), 1, "{logs}");
    assert!(
        lines[0].contains("outcome=\"upstream_error\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("reason=\"upstream_unreachable\""),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn a_stream_cut_when_the_shutdown_grace_ends_is_logged_as_cut_and_billed() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = app_config(dir.path(), &mock.url(), "shutdown_grace = \"1s\"");
    let gw = Binary::serve(&path, &[("KG_TEST_UPSTREAM_KEY", UPSTREAM_KEY)]).await;
    let body = serde_json::json!({"model": "deepseek-chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    // 100 chunks 100 ms apart: ten seconds, far past the one-second grace.
    let req = post_req(
        &gw.url("/v1/chat/completions"),
        Some(&key),
        &body,
        &[("x-mock-chunks", "100"), ("x-mock-chunk-delay-ms", "100")],
    );
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.into_body();
    assert!(stream.frame().await.unwrap().unwrap().is_data());
    gw.signal("-TERM");
    // The client keeps reading until keygate cuts the stream.
    let cut = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = stream.frame().await {}
    })
    .await;
    assert!(cut.is_ok(), "the stream outlived the grace");
    let (status, logs) = gw.wait().await;
    assert!(status.success(), "{logs}");
    let lines = request_lines(&logs);
    assert_eq!(lines.len(), 1, "{logs}");
    assert!(
        lines[0].contains("outcome=\"shutdown_cut\""),
        "{}",
        lines[0]
    );
    assert!(!lines[0].contains("client_aborted"));
    // What was streamed before the cut is billed and in the ledger.
    let ledger =
        keygate::usage::Ledger::open_read_only(&dir.path().join("data/keygate.db")).unwrap();
    let rows = ledger.daily(Some("app"), "2000-01-01").unwrap();
    assert_eq!(rows.iter().map(|r| r.requests).sum::<u64>(), 1);
    assert!(
        rows.iter().map(|r| r.completion_tokens).sum::<u64>() > 0,
        "{rows:?}"
    );
}

async fn upstream_up(gw: &Binary) -> Option<f64> {
    let text = get(&gw.admin_url("/metrics"), None).await.text();
    sample(&text, "keygate_upstream_up")
}

/// Polls `keygate_upstream_up` until it is `want` (bounded).
async fn until_up_is(gw: &Binary, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if upstream_up(gw).await == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "keygate_upstream_up never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `keygate_upstream_up` follows the upstream without any request: 0 at start while it is
/// down, 1 once it listens, 0 again when it goes away.
#[tokio::test]
async fn upstream_up_is_checked_in_the_background() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = app_config(dir.path(), &format!("http://127.0.0.1:{port}"), "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "idle_timeout = \"3s\"",
        "idle_timeout = \"3s\"\nprobe_interval = \"100ms\"",
    );
    assert!(text.contains("probe_interval"));
    std::fs::write(&path, text).unwrap();
    let gw = Binary::serve(&path, &[("KG_TEST_UPSTREAM_KEY", UPSTREAM_KEY)]).await;
    // Down from the start (no request made), and it stays down.
    for _ in 0..5 {
        assert_eq!(upstream_up(&gw).await, Some(0.0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The upstream comes up: seen without a request.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let accepting = tokio::spawn(async move {
        loop {
            if listener.accept().await.is_err() {
                return;
            }
        }
    });
    until_up_is(&gw, 1.0).await;
    // And goes away again.
    accepting.abort();
    let _ = accepting.await;
    until_up_is(&gw, 0.0).await;
}

/// Without the upstream key no request can succeed: the upstream is reported down although it
/// answers, and /readyz fails.
#[tokio::test]
async fn a_missing_upstream_key_is_reported_as_down() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = app_config(dir.path(), &mock.url(), "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "idle_timeout = \"3s\"",
        "idle_timeout = \"3s\"\nprobe_interval = \"100ms\"",
    );
    assert!(text.contains("probe_interval"));
    std::fs::write(&path, text).unwrap();
    let gw = Binary::serve(&path, &[]).await;
    // The gauge starts at 0: it must stay there through a second of probes every 100 ms of
    // an upstream that answers (`upstream_up_is_checked_in_the_background` shows the same
    // probes turn it to 1 when the key is there).
    for _ in 0..10 {
        assert_eq!(upstream_up(&gw).await, Some(0.0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = get(&gw.admin_url("/metrics"), None).await.text();
    assert_eq!(sample(&text, "keygate_upstream_key_configured"), Some(0.0));
    let ready = get(&gw.admin_url("/readyz"), None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["checks"]["upstream"]["status"], "fail");
}
