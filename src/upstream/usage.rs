//! Token usage read from upstream answers as they pass through, without holding them whole.
//!
//! Server-sent events are scanned line by line: only a `data:` line that mentions `"usage"` is
//! parsed, and only the unfinished last line of a chunk is copied. JSON answers keep a bounded
//! tail (usage comes last in OpenAI and DeepSeek answers); a body that fits in the window is
//! kept whole, so usage is found wherever it stands.

use std::sync::LazyLock;

use bytes::Bytes;
use memchr::memmem;
use serde::Deserialize;

/// Tokens of one request, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    /// The part of `prompt_tokens` served from the upstream's prompt cache.
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    /// DeepSeek's name for cached prompt tokens.
    prompt_cache_hit_tokens: Option<u64>,
    /// OpenAI's.
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

/// The most tokens of one kind a single answer is believed to report. Real answers are many
/// orders of magnitude below; the cap keeps any reported figure from overflowing a counter.
pub const MAX_REPORTED_TOKENS: u64 = 1 << 40;

impl From<RawUsage> for Usage {
    fn from(raw: RawUsage) -> Self {
        let cached = raw
            .prompt_cache_hit_tokens
            .or(raw.prompt_tokens_details.and_then(|d| d.cached_tokens))
            .unwrap_or(0);
        let prompt = raw.prompt_tokens.min(MAX_REPORTED_TOKENS);
        Usage {
            prompt_tokens: prompt,
            cached_prompt_tokens: cached.min(prompt),
            completion_tokens: raw.completion_tokens.min(MAX_REPORTED_TOKENS),
        }
    }
}

#[derive(Deserialize)]
struct Chunk {
    usage: Option<RawUsage>,
}

const USAGE_KEY: &[u8] = b"\"usage\"";
/// Longest SSE line kept across chunk boundaries; longer lines are skipped, not buffered.
const MAX_LINE: usize = 1 << 20;
/// Half of the JSON tail window.
const JSON_HALF_WINDOW: usize = 128 * 1024;

/// Follows one response body and reports the usage it carried.
pub enum UsageScanner {
    Sse {
        partial: Vec<u8>,
        overflow: bool,
        usage: Option<Usage>,
        streamed_tokens: u64,
    },
    Json {
        /// An answer that came as one frame is held as it came, not copied.
        whole: Option<Bytes>,
        prev: Vec<u8>,
        cur: Vec<u8>,
    },
    None,
}

impl UsageScanner {
    /// Picks the scanner from the response's `Content-Type`.
    pub fn for_content_type(content_type: Option<&[u8]>) -> Self {
        let Some(ct) = content_type else {
            return UsageScanner::None;
        };
        let starts = |p: &[u8]| ct.len() >= p.len() && ct[..p.len()].eq_ignore_ascii_case(p);
        if starts(b"text/event-stream") {
            UsageScanner::Sse {
                partial: Vec::new(),
                overflow: false,
                usage: None,
                streamed_tokens: 0,
            }
        } else if starts(b"application/json") {
            UsageScanner::Json {
                whole: None,
                prev: Vec::new(),
                cur: Vec::new(),
            }
        } else {
            UsageScanner::None
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            UsageScanner::Sse {
                partial,
                overflow,
                usage,
                streamed_tokens,
            } => feed_sse(
                partial,
                overflow,
                &mut SseProgress {
                    usage,
                    streamed_tokens,
                },
                chunk,
            ),
            UsageScanner::Json { whole, prev, cur } => {
                if let Some(first) = whole.take() {
                    json_tail(prev, cur, &first);
                }
                json_tail(prev, cur, chunk);
            }
            UsageScanner::None => {}
        }
    }

    /// [`feed`](Self::feed) for a frame of the answer: a JSON answer's only frame is held
    /// without a copy.
    pub fn feed_frame(&mut self, frame: &Bytes) {
        match self {
            UsageScanner::Json { whole, prev, cur }
                if whole.is_none() && prev.is_empty() && cur.is_empty() =>
            {
                *whole = Some(frame.clone());
            }
            _ => self.feed(frame),
        }
    }

    /// Reads one complete line of an event stream (without its line ending), for a caller
    /// that splits the stream into lines itself.
    pub fn line(&mut self, line: &[u8]) {
        if let UsageScanner::Sse {
            usage,
            streamed_tokens,
            ..
        } = self
        {
            sse_line(
                line,
                &mut SseProgress {
                    usage,
                    streamed_tokens,
                },
            );
        }
    }

    /// The usage seen, once the body has ended.
    pub fn finish(&mut self) -> Option<Usage> {
        match self {
            UsageScanner::Sse {
                partial,
                overflow,
                usage,
                streamed_tokens,
            } => {
                if !partial.is_empty() && !*overflow {
                    let line = std::mem::take(partial);
                    sse_line(
                        &line,
                        &mut SseProgress {
                            usage,
                            streamed_tokens,
                        },
                    );
                }
                *usage
            }
            UsageScanner::Json { whole, prev, cur } => match whole {
                // The same tail a copied answer keeps.
                Some(whole) => {
                    json_usage(&whole[whole.len().saturating_sub(2 * JSON_HALF_WINDOW)..])
                }
                None if prev.is_empty() => json_usage(cur),
                None => {
                    let mut all = std::mem::take(prev);
                    all.extend_from_slice(cur);
                    json_usage(&all)
                }
            },
            UsageScanner::None => None,
        }
    }

    /// Completion tokens seen streaming: at least one per delta that carried text of any kind
    /// (content, reasoning, tool-call arguments, refusal), per choice.
    pub fn streamed_tokens(&self) -> u64 {
        match self {
            UsageScanner::Sse {
                streamed_tokens, ..
            } => *streamed_tokens,
            _ => 0,
        }
    }
}

/// Keeps the last `JSON_HALF_WINDOW` to twice that of a JSON answer, in two halves.
fn json_tail(prev: &mut Vec<u8>, cur: &mut Vec<u8>, chunk: &[u8]) {
    if cur.len() + chunk.len() > JSON_HALF_WINDOW && !cur.is_empty() {
        std::mem::swap(prev, cur);
        cur.clear();
    }
    let start = chunk.len().saturating_sub(2 * JSON_HALF_WINDOW);
    cur.extend_from_slice(&chunk[start..]);
}

/// What the SSE lines so far have shown: usage, and the completion tokens streamed.
struct SseProgress<'a> {
    usage: &'a mut Option<Usage>,
    streamed_tokens: &'a mut u64,
}

fn feed_sse(partial: &mut Vec<u8>, overflow: &mut bool, seen: &mut SseProgress<'_>, chunk: &[u8]) {
    let mut rest = chunk;
    while let Some(nl) = memchr::memchr(b'\n', rest) {
        let (line, after) = rest.split_at(nl);
        rest = &after[1..];
        if partial.is_empty() && !*overflow {
            sse_line(line, seen);
        } else {
            if !*overflow {
                partial.extend_from_slice(line);
                let whole = std::mem::take(partial);
                sse_line(&whole, seen);
            }
            partial.clear();
            *overflow = false;
        }
    }
    if !rest.is_empty() && !*overflow {
        if partial.len() + rest.len() > MAX_LINE {
            partial.clear();
            *overflow = true;
        } else {
            partial.extend_from_slice(rest);
        }
    }
}

/// Delta members that carry generated text; each non-empty one is at least one token.
static TEXT_FIELDS: LazyLock<[memmem::Finder<'static>; 4]> = LazyLock::new(|| {
    [
        memmem::Finder::new(b"\"content\":"),
        memmem::Finder::new(b"\"reasoning_content\":"),
        memmem::Finder::new(b"\"arguments\":"),
        memmem::Finder::new(b"\"refusal\":"),
    ]
});
pub(super) static USAGE_FINDER: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(USAGE_KEY));

fn sse_line(line: &[u8], seen: &mut SseProgress<'_>) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    *seen.streamed_tokens = seen
        .streamed_tokens
        .saturating_add(streamed_text_tokens(data));
    let Some(at) = USAGE_FINDER.find(data) else {
        return;
    };
    // Every event but the last says `"usage":null`: skip those without parsing them.
    let value = data[at + USAGE_KEY.len()..].trim_ascii_start();
    let value = value.strip_prefix(b":").unwrap_or(value).trim_ascii_start();
    if value.starts_with(b"null") {
        return;
    }
    if let Ok(Chunk { usage: Some(raw) }) = serde_json::from_slice::<Chunk>(data) {
        *seen.usage = Some(raw.into());
    }
}

/// Tokens of generated text in one event: for every text member with a non-empty string
/// value, its length at four bytes per token, and at least one. Inside JSON strings quotes are
/// escaped, so an unescaped `"content":` can only be a member name.
fn streamed_text_tokens(data: &[u8]) -> u64 {
    let mut tokens = 0u64;
    for finder in TEXT_FIELDS.iter() {
        for at in finder.find_iter(data) {
            let value = data[at + finder.needle().len()..].trim_ascii_start();
            if let Some(text) = value.strip_prefix(b"\"") {
                let len = string_len(text);
                if len > 0 {
                    tokens = tokens.saturating_add(len.div_ceil(4).max(1) as u64);
                }
            }
        }
    }
    tokens
}

/// Bytes of a JSON string's raw text, up to its closing (unescaped) quote.
fn string_len(text: &[u8]) -> usize {
    let mut escaped = false;
    for (i, &b) in text.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return i,
            _ => {}
        }
    }
    text.len()
}

/// Finds the last `"usage": {...}` in a JSON body (or its tail). Inside JSON strings a quote is
/// escaped, so the unescaped `"usage"` followed by `:` can only be an object key.
fn json_usage(body: &[u8]) -> Option<Usage> {
    let mut end = body.len();
    while let Some(at) = memmem::rfind(&body[..end], USAGE_KEY) {
        end = at;
        let after = &body[at + USAGE_KEY.len()..];
        let after = after.trim_ascii_start();
        let Some(value) = after.strip_prefix(b":") else {
            continue;
        };
        let mut stream = serde_json::Deserializer::from_slice(value).into_iter::<RawUsage>();
        if let Some(Ok(raw)) = stream.next() {
            return Some(raw.into());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse() -> UsageScanner {
        UsageScanner::for_content_type(Some(b"text/event-stream; charset=utf-8"))
    }

    #[test]
    fn sse_usage_is_found_across_any_chunking() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi \\\"usage\\\"\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18,\"prompt_cache_hit_tokens\":3}}\r\n\r\n\
data: [DONE]\n\n";
        for size in [1, 2, 3, 7, 64, stream.len()] {
            let mut s = sse();
            stream.chunks(size).for_each(|c| s.feed(c));
            assert_eq!(
                s.finish(),
                Some(Usage {
                    prompt_tokens: 11,
                    cached_prompt_tokens: 3,
                    completion_tokens: 7
                }),
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn sse_without_usage_reports_none() {
        let mut s = sse();
        s.feed(b"data: {\"choices\":[],\"usage\":null}\n\ndata: [DONE]\n\n");
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn json_usage_at_the_end_of_a_large_body_in_frames_of_any_size() {
        let mut body = b"{\"data\":[".to_vec();
        body.extend(std::iter::repeat_n(b"0.125,".as_slice(), 200_000).flatten());
        body.extend_from_slice(b"1],\"usage\": {\"prompt_tokens\":5,\"total_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":2}}}");
        let expected = Some(Usage {
            prompt_tokens: 5,
            cached_prompt_tokens: 2,
            completion_tokens: 0,
        });
        for size in [8192, 300_000, body.len()] {
            let mut s = UsageScanner::for_content_type(Some(b"application/json"));
            body.chunks(size).for_each(|c| s.feed(c));
            assert_eq!(s.finish(), expected, "fed in pieces of {size}");
            // As frames: the first is held as it came until a second arrives.
            let mut s = UsageScanner::for_content_type(Some(b"application/json"));
            body.chunks(size)
                .for_each(|c| s.feed_frame(&Bytes::copy_from_slice(c)));
            assert_eq!(s.finish(), expected, "frames of {size}");
        }
    }

    #[test]
    fn json_usage_in_a_small_body_anywhere_and_strings_are_not_keys() {
        let body = br#"{"usage":{"prompt_tokens":4,"completion_tokens":2},"choices":[{"message":{"content":"\"usage\": {\"prompt_tokens\": 999}"}}]}"#;
        let mut s = UsageScanner::for_content_type(Some(b"application/json"));
        s.feed(body);
        assert_eq!(
            s.finish(),
            Some(Usage {
                prompt_tokens: 4,
                cached_prompt_tokens: 0,
                completion_tokens: 2
            })
        );
    }
}
