#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark setup fails loudly

//! Micro-benchmark for the request log line, written once per request.
//!
//! Decision informed: whether keygate's own formats (`logging::text` and `logging::json`, the
//! same bytes as tracing-subscriber's default and JSON formats) are worth keeping over those,
//! which profiles showed at about 6% of a plain request's CPU.

use std::hint::black_box;
use std::io;

use criterion::{Criterion, criterion_group, criterion_main};
use tracing::Level;

/// Where the lines go: counted, not kept, so the write itself costs next to nothing.
#[derive(Clone, Copy)]
struct Sink;

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(black_box(buf).len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The request line as `pipeline::settle` logs it.
fn request_line() {
    tracing::info!(
        target: "keygate::request",
        request_id = "req_ad7a7ed43c659c707d89d2f1ca550a91",
        key = "bench_limited",
        model = "deepseek-chat",
        endpoint = "/chat/completions",
        method = "POST",
        path = "/v1/chat/completions",
        client_ip = %std::net::Ipv4Addr::LOCALHOST,
        stream = true,
        status = 200_u64,
        outcome = "completed",
        reason = "",
        latency_us = 1627_u64,
        upstream_us = 1623_u64,
        ttfb_us = 1568_u64,
        prompt_tokens = 8_u64,
        cached_prompt_tokens = 0_u64,
        completion_tokens = 20_u64,
        cost_micros = 11_u64,
        estimated = false,
        "request"
    );
}

fn log_line(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_log_line");
    let ours = tracing_subscriber::fmt()
        .with_max_level(Level::INFO)
        .with_ansi(false)
        .with_writer(|| Sink)
        .event_format(keygate::logging::text::Text::default())
        .finish();
    tracing::subscriber::with_default(ours, || {
        g.bench_function("keygate_text", |b| b.iter(request_line));
    });
    let default = tracing_subscriber::fmt()
        .with_max_level(Level::INFO)
        .with_ansi(false)
        .with_writer(|| Sink)
        .finish();
    tracing::subscriber::with_default(default, || {
        g.bench_function("tracing_subscriber_default", |b| b.iter(request_line));
    });
    // `--log-format json`, as `cli::init_tracing` sets it up, then tracing-subscriber's own.
    let ours = tracing_subscriber::fmt()
        .with_max_level(Level::INFO)
        .with_ansi(false)
        .with_writer(|| Sink)
        .json()
        .flatten_event(true)
        .event_format(keygate::logging::json::Json::default())
        .finish();
    tracing::subscriber::with_default(ours, || {
        g.bench_function("keygate_json", |b| b.iter(request_line));
    });
    let json = tracing_subscriber::fmt()
        .with_max_level(Level::INFO)
        .with_ansi(false)
        .with_writer(|| Sink)
        .json()
        .flatten_event(true)
        .finish();
    tracing::subscriber::with_default(json, || {
        g.bench_function("tracing_subscriber_json", |b| b.iter(request_line));
    });
    g.finish();
}

criterion_group!(benches, log_line);
criterion_main!(benches);
