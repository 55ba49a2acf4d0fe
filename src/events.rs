//! Recent security events for `GET /admin/events`: refusals for a missing, unknown or invalid
//! key, IP and referrer denials, rate-limit and budget refusals, `suspicious_pattern` blocks,
//! and admin changes.
//!
//! Events are kept in memory, in one bounded ring per kind, so a flood of one kind (keyless
//! requests, say) can never push the others out. Repeats of the same (kind, reason, address,
//! key) within [`AGGREGATE_WINDOW`] are folded into one entry with a count, so a flood from
//! one source cannot even fill its own ring. Each new entry is a structured log line (target
//! `keygate::security`); its repeats are logged when the count reaches a power of two.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

/// Entries kept per kind.
const PER_KIND: usize = 1000;
/// Repeats within this long of an entry's last occurrence are folded into it.
pub const AGGREGATE_WINDOW: Duration = Duration::from_secs(60);

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
    /// The request that caused it, to find its `keygate::request` log line.
    pub request_id: Option<String>,
}

/// An event and its repeats.
#[derive(Debug, Clone)]
pub struct Entry {
    pub event: Event,
    /// How many times it happened, the first time included.
    pub count: u64,
    /// When it last happened (`event.time` is the first).
    pub last: SystemTime,
}

impl Entry {
    pub fn to_json(&self) -> Value {
        let e = &self.event;
        json!({
            "time": humantime::format_rfc3339_millis(self.last).to_string(),
            "first_time": humantime::format_rfc3339_millis(e.time).to_string(),
            "count": self.count,
            "type": e.kind.label(),
            "reason": e.reason,
            "key_id": e.key_id.as_deref(),
            "client_ip": e.client_ip.map(|ip| ip.to_string()),
            "detail": e.detail,
            "request_id": e.request_id,
        })
    }
}

type Source = (&'static str, Option<IpAddr>, Option<Arc<str>>);

/// One kind's entries, oldest first, with an index from source to its newest entry.
#[derive(Default)]
struct Ring {
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`.
    base: u64,
    newest: HashMap<Source, u64>,
}

impl Ring {
    /// Folds `event` into its source's newest entry if that is recent, else appends it.
    /// Returns the entry's count.
    fn add(&mut self, event: Event, aggregate: bool) -> u64 {
        let source: Source = (event.reason, event.client_ip, event.key_id.clone());
        if aggregate
            && let Some(&seq) = self.newest.get(&source)
            && let Some(entry) = self.entries.get_mut((seq - self.base) as usize)
            && event
                .time
                .duration_since(entry.last)
                .unwrap_or(Duration::ZERO)
                <= AGGREGATE_WINDOW
        {
            entry.count += 1;
            entry.last = entry.last.max(event.time);
            return entry.count;
        }
        if self.entries.len() == PER_KIND
            && let Some(old) = self.entries.pop_front()
        {
            let old_source: Source = (old.event.reason, old.event.client_ip, old.event.key_id);
            if self.newest.get(&old_source) == Some(&self.base) {
                self.newest.remove(&old_source);
            }
            self.base += 1;
        }
        let seq = self.base + self.entries.len() as u64;
        self.newest.insert(source, seq);
        self.entries.push_back(Entry {
            last: event.time,
            event,
            count: 1,
        });
        1
    }
}

#[derive(Default)]
pub struct EventLog {
    rings: Mutex<HashMap<EventKind, Ring>>,
}

impl EventLog {
    pub fn record(&self, event: Event) {
        let logged = event.clone();
        let count = {
            let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
            let aggregate = event.kind != EventKind::AdminChange;
            rings.entry(event.kind).or_default().add(event, aggregate)
        };
        if count.is_power_of_two() {
            tracing::warn!(
                target: "keygate::security",
                event = logged.kind.label(),
                reason = logged.reason,
                key = logged.key_id.as_deref().unwrap_or("-"),
                client_ip = %logged.client_ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                request_id = logged.request_id.as_deref().unwrap_or("-"),
                count,
                detail = logged.detail.as_deref().unwrap_or(""),
                "security event"
            );
        }
    }

    /// The `limit` most recent entries of every kind, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Entry> {
        let rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<Entry> = rings
            .values()
            .flat_map(|r| r.entries.iter().rev().take(limit).cloned())
            .collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.last));
        all.truncate(limit);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, ip: u8, at: u64) -> Event {
        Event {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            kind,
            reason: "missing_key",
            key_id: None,
            client_ip: Some(IpAddr::from([192, 0, 2, ip])),
            detail: None,
            request_id: None,
        }
    }

    #[test]
    fn a_flood_is_folded_and_cannot_push_other_kinds_out() {
        let log = EventLog::default();
        log.record(event(EventKind::IpDenied, 9, 0));
        for i in 0..100_000u64 {
            log.record(event(EventKind::Unauthorized, 1, i / 1000));
        }
        // Many sources, each once: their own ring rolls over, the others' does not.
        for i in 0..5000u64 {
            log.record(event(
                EventKind::Unauthorized,
                (i % 250) as u8,
                1000 + i * 61,
            ));
        }
        let recent = log.recent(2000);
        assert!(recent.iter().any(|e| e.event.kind == EventKind::IpDenied));
        let unauthorized = recent
            .iter()
            .filter(|e| e.event.kind == EventKind::Unauthorized)
            .count();
        assert_eq!(unauthorized, PER_KIND);
    }

    #[test]
    fn repeats_within_the_window_are_counted_later_ones_start_anew() {
        let log = EventLog::default();
        for at in [0, 30, 89] {
            log.record(event(EventKind::Unauthorized, 1, at));
        }
        log.record(event(EventKind::Unauthorized, 1, 200));
        log.record(event(EventKind::Unauthorized, 2, 200));
        let recent = log.recent(10);
        let counts: Vec<u64> = recent.iter().map(|e| e.count).collect();
        assert_eq!(recent.len(), 3);
        assert_eq!(counts.iter().sum::<u64>(), 5);
        assert!(counts.contains(&3));
    }
}
