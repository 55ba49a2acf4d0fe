//! The text log line, written directly: the same bytes as tracing-subscriber's default format
//! (`2026-01-01T00:00:00.000000Z  INFO target: message field="value" n=1`), without its
//! generic formatting machinery, which cost about a quarter of a plain request's user time
//! (styles that paint nothing, `Debug` of every string, the date through `Display`).
//!
//! Lines it does not take the short way, it hands to that default format: a terminal (with
//! colour), an event inside a span, a record of the `log` crate, a time before 1970 or after
//! 9999.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The text format: tracing-subscriber's default `Full` format, written the short way.
#[derive(Default)]
pub struct Text {
    fallback: Format,
}

impl<S, N> FormatEvent<S, N> for Text
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
        let stamp = (!writer.has_ansi_escapes())
            .then(|| stamp(event, ctx.event_scope().is_some()))
            .flatten();
        let Some(stamp) = stamp else {
            return self.fallback.format_event(ctx, writer, event);
        };
        write!(writer, "{stamp}")?;
        writer.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let sanitize = writer.sanitizes_ansi_escapes();
        let mut fields = Fields {
            out: &mut writer,
            sanitize,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The time stamp of a line written the short way, or `None` for one the default format
/// must write: a record of the `log` crate (its real target and level are in fields the
/// default format reads), an event in a span, a time outside what humantime writes.
pub(super) fn stamp(event: &Event<'_>, in_span: bool) -> Option<humantime::Rfc3339Timestamp> {
    if in_span || event.metadata().target() == "log" {
        return None;
    }
    writable(SystemTime::now())
}

/// `now` as tracing-subscriber writes it, `2026-01-01T00:00:00.000000Z`; `None` before 1970
/// or after 9999, where humantime cannot.
fn writable(now: SystemTime) -> Option<humantime::Rfc3339Timestamp> {
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    (secs < LAST_SECOND_OF_9999 + 1).then(|| humantime::format_rfc3339_micros(now))
}

const LAST_SECOND_OF_9999: u64 = 253_402_300_799;

/// Writes an event's fields as tracing-subscriber's default visitor does: the message as it
/// is (its terminal control characters escaped), every other field as `name=value`, strings
/// quoted, separated by one space.
struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    sanitize: bool,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn pad(&mut self) -> fmt::Result {
        if self.first {
            self.first = false;
            Ok(())
        } else {
            self.out.write_char(' ')
        }
    }

    /// `name=`, or nothing for the message.
    fn name(&mut self, field: &Field) -> fmt::Result {
        self.pad()?;
        let name = field.name();
        self.out
            .write_str(name.strip_prefix("r#").unwrap_or(name))?;
        self.out.write_char('=')
    }

    fn message(&mut self, text: fmt::Arguments<'_>) -> fmt::Result {
        self.pad()?;
        let sanitize = self.sanitize;
        Escaped(&mut *self.out, sanitize).write_fmt(text)
    }

    fn run(&mut self, step: impl FnOnce(&mut Self) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = step(self);
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.run(|f| {
            if field.name() == "message" {
                return f.message(format_args!("{value}"));
            }
            f.name(field)?;
            if value
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
            {
                f.out.write_char('"')?;
                f.out.write_str(value)?;
                f.out.write_char('"')
            } else {
                write!(f.out, "{value:?}")
            }
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.run(|f| {
            f.name(field)?;
            f.out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.run(|f| {
            f.name(field)?;
            f.out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.run(|f| {
            f.name(field)?;
            f.out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.run(|f| {
            f.name(field)?;
            let sanitize = f.sanitize;
            write!(Escaped(&mut *f.out, sanitize), "{value}")?;
            if let Some(source) = value.source() {
                write!(f.out, " {}.sources=[", field.name())?;
                let mut next = Some(source);
                let mut first = true;
                while let Some(err) = next {
                    if !first {
                        f.out.write_str(", ")?;
                    }
                    first = false;
                    write!(Escaped(&mut *f.out, sanitize), "{err}")?;
                    next = err.source();
                }
                f.out.write_char(']')?;
            }
            Ok(())
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.run(|f| {
            if field.name() == "message" {
                return f.message(format_args!("{value:?}"));
            }
            f.name(field)?;
            write!(f.out, "{value:?}")
        });
    }
}

/// Characters a terminal could act on, which tracing-subscriber escapes in messages.
fn is_control(c: char) -> bool {
    matches!(
        c,
        '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
    )
}

/// The writer, escaping terminal control characters on the way when `.1` is set.
struct Escaped<'a, 'w>(&'a mut Writer<'w>, bool);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Every control character is one of these bytes or starts with 0xC2 in UTF-8.
        if !self.1
            || !s
                .bytes()
                .any(|b| matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f | 0xc2))
        {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            match c {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                c if is_control(c) => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::logging::captured;

    /// `events` log the same lines through `Text` as through tracing-subscriber's default
    /// format.
    fn assert_same(events: impl Fn()) {
        let fmt = || {
            tracing_subscriber::fmt()
                .with_max_level(Level::TRACE)
                .with_ansi(false)
        };
        captured::assert_same_lines(
            |w| fmt().with_writer(w).event_format(Text::default()).finish(),
            |w| fmt().with_writer(w).finish(),
            0,
            |_| {},
            events,
        );
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("outer \x1b[31mfailed")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn lines_match_the_default_format() {
        assert_same(|| {
            tracing::info!("plain message");
            tracing::info!(target: "keygate::request", request_id = "req_1", key = "k", status = 200_u64, latency_us = 12_u64, stream = true, estimated = false, "request");
            tracing::warn!(delta = -5_i64, r#type = "x", "signed and raw names");
            tracing::error!(
                path = "/v1/\"quoted\"\\back\nline\ttab é \x1b[2J \u{85}",
                "strings that need Debug"
            );
            tracing::info!(dir = "C:\\dir", said = "say \"hi\"", "one escape each");
            tracing::debug!(addr = %"127.0.0.1:80", list = ?vec![1, 2], "display and debug");
            tracing::trace!(n = 1_u64);
            tracing::info!("formatted {} and \x1b[31mred\x1b[0m {}", 42, "\u{9b}x");
            tracing::info!("static \x1b[1m escape \u{7f}");
            let err = Outer(std::io::Error::other("inner \x07 cause"));
            tracing::error!(
                error = &err as &(dyn std::error::Error + 'static),
                "with sources"
            );
            let plain = std::io::Error::other("no source");
            tracing::error!(error = &plain as &(dyn std::error::Error + 'static));
        });
    }

    #[test]
    fn spans_go_to_the_default_format() {
        assert_same(|| {
            let span = tracing::info_span!("conn", peer = "1.2.3.4");
            let _entered = span.enter();
            tracing::info!(x = 1_u64, "inside");
        });
    }

    #[test]
    fn times_humantime_cannot_write_go_to_the_default_format() {
        let at = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let first = writable(at(0)).unwrap().to_string();
        assert_eq!(first, "1970-01-01T00:00:00.000000Z");
        let last = writable(at(LAST_SECOND_OF_9999)).unwrap().to_string();
        assert_eq!(last, "9999-12-31T23:59:59.000000Z");
        assert!(writable(at(LAST_SECOND_OF_9999 + 1)).is_none());
        let before = SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(1);
        assert!(writable(before).is_none());
    }

    proptest! {
        #[test]
        fn any_string_is_written_as_the_default_format_writes_it(
            value in prop_oneof![any::<String>(), "[ -~]{0,40}"],
            message in any::<String>(),
        ) {
            assert_same(|| {
                tracing::info!(value = value.as_str(), "{message}");
                tracing::info!(message = value.as_str());
            });
        }
    }
}
