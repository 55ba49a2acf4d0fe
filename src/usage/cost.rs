//! Money: integer micro-dollars, from integer prices in micro-dollars per million tokens.
//! Each request's cost is rounded up to the next micro-dollar, so rounding never lets spend
//! slip past a budget.

use crate::config::Price;
use crate::upstream::Usage;

fn micros(numerator: u128) -> u64 {
    u64::try_from(numerator.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// Micro-dollars as a USD amount with all six decimals (`1.370000`).
pub fn format_usd(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// What a request with this usage costs.
pub fn of_usage(price: &Price, usage: &Usage) -> u64 {
    let cached = usage.cached_prompt_tokens.min(usage.prompt_tokens);
    let uncached = usage.prompt_tokens - cached;
    micros(
        u128::from(uncached) * u128::from(price.input)
            + u128::from(cached) * u128::from(price.cached_input)
            + u128::from(usage.completion_tokens) * u128::from(price.output),
    )
}

/// The most a request can cost: every prompt token uncached, every completion token used.
pub fn worst_case(price: &Price, prompt_tokens: u64, completion_tokens: u64) -> u64 {
    micros(
        u128::from(prompt_tokens) * u128::from(price.input.max(price.cached_input))
            + u128::from(completion_tokens) * u128::from(price.output),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deepseek_chat_prices_in_micro_dollars() {
        // $0.27 / $0.07 / $1.10 per million tokens.
        let p = Price {
            input: 270_000,
            cached_input: 70_000,
            output: 1_100_000,
        };
        let u = Usage {
            prompt_tokens: 1_000_000,
            cached_prompt_tokens: 0,
            completion_tokens: 1_000_000,
        };
        assert_eq!(of_usage(&p, &u), 1_370_000);
        let cached = Usage {
            prompt_tokens: 1_000,
            cached_prompt_tokens: 400,
            completion_tokens: 10,
        };
        // 600 * 0.27 + 400 * 0.07 + 10 * 1.10 = 162 + 28 + 11 = 201 micro-dollars.
        assert_eq!(of_usage(&p, &cached), 201);
        // 3 tokens at $0.27/M = 0.81 micro-dollars: rounded up, never down.
        assert_eq!(
            of_usage(
                &p,
                &Usage {
                    prompt_tokens: 3,
                    ..Usage::default()
                }
            ),
            1
        );
        assert_eq!(worst_case(&p, 1000, 10), 281);
    }
}
