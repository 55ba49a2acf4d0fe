//! Removes what keygate added to a stream for its own accounting. When a client streams
//! without `stream_options.include_usage`, keygate asks the upstream for usage anyway; this
//! takes the usage-only event and the `"usage":null` members back out, so the client sees
//! what the upstream would have sent it.

use std::sync::LazyLock;

use bytes::Bytes;
use memchr::memmem;
use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Deserialize)]
struct Shape {
    choices: Option<Vec<IgnoredAny>>,
    usage: Option<IgnoredAny>,
}

static NULL_USAGE: LazyLock<[memmem::Finder<'static>; 4]> = LazyLock::new(|| {
    [
        memmem::Finder::new(b",\"usage\":null"),
        memmem::Finder::new(b", \"usage\": null"),
        memmem::Finder::new(b"\"usage\":null,"),
        memmem::Finder::new(b"\"usage\": null, "),
    ]
});

#[derive(Default)]
pub struct UsageStripper {
    partial: Vec<u8>,
    /// The line before was a dropped event's data: drop the blank line that ends it.
    drop_blank: bool,
}

impl UsageStripper {
    /// Returns the bytes to pass on for this chunk (complete lines only). Each complete line
    /// (without its line ending) is also shown to `scan`, so the usage scanner reads the
    /// stream in the same pass.
    pub fn process(&mut self, chunk: &[u8], scan: &mut impl FnMut(&[u8])) -> Bytes {
        let mut out = Vec::with_capacity(chunk.len() + self.partial.len());
        let mut rest = chunk;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (line, after) = rest.split_at(nl + 1);
            rest = after;
            if self.partial.is_empty() {
                scan(&line[..line.len() - 1]);
                self.line(line, &mut out);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                scan(&whole[..whole.len() - 1]);
                self.line(&whole, &mut out);
            }
        }
        self.partial.extend_from_slice(rest);
        Bytes::from(out)
    }

    /// Whatever is left when the stream ends (shown to `scan` as a last line).
    pub fn finish(&mut self, scan: &mut impl FnMut(&[u8])) -> Bytes {
        let rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            scan(&rest);
        }
        Bytes::from(rest)
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if std::mem::take(&mut self.drop_blank) && content.is_empty() {
            return;
        }
        let Some(data) = content.strip_prefix(b"data:") else {
            out.extend_from_slice(line);
            return;
        };
        if super::usage::USAGE_FINDER.find(data).is_none() {
            out.extend_from_slice(line);
            return;
        }
        // Every event but the last says `"usage":null`: take it out without parsing the event.
        // (Inside JSON strings quotes are escaped, so the pattern can only be the member.)
        for pattern in NULL_USAGE.iter() {
            if let Some(at) = pattern.find(line) {
                let pattern = pattern.needle();
                out.extend_from_slice(&line[..at]);
                out.extend_from_slice(&line[at + pattern.len()..]);
                return;
            }
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
            let mut out = Vec::new();
            let mut lines = 0;
            let mut scan = |_: &[u8]| lines += 1;
            for c in upstream.chunks(size) {
                out.extend_from_slice(&s.process(c, &mut scan));
            }
            out.extend_from_slice(&s.finish(&mut scan));
            assert_eq!(lines, 6);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(expected),
                "chunk size {size}"
            );
        }
    }
}
