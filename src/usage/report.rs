//! Advice from the ledger, shared by `keygate usage` and the dashboard: rate limits suggested
//! from each key's busiest minutes, and what each key's traffic would cost at the cheapest
//! configured model of the same scope.

use std::collections::BTreeMap;

use serde::Serialize;

use super::cost;
use super::ledger::{DailyPeak, DailyRow};
use crate::config::Config;
use crate::upstream::Usage;

/// The least the suggestions ever propose, per minute.
pub const MIN_SUGGESTED_REQUESTS: u64 = 100;
pub const MIN_SUGGESTED_TOKENS: u64 = 10_000;

/// A key's current per-minute limits, its peaks over the period, and the suggestion:
/// `max(peak × 1.2, 100)` requests and `max(peak × 1.2, 10000)` tokens per minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    pub key_id: String,
    pub current_requests_per_minute: Option<u64>,
    pub current_tokens_per_minute: Option<u64>,
    pub peak_requests_per_minute: u64,
    pub peak_tokens_per_minute: u64,
    pub suggested_requests_per_minute: u64,
    pub suggested_tokens_per_minute: u64,
}

/// 20% above `peak`, rounded up, and at least `floor`.
pub fn with_headroom(peak: u64, floor: u64) -> u64 {
    peak.saturating_mul(6).div_ceil(5).max(floor)
}

/// One suggestion per configured key (or only `key`), from the peaks of the period.
pub fn suggestions(config: &Config, peaks: &[DailyPeak], key: Option<&str>) -> Vec<Suggestion> {
    let mut top: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for p in peaks {
        let t = top.entry(&p.key_id).or_default();
        t.0 = t.0.max(p.peak_requests);
        t.1 = t.1.max(p.peak_tokens);
    }
    config
        .keys
        .iter()
        .filter(|k| key.is_none_or(|id| *k.id == *id))
        .map(|k| {
            let (requests, tokens) = top.get(&*k.id).copied().unwrap_or_default();
            Suggestion {
                key_id: k.id.to_string(),
                current_requests_per_minute: k
                    .limits
                    .requests_per_minute
                    .map(|n| u64::from(n.get())),
                current_tokens_per_minute: k.limits.tokens_per_minute.map(|n| u64::from(n.get())),
                peak_requests_per_minute: requests,
                peak_tokens_per_minute: tokens,
                suggested_requests_per_minute: with_headroom(requests, MIN_SUGGESTED_REQUESTS),
                suggested_tokens_per_minute: with_headroom(tokens, MIN_SUGGESTED_TOKENS),
            }
        })
        .collect()
}

/// A key's use of one model, and what the same tokens would cost at the cheapest configured
/// model of the same scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelUse {
    pub key_id: String,
    pub model: String,
    pub requests: u64,
    pub average_tokens: u64,
    pub cost_micros: u64,
    /// The cheapest model of the same scope for these tokens, when it is another one.
    pub cheapest_model: Option<String>,
    pub saving_micros: u64,
}

/// Per key and model over the rows given, with the saving at the cheapest model of the scope.
pub fn by_model(config: &Config, rows: &[DailyRow]) -> Vec<ModelUse> {
    let mut sums: BTreeMap<(&str, &str), (u64, Usage, u64)> = BTreeMap::new();
    for r in rows {
        let s = sums.entry((&r.key_id, &r.model)).or_default();
        s.0 += r.requests;
        s.1.prompt_tokens = s.1.prompt_tokens.saturating_add(r.prompt_tokens);
        s.1.cached_prompt_tokens =
            s.1.cached_prompt_tokens
                .saturating_add(r.cached_prompt_tokens);
        s.1.completion_tokens = s.1.completion_tokens.saturating_add(r.completion_tokens);
        s.2 = s.2.saturating_add(r.cost_micros);
    }
    sums.into_iter()
        .filter(|((_, model), _)| !model.is_empty())
        .map(|((key_id, model), (requests, usage, spent))| {
            let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            let cheapest = config.models.get(model).and_then(|m| {
                config
                    .models
                    .iter()
                    .filter(|other| other.scope == m.scope)
                    .map(|other| (cost::of_usage(&other.price, &usage), other))
                    .min_by_key(|(c, other)| (*c, other.name != m.name))
            });
            let (cheapest_model, saving_micros) = match cheapest {
                Some((at_cheapest, other)) if *other.name != *model => (
                    Some(other.name.to_string()),
                    spent.saturating_sub(at_cheapest),
                ),
                _ => (None, 0),
            };
            ModelUse {
                key_id: key_id.to_owned(),
                model: model.to_owned(),
                requests,
                average_tokens: tokens.checked_div(requests).unwrap_or(0),
                cost_micros: spent,
                cheapest_model,
                saving_micros,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_add_a_fifth_and_never_go_below_the_floor() {
        assert_eq!(with_headroom(0, 100), 100);
        assert_eq!(with_headroom(83, 100), 100);
        assert_eq!(with_headroom(84, 100), 101);
        assert_eq!(with_headroom(1000, 100), 1200);
        assert_eq!(with_headroom(9000, 10_000), 10_800);
        assert!(with_headroom(u64::MAX, 1) >= u64::MAX / 5);
    }
}
