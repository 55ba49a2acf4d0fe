//! Response bodies: a small buffered one for keygate's own answers, and [`Metered`], which
//! passes the upstream's answer through frame by frame while it reads usage, watches for an
//! idle upstream, and settles the request when the body ends, fails or is dropped.
//!
//! When the client leaves before a non-streamed answer is complete, the answer is not thrown
//! away: a task keeps reading it (within the upstream timeouts) so the request is billed the
//! usage the upstream reports, which it charges whether or not anyone reads it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::settle::{Outcome, Seen, Settlement};
use crate::upstream::UsageScanner;
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
            ResponseBody::Metered(m) => m.flow.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Metered(m) => match &m.flow {
                Some(flow) if flow.stripper.is_none() => flow.inner.size_hint(),
                Some(_) => SizeHint::default(),
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
}

struct Flow {
    inner: Incoming,
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
        let seen = Seen {
            usage: self.scanner.finish(),
            streamed_tokens: self.scanner.streamed_tokens(),
        };
        self.settlement.finish(outcome, seen);
    }

    /// Reads the rest of an answer nobody will receive, then settles it with the usage found
    /// (or, failing that, as an abort, which bills the whole reservation).
    async fn read_to_end(mut self, bounds: Continuation) {
        let deadline = Instant::now() + bounds.total;
        loop {
            let wait = bounds
                .idle
                .min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, self.inner.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.scanner.feed(data);
                    }
                }
                Ok(None) => break,
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
                scanner,
                stripper,
                settlement,
                idle_timeout,
                last_frame: now,
                idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
                continuation,
            }),
        }
    }

    fn settle(&mut self, outcome: Outcome) {
        if let Some(flow) = self.flow.take() {
            flow.finish(outcome);
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(flow) = self.flow.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut flow.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    flow.last_frame = Instant::now();
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    flow.scanner.feed(&data);
                    let mut data = match flow.stripper.as_mut() {
                        Some(s) => s.process(&data),
                        None => data,
                    };
                    // With a Content-Length, hyper stops polling once that many bytes are out
                    // and drops the body: settle now, while this is known to be the whole answer.
                    let ended = flow.inner.is_end_stream();
                    if ended {
                        if let Some(rest) = flow.stripper.as_mut().map(UsageStripper::finish) {
                            data = [data, rest].concat().into();
                        }
                        self.settle(Outcome::Completed);
                    }
                    if data.is_empty() {
                        if ended {
                            return Poll::Ready(None);
                        }
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(target: "keygate::upstream", error = %e, "upstream answer broke off");
                    self.settle(Outcome::UpstreamError);
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    let rest = flow
                        .stripper
                        .as_mut()
                        .map(UsageStripper::finish)
                        .filter(|b| !b.is_empty());
                    self.settle(Outcome::Completed);
                    return Poll::Ready(rest.map(|b| Ok(Frame::data(b))));
                }
                Poll::Pending => loop {
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
                },
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
