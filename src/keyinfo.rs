//! How a key is described to operators (CLI `keys list/show`, admin API): its settings with
//! environment defaults applied, its status, and its usage. Never its secret or hash.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::config::KeyPolicy;
use crate::limits::RateHeaders;
use crate::usage::cost::format_usd;

/// `active`, `inactive` or `expired`.
pub fn status(key: &KeyPolicy, now: SystemTime) -> &'static str {
    if !key.active {
        "inactive"
    } else if key.expires.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

pub(crate) fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What is known of a key's use, from the ledger and (when the gateway runs) its live limits.
#[derive(Default)]
pub struct KeyUse {
    pub last_used: Option<String>,
    pub month_spend_micros: u64,
    pub windows: Option<RateHeaders>,
}

pub fn describe(key: &KeyPolicy, now: SystemTime, usage: &KeyUse) -> Value {
    let l = &key.limits;
    let window = |w: Option<crate::limits::Window>| {
        w.map(|w| json!({"limit": w.limit, "remaining": w.remaining, "used": w.limit - w.remaining.min(w.limit)}))
    };
    json!({
        "id": &*key.id,
        "name": key.name,
        "description": key.description,
        "environment": key.environment.name(),
        "status": status(key, now),
        "created": time(key.created),
        "expires": key.expires.map(time),
        "previous_secret_valid_until": key.previous.as_ref().map(|p| time(p.expires)),
        "scopes": key.scopes.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "models": key.models.as_ref().map(|m| m.iter().map(|m| m.to_string()).collect::<Vec<_>>()),
        "allowed_ips": key.allowed_ips.nets().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "allowed_referrers": key.allowed_referrers.patterns().collect::<Vec<_>>(),
        "limits": {
            "requests_per_minute": l.requests_per_minute.map(|n| n.get()),
            "tokens_per_minute": l.tokens_per_minute.map(|n| n.get()),
            "monthly_spend_usd": l.monthly_spend_micros.map(format_usd),
            "max_concurrent_requests": l.max_concurrent_requests.map(|n| n.get()),
            "default_max_tokens": l.default_max_tokens.map(|n| n.get()),
        },
        "last_used": usage.last_used,
        "month_spend_usd": format_usd(usage.month_spend_micros),
        "budget_used": l.monthly_spend_micros.map(|b| if b == 0 { 1.0 } else { usage.month_spend_micros as f64 / b as f64 }),
        "current_window": usage.windows.map(|w| json!({"requests": window(w.requests), "tokens": window(w.tokens)})),
    })
}
