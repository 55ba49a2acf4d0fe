//! Listeners and connections: the accept loop (bounded connection count, back-off instead of
//! spinning on EMFILE), optional TLS termination, hyper's HTTP/1 limits, a write timeout for
//! clients that stop reading ([`write_timeout`]), and graceful drain.

pub mod write_timeout;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::ServerLimits;
use crate::pipeline;
use crate::pipeline::body::ResponseBody;
use crate::state::Gateway;
use write_timeout::WriteTimeout;

/// hyper refuses a read buffer smaller than this.
const MIN_BUF: usize = 8192;

/// Serves `listener` until `shutdown` resolves, then stops accepting and lets open requests
/// finish for up to `limits.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    gw: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = gw.runtime().config.server.limits.clone();
    let metering = gw.clone();
    let handler = move |peer, req| pipeline::handle(gw.clone(), peer, req);
    if serve(listener, limits, tls, handler, shutdown).await == Drained::Cut {
        metering
            .metering
            .cut_at_shutdown
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How the drain at shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection closed within the grace.
    Closed,
    /// The grace ended first: the connections still open are cut.
    Cut,
}

/// Serves the admin listener until `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = gw.runtime().config.server.limits.clone();
    let handler = move |peer: SocketAddr, req| crate::admin::handle(gw.clone(), peer, req);
    let _ = serve(listener, limits, None, handler, shutdown).await;
}

/// Serves any handler with the same connection handling (used by the admin listener too);
/// says whether the drain at shutdown closed every connection or ran out of grace.
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: ServerLimits,
    tls: Option<TlsAcceptor>,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Drained
where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
{
    let builder = http1_builder(&limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => { backoff = Duration::from_millis(5); conn }
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: wait for connections to close instead of spinning.
                    tracing::error!(error = %e, ?backoff, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| handler(peer, req));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = limits.header_read_timeout;
        let write_timeout = limits.client_write_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let stream = WriteTimeout::new(stream, write_timeout);
            let result =
                match tls {
                    None => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(stream), service))
                            .await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => return log_conn_error(peer, &e),
                                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                            };
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(stream), service))
                            .await
                    }
                };
            if let Err(e) = result {
                log_conn_error(peer, &e);
            }
        });
    }

    drop(listener);
    let open = graceful.count();
    tracing::info!(open_connections = open, grace = ?limits.shutdown_grace, "stopped accepting; draining");
    tokio::select! {
        () = graceful.shutdown() => {
            tracing::info!("all connections closed");
            Drained::Closed
        }
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
            Drained::Cut
        }
    }
}

fn http1_builder(limits: &ServerLimits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(MIN_BUF).max(64 * 1024))
        .keep_alive(true);
    // hyper's default of 100 keeps headers on the stack; any other value costs an allocation.
    if limits.max_headers != 100 {
        b.max_headers(limits.max_headers);
    }
    b
}

/// Errors that concern one connection attempt, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn log_conn_error(peer: SocketAddr, e: &dyn std::fmt::Display) {
    tracing::debug!(%peer, error = %e, "connection ended with an error");
}

/// Loads the PEM certificate chain and private key for TLS termination.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key from {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
    .map_err(|e| format!("invalid TLS certificate or key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
