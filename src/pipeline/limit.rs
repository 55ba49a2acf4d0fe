//! Limit: admit a request against its key's limits in two steps. [`enter`], before the body
//! is read, takes a concurrency slot and one request per minute. [`reserve`], once the body has
//! said what the request may use, reserves it before the request is forwarded.
//! Tokens: the likely prompt plus the completion cap times the outputs. Money: the most the
//! prompt can hold plus that completion, at the model's prices, plus its per-request price.
//! The reservation is replaced by the real usage when the request settles.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::ctx::RequestCtx;
use crate::config::KeyPolicy;
use crate::error::{LimitKind, Refusal};
use crate::limits::{Admission, AdmitRequest, Entry, LimitRefusal, RateHeaders, Window};
use crate::state::Metering;
use crate::upstream::headers::value_written;
use crate::usage::{calendar, cost};

/// Before the body is read: a concurrency slot and one request from the key's
/// requests-per-minute bucket, so a key's limits also bound the bodies it can make keygate
/// buffer. A key with a budget is also stopped here while usage cannot be made durable.
pub fn enter(metering: &Metering, key: &KeyPolicy) -> Result<Entry, Refusal> {
    if key.limits.monthly_spend_micros.is_some()
        && metering.recorder.unflushed_for() > metering.max_unflushed
    {
        // Spend that is not durable could be lost by a restart: stop before it piles up.
        return Err(Refusal::LedgerUnavailable);
    }
    metering.limits.enter(&key.id, &key.limits).map_err(refusal)
}

/// Once the body is read: reserves the request's [`Reservation`](super::ctx::Reservation)
/// against the key's token and money limits.
pub async fn reserve(
    metering: &Metering,
    key: &KeyPolicy,
    entry: Entry,
    ctx: &RequestCtx,
) -> Result<Admission, Refusal> {
    let month = calendar::month_index(ctx.started_utc);
    let r = &ctx.reserved;
    let cost_micros = ctx.model.as_ref().map_or(0, |model| {
        cost::worst_case(&model.price, r.prompt_tokens, r.completion_tokens)
            .saturating_add(r.per_request_micros)
    });
    // A request that names no cap must still fit a small tokens-per-minute limit: its token
    // reservation is lowered (the rest is settled as debt), but its cost is always reserved at
    // the full cap, so the budget bound holds.
    let completion = match (r.client_cap, key.limits.tokens_per_minute) {
        (false, Some(tpm)) => r.completion_tokens.min(
            u64::from(tpm.get())
                .saturating_sub(r.rate_prompt_tokens)
                .max(1),
        ),
        _ => r.completion_tokens,
    };
    let request = AdmitRequest {
        limits: &key.limits,
        tokens: r.rate_prompt_tokens.saturating_add(completion),
        cost_micros,
        month,
    };
    metering
        .limits
        .reserve(entry, request)
        .await
        .map_err(refusal)
}

fn refusal(refusal: LimitRefusal) -> Refusal {
    match refusal {
        LimitRefusal::Requests {
            retry_after,
            headers,
        } => Refusal::RateLimited {
            limit: LimitKind::Requests,
            retry_after,
            headers,
        },
        LimitRefusal::Tokens {
            retry_after,
            headers,
        } => Refusal::RateLimited {
            limit: LimitKind::Tokens,
            retry_after,
            headers,
        },
        LimitRefusal::TokensNeverFit { headers } => Refusal::TooManyTokens { headers },
        LimitRefusal::Concurrency => Refusal::RateLimited {
            limit: LimitKind::Concurrency,
            retry_after: Duration::from_secs(1),
            headers: RateHeaders::default(),
        },
        LimitRefusal::Budget(shortfall) => Refusal::BudgetExceeded(shortfall),
        LimitRefusal::Unavailable => Refusal::LimitsUnavailable,
    }
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

/// Sets OpenAI's `x-ratelimit-*` headers for the limits the key has. Each value is written on
/// the stack and copied once into its header (these are six of a plain request's allocations).
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
        for (name, value) in
            names
                .iter()
                .zip([number(limit), number(remaining), go_duration(reset)])
        {
            if let Some(value) = value {
                headers.insert(name, value);
            }
        }
    }
}

fn number(n: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(itoa::Buffer::new().format(n)).ok()
}

/// A duration as Go prints it (and OpenAI sends it): `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn go_duration(d: Duration) -> Option<HeaderValue> {
    value_written(|out| write_go_duration(out, d))
}

fn write_go_duration(out: &mut impl std::io::Write, d: Duration) -> std::io::Result<()> {
    let ms = d.as_millis().max(u128::from(!d.is_zero()));
    if ms < 1000 {
        return write!(out, "{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    match (h, m) {
        (0, 0) => {}
        (0, m) => write!(out, "{m}m")?,
        (h, m) => write!(out, "{h}h{m}m")?,
    }
    write!(out, "{s}")?;
    if frac != 0 {
        // Milliseconds as a decimal fraction without trailing zeros: 60 -> ".06".
        let (mut digits, mut width) = (frac, 3);
        while digits % 10 == 0 {
            digits /= 10;
            width -= 1;
        }
        write!(out, ".{digits:0width$}")?;
    }
    out.write_all(b"s")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go_duration(d: Duration) -> String {
        super::go_duration(d).unwrap().to_str().unwrap().to_owned()
    }

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
        assert_eq!(go_duration(Duration::from_millis(1001)), "1.001s");
        assert_eq!(go_duration(Duration::from_millis(1250)), "1.25s");
        assert_eq!(go_duration(Duration::from_millis(59_999)), "59.999s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(
            go_duration(Duration::MAX),
            "5124095576030431h0m15.999s",
            "the longest fits the buffer"
        );
    }
}
