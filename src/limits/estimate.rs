//! Token estimates used to reserve capacity before the upstream reports real usage.
//!
//! Prompt: one token per 3 bytes of the request body. English text averages about 4
//! characters per token and the body also holds JSON syntax and field names, so for English
//! the estimate is at or above the real count (it can only fall short for text that packs more
//! than 3 bytes into a token, such as long runs of digits or base64). CJK text takes 3 bytes
//! per character in UTF-8 and about one token per character, so the estimate stays close.
//!
//! That estimate reserves tokens against a tokens-per-minute limit. Money is reserved for the
//! [`prompt_ceiling`] instead, so that no prompt can cost more than was reserved.
//!
//! Completion: the request's `max_tokens` (or `max_completion_tokens`), or the key's
//! `default_max_tokens` when the request sets none, times the outputs it asks for.

/// Bytes of request body per estimated prompt token.
pub const BYTES_PER_TOKEN: u64 = 3;

/// Completion cap reserved for requests that set no `max_tokens` and whose key sets no
/// `default_max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

pub fn prompt_tokens(body_len: usize) -> u64 {
    (body_len as u64).div_ceil(BYTES_PER_TOKEN)
}

/// The most prompt tokens a body can hold: one per byte. Byte-level tokenizers (DeepSeek's,
/// OpenAI's) never make more tokens than the text has bytes, JSON escapes only shrink text,
/// and a chat template's few tokens per message are fewer than the JSON around it.
pub fn prompt_ceiling(body_len: usize) -> u64 {
    body_len as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_estimate_is_not_below_a_typical_english_count() {
        let text =
            "The quick brown fox jumps over the lazy dog while the gateway meters every token.";
        let body = format!(
            "{{\"model\":\"deepseek-chat\",\"messages\":[{{\"role\":\"user\",\"content\":\"{text}\"}}]}}"
        );
        // About 17 real tokens (one per word plus punctuation) for this sentence.
        assert!(prompt_tokens(body.len()) >= 17 + 10);
        assert_eq!(prompt_tokens(0), 0);
        assert_eq!(prompt_tokens(4), 2);
        assert_eq!(prompt_ceiling(body.len()), body.len() as u64);
    }
}
