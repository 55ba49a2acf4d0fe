//! What one request carries from phase to phase, and what settle reports about it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use rand::RngCore;

pub struct RequestCtx {
    /// `req_` + 32 hex digits; sent upstream and back to the client.
    pub id: HeaderValue,
    pub started: Instant,
    pub client_ip: Option<IpAddr>,
    pub key_id: Option<Arc<str>>,
    /// The configured model's name (never a client string).
    pub model: Option<Arc<str>>,
    /// Route template, or `"unmatched"`.
    pub endpoint: &'static str,
    pub stream: bool,
    pub upstream_started: Option<Instant>,
    /// Time from sending upstream to its response head.
    pub upstream_first_byte: Option<Duration>,
}

impl RequestCtx {
    pub fn new() -> Self {
        Self {
            id: new_request_id(),
            started: Instant::now(),
            client_ip: None,
            key_id: None,
            model: None,
            endpoint: "unmatched",
            stream: false,
            upstream_started: None,
            upstream_first_byte: None,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
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
