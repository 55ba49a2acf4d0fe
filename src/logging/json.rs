//! The JSON log line (`--log-format json`), written directly: the same bytes as
//! tracing-subscriber's JSON format with flattened events
//! (`{"timestamp":"…","level":"INFO","message":"request","key":"k",…,"target":"…"}`), without
//! building the time stamp as a `String` and a serde map per line. Strings and names are
//! still escaped by serde_json.
//!
//! Lines it does not take the short way, it hands to that format: an event inside a span (the
//! line then lists the spans), a record of the `log` crate, a time before 1970 or after 9999.

use std::fmt::{self, Write as _};
use std::io;

use serde::Serializer as _;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::text::stamp;

/// The JSON format with flattened events, written the short way.
pub struct Json {
    fallback: Format<format::Json>,
}

impl Default for Json {
    fn default() -> Self {
        Self {
            fallback: Format::default().json().flatten_event(true),
        }
    }
}

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // An event in a span gets the span and the span list (the current span even for an
        // explicit root, as the JSON format looks it up).
        let in_span = event.parent().is_some() || ctx.lookup_current().is_some();
        let Some(stamp) = stamp(event, in_span) else {
            return self.fallback.format_event(ctx, writer, event);
        };
        write!(writer, "{{\"timestamp\":\"{stamp}")?;
        writer.write_str(match *meta.level() {
            Level::TRACE => "\",\"level\":\"TRACE\"",
            Level::DEBUG => "\",\"level\":\"DEBUG\"",
            Level::INFO => "\",\"level\":\"INFO\"",
            Level::WARN => "\",\"level\":\"WARN\"",
            Level::ERROR => "\",\"level\":\"ERROR\"",
        })?;
        let mut fields = Fields {
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        json_str(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`, as tracing-serde's map visitor serializes it.
struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_char(',')?;
                json_str(self.out, field.name())?;
                self.out.write_char(':')?;
                value(self.out)
            })();
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |out| json_str(out, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| {
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, |out| {
            serializer(out).serialize_f64(value).map_err(|_| fmt::Error)
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |out| {
            // Short values (an address, a duration) are formatted on the stack first.
            let mut short = Short {
                buf: [0; 64],
                len: 0,
            };
            if write!(short, "{value:?}").is_ok()
                && let Some(text) = short.buf.get(..short.len)
                && let Ok(text) = std::str::from_utf8(text)
            {
                return json_str(out, text);
            }
            serializer(out)
                .collect_str(&format_args!("{value:?}"))
                .map_err(|_| fmt::Error)
        });
    }
}

/// `s` as a JSON string: as it is when nothing in it needs escaping (no quote, backslash or
/// control character, which is all serde_json escapes), else escaped by serde_json.
fn json_str(out: &mut Writer<'_>, s: &str) -> fmt::Result {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.write_char('"')?;
        out.write_str(s)?;
        return out.write_char('"');
    }
    serializer(out).serialize_str(s).map_err(|_| fmt::Error)
}

/// Up to 64 bytes of formatted text, on the stack.
struct Short {
    buf: [u8; 64],
    len: usize,
}

impl fmt::Write for Short {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn serializer<'a, 'w>(out: &'a mut Writer<'w>) -> serde_json::Serializer<Adapter<'a, 'w>> {
    serde_json::Serializer::new(Adapter(out))
}

/// serde_json writes bytes; the log writer takes text. serde_json only ever writes whole
/// UTF-8 sequences (it splits strings at the ASCII characters it escapes).
struct Adapter<'a, 'w>(&'a mut Writer<'w>);

impl io::Write for Adapter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = std::str::from_utf8(buf).map_err(io::Error::other)?;
        self.0.write_str(text).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::logging::captured;

    /// `events` log the same lines through `Json` as through tracing-subscriber's JSON
    /// format, both set up as `cli::init_tracing` sets up `--log-format json`; every line is
    /// JSON.
    fn assert_same(events: impl Fn()) {
        let fmt = || {
            tracing_subscriber::fmt()
                .with_max_level(Level::TRACE)
                .with_ansi(false)
                .json()
                .flatten_event(true)
        };
        captured::assert_same_lines(
            |w| fmt().with_writer(w).event_format(Json::default()).finish(),
            |w| fmt().with_writer(w).finish(),
            "{\"timestamp\":\"".len(),
            |line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            },
            events,
        );
    }

    #[test]
    fn lines_match_the_json_format() {
        assert_same(|| {
            tracing::info!("plain message");
            tracing::info!(target: "keygate::request", request_id = "req_1", key = "k", status = 200_u64, latency_us = 12_u64, stream = true, estimated = false, "request");
            tracing::warn!(
                delta = -5_i64,
                r#type = "x",
                ratio = 0.25_f64,
                nan = f64::NAN,
                "numbers and raw names"
            );
            tracing::error!(
                path = "/v1/\"quoted\"\\back\nline\ttab é \x1b[2J \u{85} \u{2028}",
                "strings that need escaping"
            );
            tracing::debug!(addr = %"127.0.0.1:80", list = ?vec!["a\"b"], "display and debug");
            // Past the 64 bytes formatted on the stack: the serde_json path.
            tracing::debug!(long = ?vec!["x\"y"; 40], "a long debug value");
            tracing::trace!(n = 1_u64);
            tracing::info!("formatted {} and \x1b[31mred\x1b[0m {}", 42, "\u{9b}x");
            let err = std::io::Error::other("cause \"quoted\"");
            tracing::error!(
                error = &err as &(dyn std::error::Error + 'static),
                "an error"
            );
            tracing::info!(big = 1_u128 << 100, bytes = tracing::field::display("b"));
        });
    }

    #[test]
    fn spans_go_to_the_json_format() {
        assert_same(|| {
            let span = tracing::info_span!("conn", peer = "1.2.3.4");
            let _entered = span.enter();
            tracing::info!(x = 1_u64, "inside");
        });
    }

    proptest! {
        #[test]
        fn any_string_is_written_as_the_json_format_writes_it(
            value in prop_oneof![any::<String>(), "[ -~]{0,40}"],
            message in any::<String>(),
        ) {
            assert_same(|| {
                tracing::info!(value = value.as_str(), "{message}");
                tracing::info!(message = value.as_str(), other = ?message);
            });
        }
    }
}
