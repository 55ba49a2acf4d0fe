//! Health and metrics: `GET /healthz` (the process is alive), `GET /readyz` (config, ledger,
//! upstream, limit utilization and error rate, each `pass`, `warning` or `fail`, with a JSON
//! body that explains; 503 when any fails) and `GET /metrics`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::json_response;
use crate::config::PerKeyMetrics;
use crate::metrics::unix_seconds;
use crate::pipeline::body::ResponseBody;
use crate::state::Gateway;
use crate::usage::calendar;

/// Keys expiring within this long get per-key series (the expiry alert looks 7 days ahead).
const EXPIRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Sets the gauges that describe keys from the current config and limit state; keys no longer
/// configured disappear from them.
fn refresh_gauges(gw: &Gateway) {
    let rt = gw.runtime();
    let metering = &gw.metering;
    let m = &metering.metrics;
    let month = calendar::month_index(metering.clock.now_utc());
    m.key_spend.reset();
    m.key_limit.reset();
    m.key_expiry.reset();
    m.key_info.reset();
    m.upstream_key_configured
        .set(i64::from(rt.upstream_auth.is_some()));
    let now = metering.clock.now_utc();
    let all = rt.config.admin.per_key_metrics == PerKeyMetrics::All;
    for key in &rt.config.keys {
        let id = &*key.id;
        let spend = metering.limits.month_spend(id, month);
        let expiring = key
            .expires
            .is_some_and(|e| e.duration_since(now).is_ok_and(|left| left < EXPIRY_WINDOW));
        if !(all || spend > 0 || expiring || metering.limits.touched(id)) {
            continue;
        }
        m.key_info
            .with_label_values(&[id, &key.name, key.environment.name()])
            .set(1.0);
        m.key_spend.with_label_values(&[id]).set(spend as f64 / 1e6);
        let l = &key.limits;
        let limits = [
            (
                "requests_per_minute",
                l.requests_per_minute.map(|n| f64::from(n.get())),
            ),
            (
                "tokens_per_minute",
                l.tokens_per_minute.map(|n| f64::from(n.get())),
            ),
            (
                "monthly_spend_usd",
                l.monthly_spend_micros.map(|n| n as f64 / 1e6),
            ),
            (
                "max_concurrent_requests",
                l.max_concurrent_requests.map(|n| f64::from(n.get())),
            ),
        ];
        for (kind, value) in limits {
            if let Some(v) = value {
                m.key_limit.with_label_values(&[id, kind]).set(v);
            }
        }
        if let Some(expires) = key.expires {
            m.key_expiry
                .with_label_values(&[id])
                .set(unix_seconds(expires));
        }
    }
    m.ledger_flush_lag
        .set(metering.recorder.unflushed_for().as_secs_f64());
    m.sync_ledger_dropped(metering.recorder.dropped());
}

/// With limits shared on Redis, spend lives there: reads it for the keys this replica shows
/// (bounded by the Redis timeout; keeps the last known figures when Redis does not answer).
pub async fn refresh_shared_spend(gw: &Gateway) {
    if let crate::limits::Limiter::Shared(_) = &gw.metering.limits {
        let rt = gw.runtime();
        let ids: Vec<std::sync::Arc<str>> = rt.config.keys.iter().map(|k| k.id.clone()).collect();
        refresh_shared_spend_of(gw, &ids).await;
    }
}

/// [`refresh_shared_spend`] for some keys only (a dashboard page about one key).
pub async fn refresh_shared_spend_of(gw: &Gateway, ids: &[std::sync::Arc<str>]) {
    if let crate::limits::Limiter::Shared(shared) = &gw.metering.limits {
        let month = calendar::month_index(gw.metering.clock.now_utc());
        shared.refresh_spend(ids, month).await;
    }
}

pub async fn metrics(gw: &Gateway) -> Response<ResponseBody> {
    refresh_shared_spend(gw).await;
    refresh_gauges(gw);
    let rt = gw.runtime();
    let ids: std::collections::HashSet<&str> = rt.config.keys.iter().map(|k| &*k.id).collect();
    let configured = |id: &str| ids.contains(id);
    match gw.metering.metrics.encode(configured) {
        Ok(text) => {
            let mut r = Response::new(ResponseBody::full(Bytes::from(text)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"status": "fail", "error": e.to_string()}),
        ),
    }
}

fn check(status: &str, detail: Value) -> Value {
    let mut v = json!({"status": status});
    if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), detail) {
        obj.extend(extra);
    }
    v
}

pub async fn readyz(gw: &Gateway) -> Response<ResponseBody> {
    let rt = gw.runtime();
    let metering = &gw.metering;
    let config = check(
        "pass",
        json!({"keys": rt.config.keys.len(), "models": rt.config.models.iter().count()}),
    );

    let lag = metering.recorder.unflushed_for();
    let dropped = metering.recorder.dropped();
    // Past max_unflushed, keys with a budget are refused: this replica cannot serve them.
    let ledger_status = if lag > rt.config.storage.max_unflushed {
        "fail"
    } else if !lag.is_zero() || dropped > 0 {
        "warning"
    } else {
        "pass"
    };
    let ledger = check(
        ledger_status,
        json!({"path": rt.config.storage.path.display().to_string(), "seconds_unflushed": lag.as_secs_f64(), "max_unflushed_seconds": rt.config.storage.max_unflushed.as_secs_f64(), "dropped_events": dropped}),
    );

    let upstream_cfg = &rt.config.upstream;
    let probe = crate::upstream::probe::reachable(upstream_cfg).await;
    // A missing key is this replica's own fault: fail, so a broken rollout stops. An
    // unreachable upstream is everyone's: a warning, since taking every replica out of the
    // load balancer at once would only turn 502s into connection errors.
    let key_missing = format!(
        "${} (upstream.api_key_env) is not set",
        upstream_cfg.api_key_env
    );
    let upstream = match (probe, rt.upstream_auth.is_some()) {
        (_, false) => check("fail", json!({"detail": key_missing})),
        (Ok(()), true) => check("pass", json!({"reachable": true})),
        (Err(e), true) => check("warning", json!({"reachable": false, "detail": e})),
    };

    let mut busiest: Option<(f64, &str, &str)> = None;
    for key in &rt.config.keys {
        let w = metering.limits.windows(&key.id, &key.limits);
        for (kind, window) in [("requests", w.requests), ("tokens", w.tokens)] {
            if let Some(w) = window {
                let used = 1.0 - w.remaining as f64 / (w.limit.max(1)) as f64;
                if busiest.is_none_or(|(u, _, _)| used > u) {
                    busiest = Some((used, &key.id, kind));
                }
            }
        }
    }
    let utilization = match busiest {
        Some((used, key, kind)) => check(
            if used >= 0.8 { "warning" } else { "pass" },
            json!({"max_utilization": used, "key": key, "limit": kind}),
        ),
        None => check("pass", json!({"max_utilization": 0.0})),
    };

    let (total, errors) = metering.metrics.recent.totals();
    let ratio = if total == 0 {
        0.0
    } else {
        errors as f64 / total as f64
    };
    let error_status = if ratio > 0.25 {
        "fail"
    } else if ratio > 0.05 {
        "warning"
    } else {
        "pass"
    };
    let error_rate = check(
        error_status,
        json!({"window_seconds": 300, "requests": total, "server_errors": errors, "ratio": ratio}),
    );

    // Shared limits down is a warning: every replica then enforces its share on its own (or
    // refuses, with on_redis_down = "deny"), and taking replicas out would not help.
    let limit_store = match &metering.limits {
        crate::limits::Limiter::Memory(_) => check("pass", json!({"shared": false})),
        crate::limits::Limiter::Shared(s) if s.is_up() => {
            check("pass", json!({"shared": true, "reachable": true}))
        }
        crate::limits::Limiter::Shared(s) => check(
            "warning",
            json!({"shared": true, "reachable": false, "dropped_settlements": s.dropped(), "detail": "Redis cannot be reached: limits are enforced per replica (on_redis_down)"}),
        ),
    };
    let checks = json!({
        "config": config,
        "ledger": ledger,
        "upstream": upstream,
        "limit_store": limit_store,
        "rate_limit_utilization": utilization,
        "error_rate": error_rate,
    });
    let statuses: Vec<&str> = checks
        .as_object()
        .map(|o| o.values().filter_map(|c| c["status"].as_str()).collect())
        .unwrap_or_default();
    let overall = if statuses.contains(&"fail") {
        "fail"
    } else if statuses.contains(&"warning") {
        "warning"
    } else {
        "pass"
    };
    let code = if overall == "fail" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(code, &json!({"status": overall, "checks": checks}))
}
