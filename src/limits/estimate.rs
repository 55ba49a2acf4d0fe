//! Token estimates used to reserve capacity before the upstream reports real usage.
//!
//! Prompt: one token per 3 bytes of the request body. English text averages about 4
//! characters per token and the body also holds JSON syntax and field names, so for English
//! the estimate is at or above the real count (it can only fall short for text that packs more
//! than 3 bytes into a token, such as long runs of digits or base64). CJK text takes 3 bytes
//! per character in UTF-8 and about one token per character, so the estimate stays close.
//!
//! Completion: the request's `max_tokens` (or `max_completion_tokens`), or the key's
//! `default_max_tokens` when the request sets none.

/// Bytes of request body per estimated prompt token.
pub const BYTES_PER_TOKEN: u64 = 3;

/// Completion cap reserved for requests that set no `max_tokens` and whose key sets no
/// `default_max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

pub fn prompt_tokens(body_len: usize) -> u64 {
    (body_len as u64).div_ceil(BYTES_PER_TOKEN)
}

/// Completion tokens estimated from what was streamed when no usage arrived: each content
/// chunk carries about one token, and no token is shorter than 1 byte in 4.
pub fn streamed_completion_tokens(content_chunks: u64, content_bytes: u64) -> u64 {
    content_chunks.max(content_bytes.div_ceil(4))
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
        assert_eq!(streamed_completion_tokens(5, 8), 5);
        assert_eq!(streamed_completion_tokens(1, 100), 25);
    }
}
