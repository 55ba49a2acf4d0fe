//! A mock OpenAI-compatible upstream for keygate's tests and load benchmark, which behaves
//! like a provider where money is concerned: it honours `n`, `best_of` and prompt arrays,
//! stops at `max_tokens` (or at its own default length when no cap is given, as DeepSeek's
//! 32K for deepseek-reasoner), streams `reasoning_content` and tool calls, and records what it
//! generated (and so would charge) whether or not anyone reads the answer.
//!
//! It answers `/chat/completions` and `/completions` (JSON, or SSE when `"stream": true`, with
//! a final usage chunk when `stream_options.include_usage` is set, as OpenAI and DeepSeek do),
//! `/embeddings`, `/models`, `/models/{id}`, `/images/generations`, `/audio/speech`,
//! `/fine_tuning/jobs` and `/files/...`, with or without a `/v1` prefix. It records every
//! request it receives (including `Authorization`) and obeys per-request control headers,
//! which a gateway forwards like any other header:
//!
//! - `x-mock-status: N`: answer with status N and an error body containing [`UPSTREAM_SECRET_TEXT`].
//! - `x-mock-delay-ms: N`: wait before sending the response head.
//! - `x-mock-body-delay-ms: N`: send a non-streamed answer's head at once and its body N ms
//!   later (as DeepSeek does for slow non-streamed answers).
//! - `x-mock-chunks: N`: the answer's natural length in completion tokens per choice (default
//!   3); it stops earlier at `max_tokens` (like DeepSeek, it ignores `max_completion_tokens`)
//!   or at its default length.
//! - `x-mock-default-max-tokens: N`: the length used when the request sets no cap (default
//!   32768 for deepseek-reasoner, 4096 otherwise).
//! - `x-mock-reasoning: N`: N `reasoning_content` tokens per choice before the content.
//! - `x-mock-tool-calls: 1`: the content is streamed as tool-call arguments.
//! - `x-mock-usage: JSON`: report this `usage` object instead of the real one.
//! - `x-mock-chunk-delay-ms: N`: wait between streamed pieces.
//! - `x-mock-cut-after: N`: reset the stream after N pieces.
//! - `x-mock-stall-after: N`: stop sending (but keep the connection) after N pieces.
//! - `x-mock-split-usage-ms: N`: send the usage event in two writes, N ms apart (its line
//!   then arrives cut in the middle).

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

/// What the mock generated for one request: what a provider would charge for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generated {
    /// The route, without `/v1`.
    pub path: String,
    pub model: String,
    pub prompt_tokens: u64,
    /// Completion tokens generated (for a stream: sent before it ended or was cancelled).
    pub completion_tokens: u64,
    /// Priced per request: images made, speeches, jobs.
    pub units: u64,
}

#[derive(Default)]
struct State {
    /// Whether requests and generations are kept for [`MockUpstream::requests`] and
    /// [`MockUpstream::generated`]: on for tests, off for a long-running benchmark mock, whose
    /// memory would otherwise grow with every request.
    record: bool,
    requests: Mutex<Vec<Recorded>>,
    generated: Mutex<Vec<Generated>>,
    /// Streams whose reader went away before the stream ended.
    cancelled: AtomicU64,
}

impl State {
    /// Records a generation and returns its index, for a stream to add to as it goes.
    fn generate(&self, g: Generated) -> usize {
        if !self.record {
            return usize::MAX;
        }
        let mut all = self.generated.lock().unwrap_or_else(|e| e.into_inner());
        all.push(g);
        all.len() - 1
    }

    fn add_completion(&self, index: usize, tokens: u64) {
        let mut all = self.generated.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = all.get_mut(index) {
            g.completion_tokens += tokens;
        }
    }
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

    /// Starts on `addr`, keeping every request and generation for the test to inspect.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        Self::listen(addr, true).await
    }

    /// Starts on `addr` without keeping requests: for a mock that serves millions of them
    /// (the load benchmark), where [`Self::requests`] and [`Self::generated`] stay empty.
    pub async fn start_unrecorded(addr: SocketAddr) -> std::io::Result<Self> {
        Self::listen(addr, false).await
    }

    async fn listen(addr: SocketAddr, record: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            record,
            ..State::default()
        });
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

    /// Everything generated so far, one entry per answered request.
    pub fn generated(&self) -> Vec<Generated> {
        self.state
            .generated
            .lock()
            .map(|g| g.clone())
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
    if state.record
        && let Ok(mut log) = state.requests.lock()
    {
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
        ("POST", "/chat/completions") => generate(&state, h, &request, Route::Chat),
        ("POST", "/completions") => generate(&state, h, &request, Route::Completions),
        ("POST", "/embeddings") => embeddings(&state, &request),
        ("POST", "/images/generations") => {
            let n = request.get("n").and_then(Value::as_u64).unwrap_or(1);
            state.generate(Generated {
                path: path.to_owned(),
                model: model_of(&request),
                units: n,
                ..Generated::default()
            });
            let data: Vec<Value> = (0..n)
                .map(|i| json!({"url": format!("https://mock.invalid/image/{i}.png")}))
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"created": 1_700_000_000, "data": data}),
            )
        }
        ("POST", "/audio/speech") => {
            state.generate(Generated {
                path: path.to_owned(),
                model: model_of(&request),
                units: 1,
                ..Generated::default()
            });
            let mut r = Response::new(MockBody::Full(Some(Bytes::from_static(b"ID3mock-audio"))));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("audio/mpeg"));
            r
        }
        ("POST", "/fine_tuning/jobs") => {
            state.generate(Generated {
                path: path.to_owned(),
                model: model_of(&request),
                units: 1,
                ..Generated::default()
            });
            json_response(
                StatusCode::OK,
                &json!({"id": "ftjob-mock", "object": "fine_tuning.job", "model": model_of(&request), "status": "queued"}),
            )
        }
        ("GET", "/fine_tuning/jobs") => json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [], "has_more": false}),
        ),
        ("GET", p) if p.starts_with("/files/") && p.ends_with("/content") => {
            // A file's content is whatever was uploaded: here, text that looks like usage.
            let content = h
                .get("x-mock-file-content")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":18446744073709551615}}"#)
                .to_owned();
            let mut r = Response::new(MockBody::Full(Some(Bytes::from(content))));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            r
        }
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat,
    Completions,
}

fn model_of(request: &Value) -> String {
    request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned()
}

/// Tokens of one text: one per four characters, at least one.
fn text_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4).max(1)
}

/// Prompt tokens of a chat request: each message's text plus one.
fn chat_prompt_tokens(request: &Value) -> u64 {
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

/// The prompts of a `prompt` or `input` member, as token counts: a string is one prompt, an
/// array of strings or of token-id arrays one per element, a flat token-id array one.
fn prompts(value: Option<&Value>) -> Vec<u64> {
    match value {
        Some(Value::String(s)) => vec![text_tokens(s)],
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            if items.is_empty() {
                vec![]
            } else {
                vec![items.len() as u64]
            }
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => text_tokens(s),
                Value::Array(ids) => ids.len() as u64,
                _ => 1,
            })
            .collect(),
        _ => vec![],
    }
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

/// One choice's generation: reasoning first, then content, stopped at the cap.
#[derive(Clone, Copy)]
struct Plan {
    reasoning: u64,
    content: u64,
}

impl Plan {
    fn total(self) -> u64 {
        self.reasoning + self.content
    }
}

/// Chat and legacy completions: `n` (or `best_of`) generations per prompt, each stopped at
/// `max_tokens`, or at the mock's own default length when the request sets no cap.
fn generate(
    state: &Arc<State>,
    h: &HeaderMap,
    request: &Value,
    route: Route,
) -> Response<MockBody> {
    let model = model_of(request);
    let natural = header_num(h, "x-mock-chunks").unwrap_or(3);
    let default_cap =
        header_num(h, "x-mock-default-max-tokens").unwrap_or(if model == "deepseek-reasoner" {
            32_768
        } else {
            4_096
        });
    // Like DeepSeek, the mock reads its cap from `max_tokens` only.
    let cap = request
        .get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(default_cap);
    let reasoning_wanted = header_num(h, "x-mock-reasoning").unwrap_or(0);
    let total = (reasoning_wanted + natural).min(cap);
    let reasoning = reasoning_wanted.min(total);
    let plan = Plan {
        reasoning,
        content: total - reasoning,
    };
    let n = request.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
    let best_of = request
        .get("best_of")
        .and_then(Value::as_u64)
        .unwrap_or(n)
        .max(n);
    let (prompt, prompt_count) = match route {
        Route::Chat => (chat_prompt_tokens(request), 1),
        Route::Completions => {
            let p = prompts(request.get("prompt"));
            (p.iter().sum::<u64>().max(1), (p.len() as u64).max(1))
        }
    };
    let returned = n * prompt_count;
    let generations = best_of * prompt_count;
    let tool_calls = h.get("x-mock-tool-calls").is_some();
    let usage_override: Option<Value> = h
        .get("x-mock-usage")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| serde_json::from_str(v).ok());
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    let path = match route {
        Route::Chat => "/chat/completions",
        Route::Completions => "/completions",
    };
    if !stream {
        let completion = generations * plan.total();
        state.generate(Generated {
            path: path.to_owned(),
            model: model.clone(),
            prompt_tokens: prompt,
            completion_tokens: completion,
            units: 0,
        });
        let words =
            |k: u64, prefix: &str| -> String { (0..k).map(|i| format!("{prefix}{i} ")).collect() };
        let choices: Vec<Value> = (0..returned)
            .map(|i| match route {
                Route::Chat => {
                    let mut message =
                        json!({"role": "assistant", "content": words(plan.content, "w")});
                    if plan.reasoning > 0 {
                        message["reasoning_content"] = json!(words(plan.reasoning, "r"));
                    }
                    json!({"index": i, "message": message, "finish_reason": "stop"})
                }
                Route::Completions => {
                    json!({"index": i, "text": words(plan.content, "w"), "finish_reason": "stop"})
                }
            })
            .collect();
        let object = match route {
            Route::Chat => "chat.completion",
            Route::Completions => "text_completion",
        };
        let body = json!({
            "id": "cmpl-mock",
            "object": object,
            "created": 1_700_000_000,
            "model": model,
            "choices": choices,
            "usage": usage_override.unwrap_or_else(|| usage(prompt, completion)),
        });
        let mut r = json_response(StatusCode::OK, &body);
        if let Some(ms) = header_num(h, "x-mock-body-delay-ms") {
            let bytes = Bytes::from(body.to_string());
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let _ = tx.send(Ok(bytes)).await;
            });
            *r.body_mut() = MockBody::Channel(rx);
        }
        return r;
    }
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let delay = Duration::from_millis(header_num(h, "x-mock-chunk-delay-ms").unwrap_or(0));
    let cut_after = header_num(h, "x-mock-cut-after");
    let stall_after = header_num(h, "x-mock-stall-after");
    let split_usage = header_num(h, "x-mock-split-usage-ms").map(Duration::from_millis);
    let index = state.generate(Generated {
        path: path.to_owned(),
        model: model.clone(),
        prompt_tokens: prompt,
        completion_tokens: 0,
        units: 0,
    });
    let (tx, rx) = mpsc::channel(4);
    let state = state.clone();
    tokio::spawn(async move {
        let object = match route {
            Route::Chat => "chat.completion.chunk",
            Route::Completions => "text_completion",
        };
        let event = |choice: Value| {
            let mut c = json!({
                "id": "cmpl-mock", "object": object, "created": 1_700_000_000, "model": model,
                "choices": [choice],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            Bytes::from(format!("data: {c}\n\n"))
        };
        let delta = |i: u64, step: u64| -> Value {
            match route {
                Route::Completions => {
                    json!({"index": i, "text": format!("w{step} "), "finish_reason": null})
                }
                Route::Chat if step < plan.reasoning => {
                    json!({"index": i, "delta": {"reasoning_content": format!("r{step} "), "content": null}, "finish_reason": null})
                }
                Route::Chat if tool_calls => {
                    json!({"index": i, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": format!("a{step}")}}]}, "finish_reason": null})
                }
                Route::Chat => {
                    json!({"index": i, "delta": {"content": format!("w{step} ")}, "finish_reason": null})
                }
            }
        };
        // (event, completion tokens it carries)
        let mut events: Vec<(Bytes, u64)> = Vec::new();
        if route == Route::Chat {
            for i in 0..returned {
                events.push((event(json!({"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null})), 0));
            }
        }
        for step in 0..plan.total() {
            for i in 0..returned {
                events.push((event(delta(i, step)), 1));
            }
        }
        for i in 0..returned {
            let finish = match route {
                Route::Chat => json!({"index": i, "delta": {}, "finish_reason": "stop"}),
                Route::Completions => json!({"index": i, "text": "", "finish_reason": "stop"}),
            };
            events.push((event(finish), 0));
        }
        // Generations beyond the `n` returned (best_of) are charged but not streamed.
        let unseen = (generations - returned) * plan.total();
        let mut usage_event = None;
        if include_usage {
            usage_event = Some(events.len());
            let u = usage_override
                .clone()
                .unwrap_or_else(|| usage(prompt, generations * plan.total()));
            let u = json!({"id": "cmpl-mock", "object": object, "created": 1_700_000_000, "model": model, "choices": [], "usage": u});
            events.push((Bytes::from(format!("data: {u}\n\n")), 0));
        }
        events.push((Bytes::from_static(b"data: [DONE]\n\n"), 0));
        state.add_completion(index, unseen);
        let mut pieces = 0u64;
        for (i, (event, tokens)) in events.into_iter().enumerate() {
            if cut_after.is_some_and(|n| pieces >= n && tokens > 0) {
                let _ = tx
                    .send(Err(std::io::Error::other("mock cut the stream")))
                    .await;
                return;
            }
            if stall_after.is_some_and(|n| pieces >= n && tokens > 0) {
                tx.closed().await;
                state.cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let event = match split_usage.filter(|_| usage_event == Some(i)) {
                Some(pause) => {
                    let half = event.slice(..event.len() / 2);
                    if tx.send(Ok(half)).await.is_err() {
                        state.cancelled.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(pause).await;
                    event.slice(event.len() / 2..)
                }
                None => event,
            };
            if tx.send(Ok(event)).await.is_err() {
                state.cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
            state.add_completion(index, tokens);
            pieces += tokens;
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

fn embeddings(state: &Arc<State>, request: &Value) -> Response<MockBody> {
    let inputs = prompts(request.get("input"));
    let tokens: u64 = inputs.iter().sum();
    state.generate(Generated {
        path: "/embeddings".into(),
        model: model_of(request),
        prompt_tokens: tokens,
        ..Generated::default()
    });
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
