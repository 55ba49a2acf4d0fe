//! Recent security events for `GET /admin/events`: refusals for an unknown or invalid key, IP
//! and referrer denials, rate-limit and budget refusals, `suspicious_pattern` blocks, and admin
//! changes. A bounded ring in memory; every event is also a structured log line
//! (target `keygate::security`).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde_json::{Value, json};

/// How many events are kept.
const CAPACITY: usize = 1000;

#[derive(Debug, Clone)]
pub struct Event {
    pub time: SystemTime,
    /// `unauthorized`, `ip_denied`, `referrer_denied`, `rate_limited`, `budget_exceeded`,
    /// `suspicious_pattern` or `admin_change`.
    pub kind: &'static str,
    /// The refusal reason or the admin action.
    pub reason: &'static str,
    pub key_id: Option<Arc<str>>,
    pub client_ip: Option<IpAddr>,
    pub detail: Option<String>,
}

impl Event {
    pub fn to_json(&self) -> Value {
        json!({
            "time": humantime::format_rfc3339_millis(self.time).to_string(),
            "type": self.kind,
            "reason": self.reason,
            "key_id": self.key_id.as_deref(),
            "client_ip": self.client_ip.map(|ip| ip.to_string()),
            "detail": self.detail,
        })
    }
}

#[derive(Default)]
pub struct EventLog {
    ring: Mutex<VecDeque<Event>>,
}

impl EventLog {
    pub fn record(&self, event: Event) {
        tracing::warn!(
            target: "keygate::security",
            event = event.kind,
            reason = event.reason,
            key = event.key_id.as_deref().unwrap_or("-"),
            client_ip = %event.client_ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
            detail = event.detail.as_deref().unwrap_or(""),
            "security event"
        );
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// The newest `limit` events, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().rev().take(limit).cloned().collect()
    }
}

/// The event type of a refusal reason, if it is a security event.
pub fn kind_of_refusal(reason: &str) -> Option<&'static str> {
    if crate::metrics::AUTH_REASONS.contains(&reason) {
        return Some("unauthorized");
    }
    Some(match reason {
        "ip_not_allowed" => "ip_denied",
        "referrer_not_allowed" => "referrer_denied",
        "rate_limited_requests" | "rate_limited_tokens" | "rate_limited_concurrency" => {
            "rate_limited"
        }
        "budget_exceeded" => "budget_exceeded",
        // A blocked address's requests are not new events: its block was one.
        _ => return None,
    })
}
