//! Removes what keygate added to a stream for its own accounting. When a client streams
//! without `stream_options.include_usage`, keygate asks the upstream for usage anyway; this
//! takes the usage-only event and the `"usage":null` members back out, so the client sees
//! what the upstream would have sent it.

use bytes::BytesMut;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::usage::USAGE_FINDER;

#[derive(Deserialize)]
struct Shape {
    choices: Option<Vec<IgnoredAny>>,
    usage: Option<IgnoredAny>,
}

#[derive(Default)]
pub struct UsageStripper {
    partial: Vec<u8>,
    /// The line before was a dropped event's data: drop the blank line that ends it.
    drop_blank: bool,
}

impl UsageStripper {
    /// Appends to `out` the bytes to pass on for this chunk (complete lines only). Each
    /// complete line (without its line ending) is also shown to `scan`, so the usage scanner
    /// reads the stream in the same pass.
    pub fn process(&mut self, chunk: &[u8], scan: &mut impl FnMut(&[u8]), out: &mut BytesMut) {
        out.reserve(chunk.len() + self.partial.len());
        let mut rest = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (line, after) = rest.split_at(nl + 1);
            rest = after;
            if self.partial.is_empty() {
                scan(&line[..line.len() - 1]);
                self.line(line, out);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                scan(&whole[..whole.len() - 1]);
                self.line(&whole, out);
            }
        }
        self.partial.extend_from_slice(rest);
    }

    /// Appends to `out` whatever is left when the stream ends (shown to `scan` as a last
    /// line).
    pub fn finish(&mut self, scan: &mut impl FnMut(&[u8]), out: &mut BytesMut) {
        let rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            scan(&rest);
            out.extend_from_slice(&rest);
        }
    }

    fn line(&mut self, line: &[u8], out: &mut BytesMut) {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if std::mem::take(&mut self.drop_blank) && content.is_empty() {
            return;
        }
        let Some(data) = content.strip_prefix(b"data:") else {
            out.extend_from_slice(line);
            return;
        };
        let start = b"data:".len();
        // Every event but the last says `"usage":null`: take it out without parsing the event.
        // (Inside JSON strings quotes are escaped, so `"usage"` is a member.) The member keygate
        // asked for is the event's own, written after its choices: the last one.
        let Some(last) = USAGE_FINDER.find_iter(data).last() else {
            out.extend_from_slice(line);
            return;
        };
        if let Some(cut) = null_member(data, last) {
            out.extend_from_slice(&line[..start + cut.start]);
            out.extend_from_slice(&line[start + cut.end..]);
            return;
        }
        if let Ok(Shape {
            choices: Some(choices),
            usage: Some(_),
        }) = serde_json::from_slice::<Shape>(data)
            && choices.is_empty()
        {
            self.drop_blank = true;
            return;
        }
        out.extend_from_slice(line);
    }
}

/// The bytes to cut for a `"usage": null` member whose name starts at `at`: with the comma
/// before it, or else the comma (and spaces) after it, so the object stays valid JSON. `None`
/// when the value is not `null` or the member has no comma on either side.
fn null_member(data: &[u8], at: usize) -> Option<std::ops::Range<usize>> {
    let name_end = at + b"\"usage\"".len();
    let after_name = skip_spaces(data, name_end);
    if data.get(after_name) != Some(&b':') {
        return None;
    }
    let value = skip_spaces(data, after_name + 1);
    let end = value + 4;
    if data.get(value..end) != Some(b"null") {
        return None;
    }
    let before = data[..at].trim_ascii_end();
    if before.ends_with(b",") {
        return Some(before.len() - 1..end);
    }
    let after = skip_spaces(data, end);
    if data.get(after) == Some(&b',') {
        return Some(at..skip_spaces(data, after + 1));
    }
    None
}

/// The index of the first non-space byte of `data` at or after `from`.
fn skip_spaces(data: &[u8], from: usize) -> usize {
    data.get(from..).map_or(from, |rest| {
        from + (rest.len() - rest.trim_ascii_start().len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_added_by_keygate_is_taken_out_across_any_chunking() {
        let upstream = b"data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
data: [DONE]\n\n";
        let expected = b"data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
        for size in [1, 5, 17, upstream.len()] {
            let mut s = UsageStripper::default();
            let mut out = BytesMut::new();
            let mut lines = 0;
            let mut scan = |_: &[u8]| lines += 1;
            for c in upstream.chunks(size) {
                s.process(c, &mut scan, &mut out);
            }
            s.finish(&mut scan, &mut out);
            assert_eq!(lines, 6);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(expected),
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn a_null_usage_member_is_cut_with_one_comma_wherever_it_stands() {
        let cases: [(&str, &str); 10] = [
            (r#"{"a":1,"usage":null}"#, r#"{"a":1}"#),
            (r#"{"a":1, "usage" : null }"#, r#"{"a":1 }"#),
            (r#"{"usage":null,"a":1}"#, r#"{"a":1}"#),
            (r#"{"usage": null ,  "a":1}"#, r#"{"a":1}"#),
            (r#"{"a":1,"usage":null,"b":2}"#, r#"{"a":1,"b":2}"#),
            // Alone, it cannot go without leaving a dangling comma: kept as it is.
            (r#"{"usage":null}"#, r#"{"usage":null}"#),
            (
                r#"{"choices":[{"index":0}],"usage":{"prompt_tokens":1}}"#,
                r#"{"choices":[{"index":0}],"usage":{"prompt_tokens":1}}"#,
            ),
            // A nested member stays, whether the event's own is null or not.
            (
                r#"{"choices":[{"delta":{},"usage":null}],"usage":{"prompt_tokens":1}}"#,
                r#"{"choices":[{"delta":{},"usage":null}],"usage":{"prompt_tokens":1}}"#,
            ),
            (
                r#"{"choices":[{"delta":{},"usage":null,"x":1}],"usage":null}"#,
                r#"{"choices":[{"delta":{},"usage":null,"x":1}]}"#,
            ),
            // The same words inside a string are escaped: only the member goes.
            (
                r#"{"choices":[{"delta":{"content":"\"usage\":null, ok"}}],"usage":null}"#,
                r#"{"choices":[{"delta":{"content":"\"usage\":null, ok"}}]}"#,
            ),
        ];
        for (event, expected) in cases {
            let mut s = UsageStripper::default();
            let mut out = BytesMut::new();
            s.process(
                format!("data: {event}\n\n").as_bytes(),
                &mut |_| {},
                &mut out,
            );
            assert_eq!(
                String::from_utf8_lossy(&out),
                format!("data: {expected}\n\n"),
                "{event}"
            );
            serde_json::from_str::<serde_json::Value>(expected).unwrap();
        }
    }
}
