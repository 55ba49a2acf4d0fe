//! Response bodies: a small buffered one for keygate's own answers, and [`Metered`], which
//! passes the upstream's answer through frame by frame while it reads usage, watches for an
//! idle upstream, and settles the request when the body ends, fails or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
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
            ResponseBody::Metered(m) => Pin::new(&mut **m).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(bytes) => bytes.is_none(),
            ResponseBody::Metered(m) => m.settlement.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Metered(m) if m.stripper.is_some() => SizeHint::default(),
            ResponseBody::Metered(m) => m.inner.size_hint(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?} in the middle of its answer")]
pub struct IdleTimeout(Duration);

/// The upstream's answer on its way to the client.
pub struct Metered {
    inner: Incoming,
    scanner: UsageScanner,
    /// Set when keygate asked for usage the client did not: takes it back out.
    stripper: Option<UsageStripper>,
    /// `Some` until the request is settled.
    settlement: Option<Settlement>,
    idle_timeout: Duration,
    last_frame: Instant,
    /// Armed lazily: re-armed only when it fires early, not on every frame.
    idle: Pin<Box<Sleep>>,
}

impl Metered {
    pub fn new(
        inner: Incoming,
        scanner: UsageScanner,
        stripper: Option<UsageStripper>,
        settlement: Settlement,
        idle_timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            scanner,
            stripper,
            settlement: Some(settlement),
            idle_timeout,
            last_frame: now,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        }
    }

    fn settle(&mut self, outcome: Outcome) {
        if let Some(s) = self.settlement.take() {
            let seen = Seen {
                usage: self.scanner.finish(),
                content_chunks: self.scanner.content_chunks(),
            };
            s.finish(outcome, seen);
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.settlement.is_none() {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.last_frame = Instant::now();
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    self.scanner.feed(&data);
                    let mut data = match self.stripper.as_mut() {
                        Some(s) => s.process(&data),
                        None => data,
                    };
                    // With a Content-Length, hyper stops polling once that many bytes are out
                    // and drops the body: settle now, while this is known to be the whole answer.
                    let ended = self.inner.is_end_stream();
                    if ended {
                        if let Some(rest) = self.stripper.as_mut().map(UsageStripper::finish) {
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
                    let rest = self
                        .stripper
                        .as_mut()
                        .map(UsageStripper::finish)
                        .filter(|b| !b.is_empty());
                    self.settle(Outcome::Completed);
                    return Poll::Ready(rest.map(|b| Ok(Frame::data(b))));
                }
                Poll::Pending => loop {
                    if self.idle.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let deadline = self.last_frame + self.idle_timeout;
                    if Instant::now() >= deadline {
                        tracing::warn!(target: "keygate::upstream", timeout = ?self.idle_timeout, "upstream stalled mid-answer");
                        self.settle(Outcome::UpstreamIdle);
                        return Poll::Ready(Some(Err(IdleTimeout(self.idle_timeout).into())));
                    }
                    self.idle.as_mut().reset(deadline);
                },
            }
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.settle(Outcome::ClientAborted);
    }
}
