//! Response bodies: a small buffered one for keygate's own answers, and [`Metered`], which
//! passes the upstream's answer through while it drives the upstream connection, reads usage,
//! watches for an idle upstream, and settles the request when the body ends, fails or is
//! dropped. Everything the connection has already received leaves in one frame, so the events
//! an upstream sent in one packet reach the client in one write.
//!
//! When the client leaves before a non-streamed answer is complete, the answer is not thrown
//! away: a task keeps reading it (within the upstream timeouts) so the request is billed the
//! usage the upstream reports, which it charges whether or not anyone reads it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::settle::{Outcome, Seen, Settlement};
use crate::upstream::UsageScanner;
use crate::upstream::conn::Conn;
use crate::upstream::usage_strip::UsageStripper;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum ResponseBody {
    Full(Option<Bytes>),
    Metered(Box<Metered>),
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        ResponseBody::Full(Some(bytes))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Metered(m) => m.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Metered(m) => m.flow.is_none() && m.broken.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Metered(m) => match &m.flow {
                Some(flow) if flow.stripper.is_none() => flow.inner.size_hint(),
                Some(_) => SizeHint::default(),
                None if m.broken.is_some() => SizeHint::default(),
                None => SizeHint::with_exact(0),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?} in the middle of its answer")]
pub struct IdleTimeout(Duration);

/// How long an abandoned non-streamed answer is still read, to bill its real usage.
#[derive(Debug, Clone, Copy)]
pub struct Continuation {
    /// The longest silence between two parts of the answer.
    pub idle: Duration,
    /// The longest the rest of the answer may take in all.
    pub total: Duration,
}

/// The upstream's answer on its way to the client.
pub struct Metered {
    /// `Some` until the request is settled.
    flow: Option<Flow>,
    /// The upstream broke off: reported once the bytes before it have been flushed.
    broken: Option<BoxError>,
    /// The client's connection was given a chance to flush before the break-off is reported
    /// (reporting it aborts the connection, losing whatever is still buffered).
    flushed_before_break: bool,
}

/// Frames joined into one: the first kept as it came, later ones copied after it (so a body
/// that arrives as one frame is never copied). Used for what one poll of an answer could
/// gather, and for a request body.
#[derive(Default)]
pub(super) enum Gathered {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Gathered {
    pub(super) fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        match self {
            Gathered::Empty => *self = Gathered::One(data),
            _ => self.write(data.len(), |all| all.extend_from_slice(&data)),
        }
    }

    /// Lets `write` append to what was gathered so far, with room for `extra` more bytes.
    fn write(&mut self, extra: usize, write: impl FnOnce(&mut BytesMut)) {
        let mut all = match std::mem::take(self) {
            Gathered::Many(all) => all,
            Gathered::One(first) => {
                let mut all = BytesMut::with_capacity(first.len() + extra);
                all.extend_from_slice(&first);
                all
            }
            Gathered::Empty => BytesMut::new(),
        };
        all.reserve(extra);
        write(&mut all);
        *self = Gathered::Many(all);
    }

    /// What was gathered, if anything; empty again after.
    pub(super) fn take(&mut self) -> Option<Bytes> {
        match std::mem::take(self) {
            Gathered::Empty => None,
            Gathered::One(data) => Some(data),
            Gathered::Many(all) => (!all.is_empty()).then(|| all.freeze()),
        }
    }
}

struct Flow {
    inner: Incoming,
    /// The connection the answer arrives on, driven from here; back to the pool once the
    /// answer has been read to its end.
    conn: Option<Conn>,
    scanner: UsageScanner,
    /// Set when keygate asked for usage the client did not: takes it back out.
    stripper: Option<UsageStripper>,
    settlement: Settlement,
    idle_timeout: Duration,
    last_frame: Instant,
    /// Armed lazily: re-armed only when it fires early, not on every frame.
    idle: Pin<Box<Sleep>>,
    /// Set for answers worth reading to the end when the client leaves.
    continuation: Option<Continuation>,
}

impl Flow {
    fn finish(mut self, outcome: Outcome) {
        if outcome == Outcome::Completed
            && let Some(conn) = self.conn.take()
        {
            conn.release();
        }
        let seen = Seen {
            usage: self.scanner.finish(),
            streamed_tokens: self.scanner.streamed_tokens(),
        };
        self.settlement.finish(outcome, seen);
    }

    /// Passes on what the stripper still holds once the answer has ended.
    fn finish_stripping(&mut self, out: &mut Gathered) {
        let scanner = &mut self.scanner;
        if let Some(s) = self.stripper.as_mut() {
            out.write(0, |out| s.finish(&mut |line| scanner.line(line), out));
        }
    }

    /// Reads a frame of the answer: the usage scanner sees it and, when keygate asked for usage
    /// the client did not, the stripper takes that back out. What the client gets is added to
    /// `out`.
    fn observe(&mut self, data: Bytes, out: &mut Gathered) {
        let scanner = &mut self.scanner;
        match self.stripper.as_mut() {
            // One pass: the stripper splits the lines, shows them to the scanner and copies
            // what passes straight into the gathered bytes.
            Some(s) => out.write(data.len(), |out| {
                s.process(&data, &mut |line| scanner.line(line), out);
            }),
            None => {
                scanner.feed_frame(&data);
                out.push(data);
            }
        }
    }

    /// Drives the connection and polls the answer for its next frame.
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let inner = &mut self.inner;
        match self.conn.as_mut() {
            Some(conn) => conn.poll_driven(cx, |cx| Pin::new(&mut *inner).poll_frame(cx)),
            None => Pin::new(inner).poll_frame(cx),
        }
    }

    /// Reads the rest of an answer nobody will receive, then settles it with the usage found
    /// (or, failing that, as an abort, which bills the whole reservation).
    async fn read_to_end(mut self, bounds: Continuation) {
        let deadline = Instant::now() + bounds.total;
        // What passes the stripper goes nowhere; one buffer takes it, frame after frame.
        let mut unread = Gathered::default();
        loop {
            let wait = bounds
                .idle
                .min(deadline.saturating_duration_since(Instant::now()));
            let next = std::future::poll_fn(|cx| self.poll_next(cx));
            match tokio::time::timeout(wait, next).await {
                Ok(Some(Ok(frame))) => {
                    // Through the stripper when there is one: it holds the start of the line
                    // the client's part ended in, which may be the usage event.
                    if let Ok(data) = frame.into_data() {
                        self.observe(data, &mut unread);
                        // Nobody receives it: emptied for the next frame, keeping the buffer.
                        match &mut unread {
                            Gathered::Many(all) => all.clear(),
                            other => *other = Gathered::Empty,
                        }
                    }
                }
                Ok(None) => {
                    self.finish_stripping(&mut unread);
                    break;
                }
                Ok(Some(Err(_))) | Err(_) => {
                    tracing::warn!(target: "keygate::upstream", "could not read the rest of an answer after its client left; billing its reservation");
                    break;
                }
            }
        }
        self.finish(Outcome::ClientAborted);
    }
}

impl Metered {
    pub fn new(
        inner: Incoming,
        conn: Conn,
        scanner: UsageScanner,
        stripper: Option<UsageStripper>,
        settlement: Settlement,
        idle_timeout: Duration,
        continuation: Option<Continuation>,
    ) -> Self {
        let now = Instant::now();
        Self {
            flow: Some(Flow {
                inner,
                conn: Some(conn),
                scanner,
                stripper,
                settlement,
                idle_timeout,
                last_frame: now,
                idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
                continuation,
            }),
            broken: None,
            flushed_before_break: false,
        }
    }

    fn settle(&mut self, outcome: Outcome) {
        if let Some(flow) = self.flow.take() {
            flow.finish(outcome);
        }
    }

    /// Passes on every frame the connection can produce now, as one: the events an upstream
    /// sent together leave together, in one write, while an event that arrives alone leaves
    /// at once.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut out = Gathered::default();
        // Frames read in this poll arrived together: the clock is read once for them.
        let mut fresh = false;
        loop {
            let Some(flow) = self.flow.as_mut() else {
                // Gathered bytes first; a break-off, if any, once they are flushed.
                if let Some(data) = out.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if self.broken.is_some() && !self.flushed_before_break {
                    // Yield once: hyper flushes what it has before polling again.
                    self.flushed_before_break = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                return Poll::Ready(self.broken.take().map(Err));
            };
            match flow.poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers carry nothing an OpenAI-compatible client reads; they are dropped.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    fresh = true;
                    flow.observe(data, &mut out);
                    // With a Content-Length, hyper stops polling once that many bytes are out
                    // and drops the body: settle now, while this is known to be the whole answer.
                    if flow.inner.is_end_stream() {
                        flow.finish_stripping(&mut out);
                        self.settle(Outcome::Completed);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(target: "keygate::upstream", error = %e, "upstream answer broke off");
                    self.settle(Outcome::UpstreamError);
                    self.broken = Some(e.into());
                }
                Poll::Ready(None) => {
                    flow.finish_stripping(&mut out);
                    self.settle(Outcome::Completed);
                }
                Poll::Pending => {
                    if fresh {
                        flow.last_frame = Instant::now();
                    }
                    if let Some(data) = out.take() {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    loop {
                        if flow.idle.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        let deadline = flow.last_frame + flow.idle_timeout;
                        if Instant::now() >= deadline {
                            let timeout = flow.idle_timeout;
                            tracing::warn!(target: "keygate::upstream", ?timeout, "upstream stalled mid-answer");
                            self.settle(Outcome::UpstreamIdle);
                            return Poll::Ready(Some(Err(IdleTimeout(timeout).into())));
                        }
                        flow.idle.as_mut().reset(deadline);
                    }
                }
            }
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        let Some(flow) = self.flow.take() else {
            return;
        };
        // The client left before the answer ended.
        match (flow.continuation, tokio::runtime::Handle::try_current()) {
            (Some(bounds), Ok(runtime)) => {
                runtime.spawn(flow.read_to_end(bounds));
            }
            _ => flow.finish(Outcome::ClientAborted),
        }
    }
}
