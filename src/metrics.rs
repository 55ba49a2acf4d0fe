//! Prometheus metrics: one registry owned by the gateway (no global registry), names as
//! constants, and label values only from bounded sets: configured key ids (or `""` when no key
//! was authenticated), configured model names (or `""`), route templates (or `unmatched`),
//! status classes and fixed reason lists. Request metrics are updated from settle only, so
//! each request is counted exactly once; per-key gauges are computed when scraped.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

use crate::error::Reason;
use crate::events::EventKind;
use crate::upstream::Usage;

/// Metric names, as docs/reference.md lists them.
pub mod names {
    pub const REQUESTS: &str = "keygate_requests_total";
    pub const TOKENS: &str = "keygate_tokens_total";
    pub const COST: &str = "keygate_cost_usd_total";
    pub const RATE_LIMITED: &str = "keygate_rate_limited_total";
    pub const AUTH_FAILURES: &str = "keygate_auth_failures_total";
    pub const REQUEST_DURATION: &str = "keygate_request_duration_seconds";
    pub const UPSTREAM_DURATION: &str = "keygate_upstream_duration_seconds";
    pub const UPSTREAM_TTFB: &str = "keygate_upstream_ttfb_seconds";
    pub const OVERHEAD: &str = "keygate_overhead_seconds";
    pub const INFLIGHT: &str = "keygate_inflight_requests";
    pub const KEY_SPEND: &str = "keygate_key_spend_usd";
    pub const KEY_LIMIT: &str = "keygate_key_limit";
    pub const KEY_EXPIRY: &str = "keygate_key_expiry_timestamp_seconds";
    pub const KEY_INFO: &str = "keygate_key_info";
    pub const UPSTREAM_KEY_CONFIGURED: &str = "keygate_upstream_key_configured";
    pub const LIMIT_STORE_UP: &str = "keygate_limit_store_up";
    pub const CONFIG_RELOADS: &str = "keygate_config_reloads_total";
    pub const UPSTREAM_UP: &str = "keygate_upstream_up";
    pub const LEDGER_FLUSH_LAG: &str = "keygate_ledger_flush_lag_seconds";
    pub const LEDGER_DROPPED: &str = "keygate_ledger_dropped_events_total";
    pub const SECURITY_EVENTS: &str = "keygate_security_events_total";
}

/// From 100 µs (keygate's own overhead) to 10 minutes (long streams).
const LATENCY_BUCKETS: [f64; 22] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 450.0, 600.0,
];

/// One settled request, as metrics see it.
pub struct Observation<'a> {
    pub key: &'a str,
    pub model: &'a str,
    pub endpoint: &'static str,
    pub status: u16,
    /// The refusal reason, when keygate refused.
    pub refusal: Option<Reason>,
    /// The security event of that refusal, if it is one.
    pub security_event: Option<EventKind>,
    pub usage: Usage,
    pub cost_micros: u64,
    pub total: Duration,
    /// Time spent waiting on the upstream, if it was called.
    pub upstream: Option<Duration>,
    pub ttfb: Option<Duration>,
}

/// Requests and 5xx answers of the last five minutes, in ten-second slots, for `/readyz`.
pub struct RecentOutcomes {
    slots: [(AtomicU64, AtomicU64, AtomicU64); 30],
}

const SLOT_SECS: u64 = 10;

impl RecentOutcomes {
    fn now_slot() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / SLOT_SECS)
    }

    pub fn record(&self, server_error: bool) {
        let slot = Self::now_slot();
        let (stamp, total, errors) = &self.slots[(slot % 30) as usize];
        if stamp.swap(slot, Ordering::Relaxed) != slot {
            // A new ten seconds: the slot's old counts are five minutes stale.
            total.store(0, Ordering::Relaxed);
            errors.store(0, Ordering::Relaxed);
        }
        total.fetch_add(1, Ordering::Relaxed);
        errors.fetch_add(u64::from(server_error), Ordering::Relaxed);
    }

    /// (requests, 5xx answers) over the last five minutes.
    pub fn totals(&self) -> (u64, u64) {
        let now = Self::now_slot();
        self.slots
            .iter()
            .filter(|(stamp, _, _)| now.saturating_sub(stamp.load(Ordering::Relaxed)) < 30)
            .fold((0, 0), |(t, e), (_, total, errors)| {
                (
                    t + total.load(Ordering::Relaxed),
                    e + errors.load(Ordering::Relaxed),
                )
            })
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub recent: RecentOutcomes,
    requests: IntCounterVec,
    tokens: IntCounterVec,
    cost: CounterVec,
    rate_limited: IntCounterVec,
    auth_failures: IntCounterVec,
    security_events: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_ttfb: HistogramVec,
    overhead: HistogramVec,
    pub inflight: IntGauge,
    pub key_spend: GaugeVec,
    pub key_limit: GaugeVec,
    pub key_expiry: GaugeVec,
    pub key_info: GaugeVec,
    pub upstream_key_configured: IntGauge,
    pub limit_store_up: IntGauge,
    pub config_reloads: IntCounterVec,
    pub upstream_up: IntGauge,
    pub ledger_flush_lag: prometheus::Gauge,
    ledger_dropped: IntCounter,
    ledger_dropped_seen: AtomicI64,
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        macro_rules! register {
            ($metric:expr) => {{
                let m = $metric;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                &["endpoint"],
            )
        };
        let m = Self {
            requests: register!(IntCounterVec::new(
                Opts::new(
                    names::REQUESTS,
                    "Requests by key, model, route template and status class (2xx, 4xx, 5xx)."
                ),
                &["key", "model", "endpoint", "status"]
            )?),
            tokens: register!(IntCounterVec::new(
                Opts::new(
                    names::TOKENS,
                    "Tokens billed, by kind: prompt (all prompt tokens), cached_prompt (the part of prompt served from the upstream cache), completion."
                ),
                &["key", "model", "kind"]
            )?),
            cost: register!(CounterVec::new(
                Opts::new(names::COST, "Cost in US dollars, by key and model."),
                &["key", "model"]
            )?),
            rate_limited: register!(IntCounterVec::new(
                Opts::new(
                    names::RATE_LIMITED,
                    "Requests refused by a per-key limit: requests, tokens, concurrency or spend."
                ),
                &["key", "limit"]
            )?),
            auth_failures: register!(IntCounterVec::new(
                Opts::new(
                    names::AUTH_FAILURES,
                    "Requests refused before a key was authenticated, by reason."
                ),
                &["reason"]
            )?),
            security_events: register!(IntCounterVec::new(
                Opts::new(names::SECURITY_EVENTS, "Security events, by type."),
                &["type"]
            )?),
            request_duration: register!(histogram(
                names::REQUEST_DURATION,
                "Time from request to the end of the answer, by route template."
            )?),
            upstream_duration: register!(histogram(
                names::UPSTREAM_DURATION,
                "Time spent on the upstream call (to the end of its answer), by route template."
            )?),
            upstream_ttfb: register!(histogram(
                names::UPSTREAM_TTFB,
                "Time from sending upstream to the upstream's response head, by route template."
            )?),
            overhead: register!(histogram(
                names::OVERHEAD,
                "keygate's own time: the request's duration minus the upstream call, by route template."
            )?),
            inflight: register!(IntGauge::new(
                names::INFLIGHT,
                "Requests being handled now."
            )?),
            key_spend: register!(GaugeVec::new(
                Opts::new(
                    names::KEY_SPEND,
                    "Spend of the current UTC month, in US dollars."
                ),
                &["key"]
            )?),
            key_limit: register!(GaugeVec::new(
                Opts::new(
                    names::KEY_LIMIT,
                    "Configured limits: requests_per_minute, tokens_per_minute, monthly_spend_usd, max_concurrent_requests."
                ),
                &["key", "kind"]
            )?),
            key_expiry: register!(GaugeVec::new(
                Opts::new(
                    names::KEY_EXPIRY,
                    "When a key expires (Unix time), for keys that expire."
                ),
                &["key"]
            )?),
            key_info: register!(GaugeVec::new(
                Opts::new(
                    names::KEY_INFO,
                    "1 for each key with per-key series, labelled with its name and environment."
                ),
                &["key", "name", "environment"]
            )?),
            upstream_key_configured: register!(IntGauge::new(
                names::UPSTREAM_KEY_CONFIGURED,
                "1 if the variable named by upstream.api_key_env holds a key, 0 if not."
            )?),
            limit_store_up: register!(IntGauge::new(
                names::LIMIT_STORE_UP,
                "1 if the store that holds the per-key limits answers (always 1 for limits kept in this process)."
            )?),
            config_reloads: register!(IntCounterVec::new(
                Opts::new(names::CONFIG_RELOADS, "Config reloads by result."),
                &["result"]
            )?),
            upstream_up: register!(IntGauge::new(
                names::UPSTREAM_UP,
                "1 if the last upstream call got an answer, 0 if it could not reach the upstream."
            )?),
            ledger_flush_lag: register!(prometheus::Gauge::new(
                names::LEDGER_FLUSH_LAG,
                "Seconds since the usage ledger was last written successfully."
            )?),
            ledger_dropped: register!(IntCounter::new(
                names::LEDGER_DROPPED,
                "Usage events that could not be queued or written."
            )?),
            ledger_dropped_seen: AtomicI64::new(0),
            recent: RecentOutcomes {
                slots: std::array::from_fn(|_| Default::default()),
            },
            registry,
        };
        for reason in Reason::AUTH_FAILURES {
            m.auth_failures.with_label_values(&[reason.label()]);
        }
        for kind in EventKind::COUNTED {
            m.security_events.with_label_values(&[kind.label()]);
        }
        for result in ["success", "failure"] {
            m.config_reloads.with_label_values(&[result]);
        }
        // Down until the first check (upstream::probe) or request shows otherwise.
        m.upstream_up.set(0);
        m.limit_store_up.set(1);
        Ok(m)
    }

    /// Counts one settled request.
    pub fn observe(&self, o: &Observation<'_>) {
        self.requests
            .with_label_values(&[o.key, o.model, o.endpoint, status_class(o.status)])
            .inc();
        if !o.model.is_empty() {
            let u = &o.usage;
            for (kind, n) in [
                ("prompt", u.prompt_tokens),
                ("cached_prompt", u.cached_prompt_tokens),
                ("completion", u.completion_tokens),
            ] {
                if n > 0 {
                    self.tokens
                        .with_label_values(&[o.key, o.model, kind])
                        .inc_by(n);
                }
            }
            if o.cost_micros > 0 {
                self.cost
                    .with_label_values(&[o.key, o.model])
                    .inc_by(o.cost_micros as f64 / 1e6);
            }
        }
        if let Some(reason) = o.refusal {
            if reason.is_auth_failure() {
                self.auth_failures
                    .with_label_values(&[reason.label()])
                    .inc();
            }
            if let Some(limit) = reason.limit() {
                self.rate_limited
                    .with_label_values(&[o.key, limit.label()])
                    .inc();
            }
        }
        if let Some(kind) = o.security_event {
            self.security_event(kind);
        }
        self.recent.record(o.status >= 500);
        let secs = |d: Duration| d.as_secs_f64();
        self.request_duration
            .with_label_values(&[o.endpoint])
            .observe(secs(o.total));
        let own = o.total.saturating_sub(o.upstream.unwrap_or_default());
        self.overhead
            .with_label_values(&[o.endpoint])
            .observe(secs(own));
        if let Some(up) = o.upstream {
            self.upstream_duration
                .with_label_values(&[o.endpoint])
                .observe(secs(up));
        }
        if let Some(t) = o.ttfb {
            self.upstream_ttfb
                .with_label_values(&[o.endpoint])
                .observe(secs(t));
        }
    }

    pub fn security_event(&self, kind: EventKind) {
        self.security_events
            .with_label_values(&[kind.label()])
            .inc();
    }

    /// Brings the ledger's dropped-event count (kept by the recorder) into the counter.
    pub fn sync_ledger_dropped(&self, total: u64) {
        let total = i64::try_from(total).unwrap_or(i64::MAX);
        let before = self.ledger_dropped_seen.swap(total, Ordering::Relaxed);
        if total > before {
            self.ledger_dropped.inc_by((total - before) as u64);
        }
    }

    /// The registry in Prometheus' text format. Series of keys that are no longer configured
    /// (`is_configured` says no) are left out.
    pub fn encode(
        &self,
        is_configured: impl Fn(&str) -> bool,
    ) -> Result<String, prometheus::Error> {
        let mut families = self.registry.gather();
        for family in &mut families {
            family.mut_metric().retain(|m| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == "key")
                    .is_none_or(|l| l.value().is_empty() || is_configured(l.value()))
            });
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&families, &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// Unix seconds of a wall-clock time.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
