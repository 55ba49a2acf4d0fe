//! What one request carries from phase to phase, and what settle reports about it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use rand::RngCore;

use crate::config::Model;

pub struct RequestCtx {
    /// `req_` + 32 hex digits; sent upstream and back to the client.
    pub id: HeaderValue,
    pub started: Instant,
    /// The socket peer until admit resolves the client behind trusted proxies.
    pub client_ip: IpAddr,
    pub key_id: Option<Arc<str>>,
    /// The configured model (never a client string).
    pub model: Option<Arc<Model>>,
    /// Prompt tokens estimated from the body, billed if the upstream never reports usage.
    pub prompt_estimate: u64,
    /// UTC start: the day and month the request counts in.
    pub started_utc: SystemTime,
    /// keygate added `include_usage` to a stream, so it must strip the usage back out.
    pub strip_usage: bool,
    /// Route template, or `"unmatched"`.
    pub endpoint: &'static str,
    pub stream: bool,
    pub upstream_started: Option<Instant>,
    /// Time from sending upstream to its response head.
    pub upstream_first_byte: Option<Duration>,
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
            prompt_estimate: 0,
            endpoint: "unmatched",
            stream: false,
            strip_usage: false,
            upstream_started: None,
            upstream_first_byte: None,
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
