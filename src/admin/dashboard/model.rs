//! What the dashboard pages show: plain data filled from the usage ledger, the live limit
//! counters and the recent security events, then handed to [`super::pages`] to render.
//!
//! Nothing here does I/O or holds a secret or a key hash: a page can only show what these
//! structs carry, so keeping secrets out of them keeps them out of every page. Money is integer
//! micro-dollars, as in the ledger; times are preformatted UTC strings.

/// The key list: `GET /dashboard`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overview {
    /// When the page was built (RFC 3339, UTC), so a stale tab is visible as such.
    pub generated: String,
    /// The keys shown: those matching `query`, most spend this month first, at most
    /// [`super::data::MAX_KEY_ROWS`].
    pub keys: Vec<KeyRow>,
    /// How many keys match `query` (all configured keys when it is empty).
    pub matching: usize,
    /// The text keys were filtered by (id or name contains it), as typed.
    pub query: String,
    /// Recent security events across all keys, newest first.
    pub events: Vec<EventRow>,
}

/// One key as the key list shows it, and as the head of its own page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyRow {
    pub id: String,
    /// The configured name: operator-chosen text, escaped on every page.
    pub name: String,
    /// `active`, `inactive` or `expired`.
    pub status: &'static str,
    /// `YYYY-MM-DD`.
    pub created: String,
    /// `None` for a key that never made a request.
    pub last_used: Option<String>,
    /// Spend in the current budget period.
    pub spend_micros: u64,
    /// `None` when the key has no spend budget.
    pub budget_micros: Option<u64>,
    /// One entry per configured limit; a limit that is not configured has none.
    pub limits: Vec<Utilization>,
}

/// How much of one live limit is in use right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Utilization {
    /// `requests/min`, `tokens/min` or `concurrent`.
    pub label: &'static str,
    pub used: u64,
    pub limit: u64,
}

/// A key's own page: `GET /dashboard/keys/{id}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPage {
    pub key: KeyRow,
    /// One entry per day of the period, oldest first, days without traffic included, so the
    /// charts show gaps as zeros rather than hiding them.
    pub days: Vec<Day>,
    pub by_model: Vec<ModelCost>,
    /// `None` when the period has no request with a measured latency.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// This key's recent security events, newest first.
    pub events: Vec<EventRow>,
    /// Limits suggested from the period's busiest minutes (as `keygate usage --suggest-limits`).
    pub suggestion: Option<crate::usage::report::Suggestion>,
    /// Cost per model and the saving at the cheapest model (as `keygate usage --by-model`).
    pub advice: Vec<crate::usage::report::ModelUse>,
}

/// One day of one key's traffic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Day {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub requests: u64,
    /// Requests that ended in an error status (the error-rate chart's numerator).
    pub errors: u64,
    pub tokens: u64,
    pub cost_micros: u64,
}

/// One model's share of a key's traffic over the period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelCost {
    pub model: String,
    pub requests: u64,
    pub tokens: u64,
    pub cost_micros: u64,
}

/// One security event, with its repeats folded into `count`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventRow {
    /// When it first happened (RFC 3339, UTC).
    pub time: String,
    /// The event kind's label (`unauthorized`, `ip_denied`, ...).
    pub kind: &'static str,
    pub reason: &'static str,
    /// `None` for events with no identified key (a missing or unknown key).
    pub key_id: Option<String>,
    pub client_ip: Option<String>,
    pub count: u64,
}
