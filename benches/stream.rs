#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark setup fails loudly

//! Micro-benchmarks for the per-byte work on a streamed answer and the body edit before it.
//!
//! Decision informed: whether reading usage from an event stream, taking the usage keygate
//! asked for back out of it, and splicing `max_tokens` and `stream_options` into a request
//! body cost little next to the socket I/O of the same request (`benches/load.sh` measures
//! that), and whether splitting the same stream at event boundaries instead of into one read
//! changes the cost (a stream arrives either way).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keygate::pipeline::request_json::{self, CapField};
use keygate::upstream::usage::UsageScanner;
use keygate::upstream::usage_strip::UsageStripper;

/// A short real answer: the role event, 20 content events, the finish event and the
/// usage-only event, each carrying `"usage":null` as an upstream does when usage was asked
/// for, then `[DONE]`.
fn stream() -> Vec<Vec<u8>> {
    let event = |choices: &str, usage: &str| {
        format!(
            "data: {{\"id\":\"cmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\
             \"model\":\"deepseek-chat\",\"choices\":{choices},\"usage\":{usage}}}\n\n"
        )
        .into_bytes()
    };
    let mut events = vec![event(
        r#"[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]"#,
        "null",
    )];
    for step in 0..20 {
        events.push(event(
            &format!(r#"[{{"index":0,"delta":{{"content":"w{step} "}},"finish_reason":null}}]"#),
            "null",
        ));
    }
    events.push(event(
        r#"[{"index":0,"delta":{},"finish_reason":"stop"}]"#,
        "null",
    ));
    events.push(event(
        "[]",
        r#"{"prompt_tokens":12,"completion_tokens":20,"total_tokens":32,"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12}"#,
    ));
    events.push(b"data: [DONE]\n\n".to_vec());
    events
}

fn sse(c: &mut Criterion) {
    let events = stream();
    let whole: Vec<u8> = events.concat();
    let mut g = c.benchmark_group("stream_20_chunks");
    g.throughput(Throughput::Bytes(whole.len() as u64));
    g.bench_function("scan_usage_one_read", |b| {
        b.iter(|| {
            let mut scanner = UsageScanner::for_content_type(Some(b"text/event-stream"));
            scanner.feed(black_box(&whole));
            scanner.finish().unwrap()
        })
    });
    g.bench_function("scan_usage_per_event", |b| {
        b.iter(|| {
            let mut scanner = UsageScanner::for_content_type(Some(b"text/event-stream"));
            for e in &events {
                scanner.feed(black_box(e));
            }
            scanner.finish().unwrap()
        })
    });
    g.bench_function("strip_and_scan_one_read", |b| {
        b.iter(|| strip_and_scan(&[black_box(&whole)]))
    });
    // Each event is its own frame; what one poll gathers goes out as one write.
    g.bench_function("strip_and_scan_per_event", |b| {
        b.iter(|| strip_and_scan(black_box(&events)))
    });
    g.finish();
}

/// The stream in these frames through the stripper and the scanner in one pass: the bytes
/// passed on and the usage read.
fn strip_and_scan(frames: &[impl AsRef<[u8]>]) -> (usize, keygate::upstream::Usage) {
    let mut scanner = UsageScanner::for_content_type(Some(b"text/event-stream"));
    let mut stripper = UsageStripper::default();
    let mut scan = |line: &[u8]| scanner.line(line);
    let mut out = bytes::BytesMut::new();
    for frame in frames {
        stripper.process(frame.as_ref(), &mut scan, &mut out);
    }
    stripper.finish(&mut scan, &mut out);
    (out.len(), scanner.finish().unwrap())
}

fn splice(c: &mut Criterion) {
    let body = br#"{"model":"deepseek-chat","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about gateways."}],"stream":true,"temperature":0.7}"#;
    let mut g = c.benchmark_group("request_body");
    g.bench_function("parse_and_splice_cap_and_include_usage", |b| {
        b.iter(|| {
            let fields = request_json::parse(black_box(body), 128).unwrap();
            request_json::rewrite(body, &fields, Some((CapField::MaxTokens, 4096)), true)
                .unwrap()
                .unwrap()
                .len()
        })
    });
    g.finish();
}

criterion_group!(benches, sse, splice);
criterion_main!(benches);
