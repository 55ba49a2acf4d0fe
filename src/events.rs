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

/// The kinds of security event (the `type` label of `keygate_security_events_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Unauthorized,
    IpDenied,
    ReferrerDenied,
    RateLimited,
    BudgetExceeded,
    SuspiciousPattern,
    AdminChange,
}

impl EventKind {
    /// Every kind counted in `keygate_security_events_total` (admin changes are not threats).
    pub const COUNTED: [EventKind; 6] = [
        EventKind::Unauthorized,
        EventKind::IpDenied,
        EventKind::ReferrerDenied,
        EventKind::RateLimited,
        EventKind::BudgetExceeded,
        EventKind::SuspiciousPattern,
    ];

    pub fn label(self) -> &'static str {
        match self {
            EventKind::Unauthorized => "unauthorized",
            EventKind::IpDenied => "ip_denied",
            EventKind::ReferrerDenied => "referrer_denied",
            EventKind::RateLimited => "rate_limited",
            EventKind::BudgetExceeded => "budget_exceeded",
            EventKind::SuspiciousPattern => "suspicious_pattern",
            EventKind::AdminChange => "admin_change",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub time: SystemTime,
    pub kind: EventKind,
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
            "type": self.kind.label(),
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
            event = event.kind.label(),
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
