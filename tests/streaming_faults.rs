//! Streams that go wrong: the upstream resets or stalls mid-stream, the client walks away.
//! The client must see an error (never a silently truncated "complete" answer), the upstream
//! request must be cancelled when the client leaves, and the gateway must keep serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;

fn stream_req(s: &Setup, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let body = json!({"model": "deepseek-chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    post_req(
        &s.gw.url("/v1/chat/completions"),
        Some(s.key("app")),
        &body,
        headers,
    )
}

/// Reads a streamed answer to its end; `Err` if the stream broke, with what arrived before.
async fn read_stream(req: Request<Full<Bytes>>) -> (u16, String, Result<(), String>) {
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(15), body.frame())
            .await
            .expect("stream hung")
        {
            None => return (status, text, Ok(())),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    text.push_str(&String::from_utf8_lossy(&d));
                }
            }
            Some(Err(e)) => return (status, text, Err(e.to_string())),
        }
    }
}

#[tokio::test]
async fn an_upstream_reset_mid_stream_ends_the_clients_stream_with_an_error() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let (status, text, end) = read_stream(stream_req(
        &s,
        &[("x-mock-chunks", "10"), ("x-mock-cut-after", "3")],
    ))
    .await;
    assert_eq!(status, 200);
    assert!(
        text.contains("\"w2 \""),
        "the chunks before the cut arrive: {text}"
    );
    assert!(!text.contains("[DONE]"));
    assert!(
        end.is_err(),
        "the client must see the stream break, not a clean end"
    );
    // The gateway is still up.
    let (_, _, end) = read_stream(stream_req(&s, &[])).await;
    assert!(end.is_ok());
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_stream_is_cut_after_the_idle_timeout() {
    // idle_timeout is 3 s in the test config.
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let (status, text, end) = read_stream(stream_req(
        &s,
        &[("x-mock-chunks", "10"), ("x-mock-stall-after", "2")],
    ))
    .await;
    assert_eq!(status, 200);
    assert!(text.contains("\"w1 \""));
    assert!(end.is_err());
    // Closing the client side releases the upstream stream too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.mock.cancelled_streams() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream stream never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_slow_stream_that_never_pauses_past_the_idle_timeout_is_not_cut() {
    // idle_timeout is 3 s: each pause is 0.7 s, the whole answer takes longer than 3 s. The
    // idle clock restarts with every event, not once per answer.
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let started = std::time::Instant::now();
    let (status, text, end) = read_stream(stream_req(
        &s,
        &[("x-mock-chunks", "4"), ("x-mock-chunk-delay-ms", "700")],
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(end, Ok(()), "{text}");
    assert!(started.elapsed() > Duration::from_secs(3));
    for n in 0..4 {
        assert!(text.contains(&format!("\"w{n} \"")), "{text}");
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_request() {
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let resp = client()
        .request(stream_req(
            &s,
            &[("x-mock-chunks", "1000"), ("x-mock-chunk-delay-ms", "20")],
        ))
        .await
        .unwrap();
    let mut body = resp.into_body();
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
    }
    drop(body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.mock.cancelled_streams() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upstream was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Collects log output in memory.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_request_is_settled_once_with_tokens_and_no_secrets() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .init();
    let s = Setup::new(&[("app", "scopes = [\"chat\"]")]).await;
    let body = json!({"model": "deepseek-chat", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hello there"}]});
    let req = post_req(
        &s.gw.url("/v1/chat/completions"),
        Some(s.key("app")),
        &body,
        &[("x-mock-chunks", "5")],
    );
    let (_, _, end) = read_stream(req).await;
    assert!(end.is_ok());
    let a = chat_request(&s.gw.url("/v1/chat/completions"), s.key("app")).await;
    let refused = post_json(
        &s.gw.url("/v1/chat/completions"),
        None,
        chat("deepseek-chat"),
    )
    .await;
    assert_eq!((a.status.as_u16(), refused.status.as_u16()), (200, 401));

    // Settlement happens as the body ends; give the server task a moment to log it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "keygate::request")
            .collect();
        if lines.len() >= 3 || tokio::time::Instant::now() > deadline {
            assert!(!text.contains(&s.key("app").secret), "client key in logs");
            assert!(!text.contains(UPSTREAM_KEY), "upstream key in logs");
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    let streamed = lines.iter().find(|l| l["stream"] == true).unwrap();
    assert_eq!(streamed["key"], "app");
    assert_eq!(streamed["model"], "deepseek-chat");
    assert_eq!(streamed["endpoint"], "/chat/completions");
    assert_eq!(streamed["outcome"], "completed");
    assert_eq!(streamed["completion_tokens"], 5);
    assert_eq!(streamed["prompt_tokens"], 4);
    let plain = lines
        .iter()
        .find(|l| l["stream"] == false && l["status"] == 200)
        .unwrap();
    assert_eq!(plain["completion_tokens"], 3);
    assert_eq!(plain["outcome"], "completed");
    let refusal = lines.iter().find(|l| l["status"] == 401).unwrap();
    assert_eq!(
        (refusal["outcome"].as_str(), refusal["reason"].as_str()),
        (Some("refused"), Some("missing_key"))
    );
    let ids: std::collections::HashSet<_> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
}
