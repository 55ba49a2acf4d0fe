//! keygate's own pool of upstream connections.
//!
//! A request checks a connection out ([`Pool::checkout`]) and its own task drives it: the
//! connection is polled from the request's future and from its response body, never from a
//! task of its own. So the bytes the connection has read are decoded and handed on in the
//! task that writes them to the client, and every event the upstream sent in one packet leaves
//! in one write, with no wake-up of another task per event. When the answer has been read to
//! its end, the connection goes back to the pool; an answer abandoned midway closes it, which
//! tells the upstream to stop.
//!
//! Idle connections are kept last-in first-out, at most [`MAX_IDLE`] of them, for at most
//! the idle timeout. Nothing polls a connection while it is idle, so one is polled once on its
//! way out of the pool: a connection the upstream has closed meanwhile is thrown away then.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::conn::Conn;

/// The transport of an upstream connection: TCP, with TLS for `https://`.
pub type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
/// The hyper connection keygate drives itself.
pub type Driver = http1::Connection<Io, Full<Bytes>>;
pub type Sender = http1::SendRequest<Full<Bytes>>;

/// Most idle connections kept.
pub const MAX_IDLE: usize = 1024;
/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to the upstream timed out")]
    Timeout,
    #[error("cannot connect to the upstream: {0}")]
    Failed(String),
}

pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority` of the upstream: every connection goes there.
    origin: Uri,
    idle: Mutex<Vec<(Conn, Instant)>>,
}

impl Pool {
    /// A pool of connections to `origin` (`https://host[:port]` or `http://...`).
    pub fn new(origin: Uri, connect_timeout: Duration) -> Result<Arc<Self>, rustls::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Arc::new(Self {
            connector,
            origin,
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// An idle connection that still looks alive, if there is one.
    pub fn checkout(self: &Arc<Self>) -> Option<Conn> {
        loop {
            let (mut conn, since) = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()?;
            if since.elapsed() < IDLE_TIMEOUT && conn.idle_and_open() {
                return Some(conn);
            }
        }
    }

    /// A new connection (TCP, then TLS for `https://`).
    pub async fn connect(self: &Arc<Self>) -> Result<Conn, ConnectError> {
        let io = self
            .connector
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(|e| {
                let timed_out =
                    std::iter::successors(Some(&*e as &(dyn std::error::Error + 'static)), |err| {
                        err.source()
                    })
                    .any(|err| {
                        err.downcast_ref::<std::io::Error>()
                            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                    });
                if timed_out {
                    ConnectError::Timeout
                } else {
                    ConnectError::Failed(e.to_string())
                }
            })?;
        let (sender, driver) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| ConnectError::Failed(e.to_string()))?;
        Ok(Conn::new(sender, driver, self.clone()))
    }

    /// Takes a connection back after an answer was read to its end.
    pub(super) fn put(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }
}
