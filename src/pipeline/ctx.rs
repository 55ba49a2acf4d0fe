//! What one request carries from phase to phase, and what settle reports about it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use rand::RngCore;

use crate::config::Model;

/// What the request may use, decided from its body before it is forwarded: what the limit
/// phase reserves, and what an answer that never reports its usage is billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    /// The most prompt tokens the body can hold: one per byte (a byte-level tokenizer never
    /// makes more tokens than bytes). The cost reservation, and what an answer without usage
    /// is billed, use it, so no prompt can cost more than was reserved.
    pub prompt_tokens: u64,
    /// The likely prompt tokens (one per 3 bytes, plus one per token id), reserved against
    /// the tokens-per-minute limit, where a short estimate only means a little debt.
    pub rate_prompt_tokens: u64,
    /// The completion cap times the outputs asked for (`n`, `best_of`, prompts).
    pub completion_tokens: u64,
    /// The client set the cap itself (otherwise keygate wrote its own into the body).
    pub client_cap: bool,
    /// Charged per request (per image), from the model's `per_request_usd`.
    pub per_request_micros: u64,
}

pub struct RequestCtx {
    /// `req_` + 32 hex digits; sent upstream and back to the client.
    pub id: HeaderValue,
    pub started: Instant,
    /// The socket peer until admit resolves the client behind trusted proxies.
    pub client_ip: IpAddr,
    pub key_id: Option<Arc<str>>,
    /// The configured model (never a client string).
    pub model: Option<Arc<Model>>,
    pub reserved: Reservation,
    /// The route's answers report token usage (chat, completions, embeddings); no other
    /// answer is ever read for usage.
    pub reports_usage: bool,
    /// The key has a monthly budget: an answer its client leaves is read to its end (streams
    /// too), and one that ends without usage is billed its whole reservation.
    pub hard_budget: bool,
    /// UTC start: the day and month the request counts in.
    pub started_utc: SystemTime,
    /// keygate added `include_usage` to a stream, so it must strip the usage back out.
    pub strip_usage: bool,
    /// Route template, or `"unmatched"`.
    pub endpoint: &'static str,
    /// What the client asked for, for the log line (the path only: a query can carry
    /// anything, a secret included).
    pub method: http::Method,
    pub uri: http::Uri,
    pub stream: bool,
    pub upstream_started: Option<Instant>,
    /// The request was (or may have been) delivered to the upstream, which may charge for it.
    pub reached_upstream: bool,
    /// The status the upstream answered with.
    pub upstream_status: Option<u16>,
    /// Time from sending upstream to its response head.
    pub upstream_first_byte: Option<Duration>,
    /// Reading the request body stopped before its end (too large, too slow, too many bodies
    /// buffered): the connection cannot carry another request.
    pub body_unfinished: bool,
}

impl RequestCtx {
    pub fn new(started_utc: SystemTime, peer: IpAddr) -> Self {
        Self {
            id: new_request_id(),
            started: Instant::now(),
            started_utc,
            client_ip: peer.to_canonical(),
            key_id: None,
            model: None,
            reserved: Reservation::default(),
            reports_usage: false,
            hard_budget: false,
            endpoint: "unmatched",
            method: http::Method::GET,
            uri: http::Uri::from_static("/"),
            stream: false,
            strip_usage: false,
            upstream_started: None,
            reached_upstream: false,
            upstream_status: None,
            upstream_first_byte: None,
            body_unfinished: false,
        }
    }
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    let mut text = [0u8; 36];
    text[..4].copy_from_slice(b"req_");
    for (i, b) in raw.iter().enumerate() {
        text[4 + 2 * i] = HEX[usize::from(b >> 4)];
        text[5 + 2 * i] = HEX[usize::from(b & 0xf)];
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}
