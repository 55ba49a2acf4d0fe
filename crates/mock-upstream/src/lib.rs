//! A mock OpenAI-compatible upstream for keygate's tests and load benchmark.
//!
//! It answers `/chat/completions` (JSON, or SSE when `"stream": true`, with a final usage chunk
//! when `stream_options.include_usage` is set, as OpenAI and DeepSeek do), `/embeddings`,
//! `/models` and `/models/{id}`, with or without a `/v1` prefix. It records every request it
//! receives (including `Authorization`) and obeys per-request control headers, which a gateway
//! forwards like any other header:
//!
//! - `x-mock-status: N`: answer with status N and an error body containing [`UPSTREAM_SECRET_TEXT`].
//! - `x-mock-delay-ms: N`: wait before sending the response head.
//! - `x-mock-chunks: N`: number of content pieces (default 3); each is one completion token.
//! - `x-mock-chunk-delay-ms: N`: wait between streamed pieces.
//! - `x-mock-cut-after: N`: reset the stream after N pieces.
//! - `x-mock-stall-after: N`: stop sending (but keep the connection) after N pieces.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Text placed in every mock error body, so tests can prove a gateway never relays it.
pub const UPSTREAM_SECRET_TEXT: &str = "upstream-internal-detail-7f3a";

/// Models the mock lists on `GET /models`.
pub const MODELS: &[&str] = &[
    "deepseek-chat",
    "deepseek-reasoner",
    "deepseek-coder",
    "mock-embedding",
    "unlisted-model",
];

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    /// Streams whose reader went away before the stream ended.
    cancelled: AtomicU64,
}

/// A running mock; stops when dropped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    /// Starts on `127.0.0.1`, on a free port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let task = tokio::spawn(serve(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// How many streams were abandoned by their reader before they ended.
    pub fn cancelled_streams(&self) -> u64 {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// Serves until the process ends (for the standalone binary).
    pub async fn wait(self) {
        let _ = (&mut { self }.task).await;
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The mock's response body: whole, or fed by a task through a channel.
pub enum MockBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }
}

fn header_num(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

fn json_response(status: StatusCode, value: &Value) -> Response<MockBody> {
    let mut r = Response::new(MockBody::Full(Some(Bytes::from(value.to_string()))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    if let Ok(mut log) = state.requests.lock() {
        log.push(Recorded {
            method: parts.method.to_string(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    let h = &parts.headers;
    if let Some(ms) = header_num(h, "x-mock-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(status) =
        header_num(h, "x-mock-status").and_then(|s| StatusCode::from_u16(s as u16).ok())
    {
        let err = json!({"error": {"message": format!("mock failure: {UPSTREAM_SECRET_TEXT}"), "type": "mock", "code": "mock"}});
        let mut r = json_response(status, &err);
        if status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("7"));
        }
        return Ok(r);
    }
    let path = path.strip_prefix("/v1").unwrap_or(&path);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let response = match (parts.method.as_str(), path) {
        ("POST", "/chat/completions") => chat(&state, h, &request),
        ("POST", "/embeddings") => embeddings(&request),
        ("GET", "/models") => {
            let data: Vec<Value> = MODELS
                .iter()
                .map(|m| json!({"id": m, "object": "model", "owned_by": "mock"}))
                .collect();
            json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
        }
        ("GET", p) if p.starts_with("/models/") => json_response(
            StatusCode::OK,
            &json!({"id": &p["/models/".len()..], "object": "model", "owned_by": "mock"}),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": {"message": "no such mock route", "type": "invalid_request_error", "code": "unknown_url"}}),
        ),
    };
    Ok(response)
}

/// Prompt tokens: one per four characters of message content, plus one per message.
fn prompt_tokens(request: &Value) -> u64 {
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return 1;
    };
    messages
        .iter()
        .map(|m| {
            m.get("content")
                .and_then(Value::as_str)
                .map_or(0, |c| c.len() as u64)
                .div_ceil(4)
                + 1
        })
        .sum()
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_cache_hit_tokens": 0,
        "prompt_cache_miss_tokens": prompt,
    })
}

fn chat(state: &Arc<State>, h: &HeaderMap, request: &Value) -> Response<MockBody> {
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    let pieces = header_num(h, "x-mock-chunks").unwrap_or(3);
    let prompt = prompt_tokens(request);
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        let content: String = (0..pieces).map(|i| format!("w{i} ")).collect();
        return json_response(
            StatusCode::OK,
            &json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": usage(prompt, pieces),
            }),
        );
    }
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let delay = Duration::from_millis(header_num(h, "x-mock-chunk-delay-ms").unwrap_or(0));
    let cut_after = header_num(h, "x-mock-cut-after");
    let stall_after = header_num(h, "x-mock-stall-after");
    let (tx, rx) = mpsc::channel(4);
    let state = state.clone();
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            let mut c = json!({
                "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            Bytes::from(format!("data: {c}\n\n"))
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        events
            .extend((0..pieces).map(|i| chunk(json!({"content": format!("w{i} ")}), Value::Null)));
        events.push(chunk(json!({}), json!("stop")));
        if include_usage {
            let u = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [], "usage": usage(prompt, pieces)});
            events.push(Bytes::from(format!("data: {u}\n\n")));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        for (i, event) in events.into_iter().enumerate() {
            let sent_pieces = i as u64; // the role chunk is index 0, so i pieces have been sent
            if cut_after.is_some_and(|n| sent_pieces > n) {
                let _ = tx
                    .send(Err(std::io::Error::other("mock cut the stream")))
                    .await;
                return;
            }
            if stall_after.is_some_and(|n| sent_pieces > n) {
                tx.closed().await;
                state.cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(event)).await.is_err() {
                state.cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    });
    let mut r = Response::new(MockBody::Channel(rx));
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

fn embeddings(request: &Value) -> Response<MockBody> {
    let inputs: Vec<String> = match request.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().unwrap_or("").to_owned())
            .collect(),
        _ => vec![],
    };
    let tokens: u64 = inputs
        .iter()
        .map(|s| (s.len() as u64).div_ceil(4).max(1))
        .sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, _)| json!({"object": "embedding", "index": i, "embedding": [0.25, -0.5, 0.125, 1.0]}))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": request.get("model").cloned().unwrap_or(Value::Null),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }),
    )
}
