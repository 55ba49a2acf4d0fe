//! Fills the dashboard's [`model`](super::model) from the config, the live limit counters,
//! the recent security events and the ledger (read on a blocking thread, never on the async
//! workers). Read-only: nothing here writes the config or the ledger.

use std::collections::BTreeMap;

use super::model::{Day, EventRow, KeyPage, KeyRow, ModelCost, Overview, Utilization};
use crate::config::KeyPolicy;
use crate::events::Entry;
use crate::keyinfo;
use crate::state::Gateway;
use crate::usage::ledger::{self, DailyPeak, DailyRow, Ledger};
use crate::usage::{calendar, report};

/// Days the key page covers, today included.
pub const DAYS: u32 = 30;

fn event_row(e: &Entry) -> EventRow {
    EventRow {
        time: keyinfo::time(e.last),
        kind: e.event.kind.label(),
        reason: e.event.reason,
        key_id: e.event.key_id.as_deref().map(str::to_owned),
        client_ip: e.event.client_ip.map(|ip| ip.to_string()),
        count: e.count,
    }
}

fn key_row(gw: &Gateway, key: &KeyPolicy, last_used: Option<String>) -> KeyRow {
    let metering = &gw.metering;
    let now = metering.clock.now_utc();
    let month = calendar::month_index(now);
    let windows = metering.limits.windows(&key.id, &key.limits);
    let mut limits = Vec::new();
    for (label, window) in [
        ("requests/min", windows.requests),
        ("tokens/min", windows.tokens),
    ] {
        if let Some(w) = window {
            limits.push(Utilization {
                label,
                used: w.limit.saturating_sub(w.remaining),
                limit: w.limit,
            });
        }
    }
    KeyRow {
        id: key.id.to_string(),
        name: key.name.clone(),
        status: keyinfo::status(key, now),
        created: calendar::day(key.created),
        last_used,
        spend_micros: metering.limits.month_spend(&key.id, month),
        budget_micros: key.limits.monthly_spend_micros,
        limits,
    }
}

/// Most rows the key list shows: a page of 100,000 rows would help nobody (search instead).
pub const MAX_KEY_ROWS: usize = 200;

/// Everything the overview shows: the keys whose id or name contains `query` (every key when
/// it is empty), most spend this month first, then most recently used.
pub async fn overview(gw: &Gateway, query: &str) -> Overview {
    let rt = gw.runtime();
    // With several replicas, month-to-date spend is read from the shared store first (while
    // the ledger gives each key's last use).
    let ((), used) = tokio::join!(
        crate::admin::health::refresh_shared_spend(gw),
        crate::admin::keys::last_used(gw)
    );
    let needle = query.trim().to_lowercase();
    let month = calendar::month_index(gw.metering.clock.now_utc());
    let mut matching: Vec<(u64, Option<&String>, &KeyPolicy)> = rt
        .config
        .keys
        .iter()
        .filter(|k| {
            needle.is_empty()
                || k.id.to_lowercase().contains(&needle)
                || k.name.to_lowercase().contains(&needle)
        })
        .map(|k| {
            let spend = gw.metering.limits.month_spend(&k.id, month);
            (spend, used.get(&*k.id), k.as_ref())
        })
        .collect();
    let count = matching.len();
    // RFC 3339 UTC strings order as the times do.
    matching.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| b.1.cmp(&a.1))
            .then_with(|| a.2.id.cmp(&b.2.id))
    });
    matching.truncate(MAX_KEY_ROWS);
    Overview {
        generated: keyinfo::time(gw.metering.clock.now_utc()),
        keys: matching
            .into_iter()
            .map(|(_, last, k)| key_row(gw, k, last.cloned()))
            .collect(),
        matching: count,
        query: query.trim().to_owned(),
        events: gw
            .metering
            .events
            .recent(50)
            .iter()
            .map(event_row)
            .collect(),
    }
}

/// What the ledger says about one key over the period.
#[derive(Default)]
struct Recorded {
    rows: Vec<DailyRow>,
    peaks: Vec<DailyPeak>,
    latency: Vec<u64>,
    last_used: Option<String>,
}

/// Everything a key's page shows, or `None` for a key that is not configured.
pub async fn key(gw: &Gateway, id: &str) -> Option<KeyPage> {
    let rt = gw.runtime();
    let key = rt.config.keys.iter().find(|k| &*k.id == id)?.clone();
    crate::admin::health::refresh_shared_spend_of(gw, std::slice::from_ref(&key.id)).await;
    let now = gw.metering.clock.now_utc();
    let from = calendar::days_before(now, u64::from(DAYS - 1));
    let path = rt.config.storage.path.clone();
    let (owned_id, owned_from) = (id.to_owned(), from.clone());
    let recorded = tokio::task::spawn_blocking(move || {
        let Ok(l) = Ledger::open_read_only(&path) else {
            return Recorded::default();
        };
        Recorded {
            rows: l.daily(Some(&owned_id), &owned_from).unwrap_or_default(),
            peaks: l.peaks(Some(&owned_id), &owned_from).unwrap_or_default(),
            latency: l.latency(&owned_id, &owned_from).unwrap_or_default(),
            last_used: l.last_used(&owned_id).ok().flatten(),
        }
    })
    .await
    .unwrap_or_default();

    // Every day of the period, with the days without traffic at zero.
    let mut days: BTreeMap<String, Day> = (0..DAYS)
        .rev()
        .map(|back| {
            let day = calendar::days_before(now, u64::from(back));
            (
                day.clone(),
                Day {
                    day,
                    ..Day::default()
                },
            )
        })
        .collect();
    let mut models: BTreeMap<&str, ModelCost> = BTreeMap::new();
    for r in &recorded.rows {
        let tokens = r.prompt_tokens.saturating_add(r.completion_tokens);
        if let Some(d) = days.get_mut(&r.day) {
            d.requests += r.requests;
            d.errors += r.errors;
            d.tokens = d.tokens.saturating_add(tokens);
            d.cost_micros = d.cost_micros.saturating_add(r.cost_micros);
        }
        if !r.model.is_empty() {
            let m = models.entry(&r.model).or_insert_with(|| ModelCost {
                model: r.model.clone(),
                ..ModelCost::default()
            });
            m.requests += r.requests;
            m.tokens = m.tokens.saturating_add(tokens);
            m.cost_micros = m.cost_micros.saturating_add(r.cost_micros);
        }
    }
    let suggestion = report::suggestions(&rt.config, &recorded.peaks, Some(id))
        .into_iter()
        .next();
    let advice = report::by_model(&rt.config, &recorded.rows);
    let events = gw
        .metering
        .events
        .recent(1000)
        .iter()
        .filter(|e| e.event.key_id.as_deref() == Some(id))
        .take(50)
        .map(event_row)
        .collect();
    let percentile = |q| ledger::percentile_ms(&recorded.latency, q).map(|ms| ms as f64);
    Some(KeyPage {
        key: key_row(gw, &key, recorded.last_used.clone()),
        days: days.into_values().collect(),
        by_model: models.into_values().collect(),
        latency_p50_ms: percentile(0.5),
        latency_p95_ms: percentile(0.95),
        events,
        suggestion,
        advice,
    })
}

/// Recent security events across keys.
pub fn events(gw: &Gateway) -> Vec<EventRow> {
    gw.metering
        .events
        .recent(200)
        .iter()
        .map(event_row)
        .collect()
}
