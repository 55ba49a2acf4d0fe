//! Limit: reserve what the request may use against the key's limits, before it is forwarded.
//! Tokens: the prompt estimate plus the completion cap. Money: those tokens at the model's
//! prices. The reservation is replaced by the real usage when the request settles.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::ctx::RequestCtx;
use super::route::RouteKind;
use crate::config::KeyPolicy;
use crate::error::Refusal;
use crate::limits::{Admission, AdmitRequest, LimitRefusal, RateHeaders, Window, estimate};
use crate::state::Metering;
use crate::usage::{calendar, cost};

/// Reserves for one request. `max_tokens` is what the body asked for, if anything.
pub fn limit(
    metering: &Metering,
    key: &KeyPolicy,
    kind: RouteKind,
    body_len: usize,
    max_tokens: Option<u64>,
    ctx: &mut RequestCtx,
) -> Result<Admission, Refusal> {
    let month = calendar::month_index(ctx.started_utc);
    let (tokens, cost_micros) = match &ctx.model {
        Some(model) if kind.requires_model() => {
            let prompt = estimate::prompt_tokens(body_len);
            // What the completion may use: the request's own cap, else the key's default.
            let cap = match kind {
                RouteKind::Embeddings => 0,
                _ => max_tokens.unwrap_or_else(|| {
                    key.limits
                        .default_max_tokens
                        .map_or(estimate::DEFAULT_MAX_TOKENS, |n| u64::from(n.get()))
                }),
            };
            // A request that names no cap must still fit a small tokens-per-minute limit:
            // its token reservation is lowered (the rest is settled as debt), but its cost is
            // always reserved at the full cap, so the budget bound holds.
            let token_cap = match (max_tokens, key.limits.tokens_per_minute) {
                (None, Some(tpm)) => cap.min(u64::from(tpm.get()).saturating_sub(prompt).max(1)),
                _ => cap,
            };
            ctx.prompt_estimate = prompt;
            (
                prompt.saturating_add(token_cap),
                cost::worst_case(&model.price, prompt, cap),
            )
        }
        _ => (0, 0),
    };
    let request = AdmitRequest {
        key_id: &key.id,
        limits: &key.limits,
        tokens,
        cost_micros,
        month,
    };
    metering
        .limits
        .admit(request)
        .map_err(|refusal| match refusal {
            LimitRefusal::Requests {
                retry_after,
                headers,
            } => Refusal::RateLimited {
                limit: "requests",
                retry_after,
                headers,
            },
            LimitRefusal::Tokens {
                retry_after,
                headers,
            } => Refusal::RateLimited {
                limit: "tokens",
                retry_after,
                headers,
            },
            LimitRefusal::TokensNeverFit { headers } => Refusal::TooManyTokens { headers },
            LimitRefusal::Concurrency => Refusal::RateLimited {
                limit: "concurrency",
                retry_after: Duration::from_secs(1),
                headers: RateHeaders::default(),
            },
            LimitRefusal::Budget => Refusal::BudgetExceeded {
                retry_after: until_next_month(ctx.started_utc, month),
            },
        })
}

fn until_next_month(now: SystemTime, month: u32) -> Duration {
    let next = format!("{}-01T00:00:00Z", calendar::month_label(month + 1));
    humantime::parse_rfc3339(&next)
        .ok()
        .and_then(|t| t.duration_since(now).ok())
        .unwrap_or(Duration::from_secs(3600))
}

static NAMES: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

/// Sets OpenAI's `x-ratelimit-*` headers for the limits the key has.
pub fn set_rate_headers(headers: &mut HeaderMap, rate: &RateHeaders) {
    for (names, window) in NAMES.iter().zip([rate.requests, rate.tokens]) {
        let Some(Window {
            limit,
            remaining,
            reset,
        }) = window
        else {
            continue;
        };
        headers.insert(&names[0], HeaderValue::from(limit));
        headers.insert(&names[1], HeaderValue::from(remaining));
        if let Ok(v) = HeaderValue::try_from(go_duration(reset)) {
            headers.insert(&names[2], v);
        }
    }
}

/// A duration as Go prints it (and OpenAI sends it): `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis().max(u128::from(!d.is_zero()));
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{}s", format!("{frac:03}").trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go_duration(Duration::ZERO), "0ms");
        assert_eq!(go_duration(Duration::from_micros(300)), "1ms");
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(66_060)), "1m6.06s");
        assert_eq!(go_duration(Duration::from_secs(3723)), "1h2m3s");
    }
}
