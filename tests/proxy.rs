//! The happy path: requests a key allows reach the upstream with keygate's credentials, and
//! the upstream's answer reaches the client unchanged, streamed or not.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::json;

const CHAT_KEY: &str = r#"scopes = ["chat", "code", "embeddings"]"#;

#[tokio::test]
async fn chat_completion_is_forwarded_with_the_upstream_key_and_returned_unchanged() {
    let s = Setup::new(&[("app", CHAT_KEY)]).await;
    let key = s.key("app");
    for path in ["/v1/chat/completions", "/chat/completions"] {
        let a = chat_request(&s.gw.url(path), key).await;
        assert_eq!(a.status, 200, "{}", a.text());
        let v = a.json();
        assert_eq!(v["choices"][0]["message"]["content"], "w0 w1 w2 ");
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert!(
            a.headers["x-request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_")
        );
    }
    let seen = s.mock.requests();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert_eq!(r.path_and_query, "/chat/completions");
        assert_eq!(
            r.headers["authorization"],
            format!("Bearer {UPSTREAM_KEY}").as_str()
        );
        assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
        assert_eq!(r.headers["x-forwarded-for"], "127.0.0.1");
        assert!(
            r.headers["x-request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_")
        );
        let body = r.body.clone();
        // The client set no cap, so keygate wrote the one it reserved into the body.
        assert_eq!(
            body,
            with_cap(&chat("deepseek-chat").to_string(), 4096).as_bytes()
        );
        assert!(!String::from_utf8_lossy(&body).contains(&key.secret));
        for (_, v) in r.headers.iter() {
            assert!(
                !v.to_str().unwrap_or("").contains(&key.secret),
                "client key leaked upstream"
            );
        }
    }
}

#[tokio::test]
async fn request_body_is_forwarded_byte_for_byte() {
    let s = Setup::new(&[("app", CHAT_KEY)]).await;
    let raw_body = "{ \"model\" : \"deepseek-chat\",\n  \"messages\": [{\"role\":\"user\",\"content\":\"h\\u00e9\"}], \"temperature\": 0.7000, \"max_tokens\" : 64 }";
    let req = Request::post(s.gw.url("/v1/chat/completions"))
        .header("authorization", s.key("app").bearer())
        .header("content-type", "application/json")
        .header("x-custom-trace", "abc")
        .body(Full::new(Bytes::from(raw_body)))
        .unwrap();
    let a = send(req).await;
    assert_eq!(a.status, 200);
    let seen = &s.mock.requests()[0];
    assert_eq!(seen.body, raw_body.as_bytes());
    assert_eq!(seen.headers["x-custom-trace"], "abc");
    assert_eq!(seen.headers["accept-encoding"], "identity");
}

/// Without a cap, the only change is the cap keygate reserved, spliced in before the closing
/// brace: the client's spacing, escapes and number formats stay as sent.
#[tokio::test]
async fn a_body_without_a_cap_gets_the_reserved_cap_and_nothing_else() {
    let s = Setup::new(&[(
        "app",
        "scopes = [\"chat\"]\nlimits = { default_max_tokens = 300 }",
    )])
    .await;
    let raw_body = "{ \"model\" : \"deepseek-chat\",\n  \"messages\": [{\"role\":\"user\",\"content\":\"h\\u00e9\"}], \"temperature\": 0.7000 }\n";
    let req = Request::post(s.gw.url("/v1/chat/completions"))
        .header("authorization", s.key("app").bearer())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(raw_body)))
        .unwrap();
    assert_eq!(send(req).await.status, 200);
    let seen = &s.mock.requests()[0];
    assert_eq!(
        String::from_utf8_lossy(&seen.body),
        "{ \"model\" : \"deepseek-chat\",\n  \"messages\": [{\"role\":\"user\",\"content\":\"h\\u00e9\"}], \"temperature\": 0.7000 ,\"max_tokens\":300}\n"
    );
}

#[tokio::test]
async fn streaming_chat_arrives_chunk_by_chunk_and_unchanged() {
    let s = Setup::new(&[("app", CHAT_KEY)]).await;
    let body = json!({"model": "deepseek-chat", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]});
    let req = Request::post(s.gw.url("/v1/chat/completions"))
        .header("authorization", s.key("app").bearer())
        .header("content-type", "application/json")
        .header("x-mock-chunks", "4")
        .header("x-mock-chunk-delay-ms", "150")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    // The first frames arrive while the upstream is still producing the rest: not buffered.
    let mut frames = Vec::new();
    let started = std::time::Instant::now();
    let mut first_frame_at = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Ok(data) = frame.into_data() {
            first_frame_at.get_or_insert(started.elapsed());
            frames.push(data);
        }
    }
    let total = started.elapsed();
    assert!(
        frames.len() >= 3,
        "expected several frames, got {}",
        frames.len()
    );
    // Four 150 ms gaps upstream; the first piece must arrive well before the last one.
    assert!(first_frame_at.unwrap() + std::time::Duration::from_millis(300) < total);
    let text: String = frames.iter().map(|f| String::from_utf8_lossy(f)).collect();
    assert!(text.contains("\"content\":\"w0 \""));
    assert!(text.contains("\"usage\":{"));
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn embeddings_are_forwarded() {
    let s = Setup::new(&[("app", CHAT_KEY)]).await;
    let a = post_json(
        &s.gw.url("/v1/embeddings"),
        Some(s.key("app")),
        json!({"model": "mock-embedding", "input": ["a", "b"]}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["data"].as_array().unwrap().len(), 2);
    assert_eq!(s.mock.requests()[0].path_and_query, "/embeddings");
}

#[tokio::test]
async fn model_list_shows_only_the_models_the_key_may_use() {
    let s = Setup::new(&[
        ("all", CHAT_KEY),
        ("coder", r#"scopes = ["code"]"#),
        (
            "one",
            r#"scopes = ["chat"]
models = ["deepseek-reasoner"]"#,
        ),
    ])
    .await;
    let ids = |a: &Answer| -> Vec<String> {
        a.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let a = get(&s.gw.url("/v1/models"), Some(s.key("all"))).await;
    assert_eq!(a.status, 200);
    // "unlisted-model" is offered by the upstream but not configured: never shown.
    assert_eq!(
        ids(&a),
        [
            "deepseek-chat",
            "deepseek-reasoner",
            "deepseek-coder",
            "mock-embedding"
        ]
    );
    assert_eq!(
        ids(&get(&s.gw.url("/models"), Some(s.key("coder"))).await),
        ["deepseek-coder"]
    );
    assert_eq!(
        ids(&get(&s.gw.url("/v1/models"), Some(s.key("one"))).await),
        ["deepseek-reasoner"]
    );

    let a = get(
        &s.gw.url("/v1/models/deepseek-reasoner"),
        Some(s.key("one")),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.json()["id"].as_str()),
        (200, Some("deepseek-reasoner"))
    );
    for hidden in ["deepseek-chat", "unlisted-model"] {
        let a = get(
            &s.gw.url(&format!("/v1/models/{hidden}")),
            Some(s.key("one")),
        )
        .await;
        assert_eq!(
            (a.status.as_u16(), a.code()),
            (404, "model_not_found".into())
        );
    }
}

/// 400, 404 and 422 concern the client's own request and pass through. 402, 429 and 5xx
/// describe keygate's upstream account (its organisation, balance, usage): the client gets
/// keygate's own error instead, and 429 keeps its `retry-after`.
#[tokio::test]
async fn upstream_error_bodies_pass_through_only_when_they_concern_the_client() {
    let s = Setup::new(&[("app", CHAT_KEY)]).await;
    let call = |status: &'static str| {
        let req = Request::post(s.gw.url("/v1/chat/completions"))
            .header("authorization", s.key("app").bearer())
            .header("content-type", "application/json")
            .header("x-mock-status", status)
            .body(Full::new(Bytes::from(chat("deepseek-chat").to_string())))
            .unwrap();
        send(req)
    };
    for status in ["400", "404", "422"] {
        let a = call(status).await;
        assert_eq!(a.status.as_str(), status);
        assert_eq!(a.json()["error"]["code"], "mock", "{status} passes through");
    }
    for (status, expected) in [("402", 502), ("429", 429), ("500", 500), ("503", 503)] {
        let a = call(status).await;
        assert_eq!(a.status.as_u16(), expected, "{status}");
        assert_eq!(a.code(), "upstream_error", "{status}");
        assert!(
            !a.text().contains(UPSTREAM_SECRET_TEXT),
            "{status}: {}",
            a.text()
        );
        if status == "429" {
            assert_eq!(a.headers["retry-after"], "7");
        }
    }
    // None of these answers carried usage, so none of them is billed.
    let rows = s.gw.ledger().daily(Some("app"), "2000-01-01").unwrap();
    assert_eq!(rows.iter().map(|r| r.cost_micros).sum::<u64>(), 0);
    assert_eq!(rows.iter().map(|r| r.requests).sum::<u64>(), 7);
}

#[tokio::test]
async fn upstream_base_path_is_prefixed() {
    let mock = MockUpstream::start().await.unwrap();
    let (key, hash) = TestKey::new("app");
    let cfg = config_text(
        &format!("{}/v1", mock.url()),
        "",
        &key_toml("app", &hash, CHAT_KEY),
    );
    let gw = Gw::start(&cfg).await;
    let a = chat_request(&gw.url("/chat/completions"), &key).await;
    assert_eq!(a.status, 200);
    assert_eq!(mock.requests()[0].path_and_query, "/v1/chat/completions");
}

#[tokio::test]
async fn query_strings_are_forwarded_on_allowed_routes() {
    let s = Setup::new(&[("files", r#"scopes = ["files"]"#)]).await;
    let a = get(
        &s.gw.url("/v1/files?purpose=batch&limit=2"),
        Some(s.key("files")),
    )
    .await;
    // The mock has no /files route: its 404 comes back, proving the request was forwarded.
    assert_eq!(a.status, 404);
    assert_eq!(a.code(), "unknown_url");
    assert_eq!(
        s.mock.requests()[0].path_and_query,
        "/files?purpose=batch&limit=2"
    );
}
