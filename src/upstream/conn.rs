//! A connection checked out of the [`Pool`] for one request, and driven by that request: the
//! caller polls [`Conn::drive`] alongside whatever waits on the connection (the response head,
//! then the response body). Only when the answer has been read to its end does
//! [`Conn::release`] give it back to the pool; dropped anywhere else, it closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;

use super::pool::{Driver, Pool, Sender};

pub struct Conn {
    sender: Sender,
    /// `None` once the connection has ended (closed by either side, or failed). Boxed once
    /// per connection: it holds the connection's buffers, and requests move `Conn` around.
    driver: Option<Box<Driver>>,
    pool: Arc<Pool>,
    /// Came from the pool (it may have been closed by the upstream meanwhile).
    reused: bool,
}

impl Conn {
    pub(super) fn new(sender: Sender, driver: Driver, pool: Arc<Pool>) -> Self {
        Self {
            sender,
            driver: Some(Box::new(driver)),
            pool,
            reused: false,
        }
    }

    /// Lets the connection read, write and decode what it can; it registers `cx` to be woken
    /// when it can do more.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = self.driver.as_mut()
            && let Poll::Ready(result) = Pin::new(&mut **driver).poll(cx)
        {
            if let Err(e) = result {
                tracing::debug!(target: "keygate::upstream", error = %e, "upstream connection failed");
            }
            self.driver = None;
        }
    }

    /// Polls `inner`, which this connection fills (the answer's head, then its body), driving
    /// the connection as needed. While either can go on, both are polled with a waker that
    /// does nothing: each hand-off between them (hyper passes the body one frame at a time)
    /// would otherwise wake this very task while it runs, and the runtime would poll it once
    /// more for nothing. Only when neither can go on are they polled with `cx`: `inner` first,
    /// so that the connection, driven after it, wakes `cx` when it hands over something new
    /// or when the socket is ready.
    pub fn poll_driven<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut inner: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let mut quiet = Context::from_waker(Waker::noop());
        if let Poll::Ready(v) = inner(&mut quiet) {
            return Poll::Ready(v);
        }
        self.drive(&mut quiet);
        if let Poll::Ready(v) = inner(cx) {
            return Poll::Ready(v);
        }
        self.drive(cx);
        inner(cx)
    }

    /// Whether the connection came from the pool rather than a fresh connect.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Polls an idle connection once: true if it is still open and ready for a request.
    pub(super) fn idle_and_open(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        self.reused = true;
        self.driver.is_some() && self.sender.is_ready()
    }

    /// Sends a request and waits for the head of its answer, driving the connection meanwhile.
    /// A request that never reached the connection comes back inside the error.
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Full<Bytes>>>> {
        let answer = self.sender.try_send_request(request);
        let mut answer = std::pin::pin!(answer);
        std::future::poll_fn(|cx| self.poll_driven(cx, |cx| answer.as_mut().poll(cx))).await
    }

    /// Gives the connection back to the pool, if it can carry another request.
    pub fn release(mut self) {
        // Let the connection finish the answer's bookkeeping before asking whether it is ready.
        self.drive(&mut Context::from_waker(Waker::noop()));
        if self.driver.is_some() && self.sender.is_ready() {
            let pool = self.pool.clone();
            pool.put(self);
        }
    }
}
