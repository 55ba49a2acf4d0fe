//! Whether the upstream can be reached, checked in the background so that
//! `keygate_upstream_up` is true when nobody is sending requests: 0 from start-up until the
//! first check passes, 0 while the upstream key is missing (no request could succeed), and
//! back to 1 after an outage without waiting for a request. Requests update the gauge too, as
//! they see the upstream answer or not.
//!
//! The check is a TCP connection to the upstream's host and port (what `/readyz` reports as
//! `reachable`): it costs the upstream nothing and spends no tokens.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Upstream;
use crate::state::Gateway;

/// How long one check waits for the connection.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Opens (and closes) a TCP connection to the upstream, or says why it could not.
pub async fn reachable(upstream: &Upstream) -> Result<(), String> {
    let host = upstream
        .authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = upstream
        .authority
        .port_u16()
        .unwrap_or(crate::access::referrer::default_port(
            upstream.scheme == http::uri::Scheme::HTTPS,
        ));
    match tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".to_owned()),
    }
}

/// One check: sets `keygate_upstream_up` from the key's presence and the connection.
pub async fn check(gw: &Gateway) {
    let rt = gw.runtime();
    let up = rt.upstream_auth.is_some() && reachable(&rt.config.upstream).await.is_ok();
    gw.metering.metrics.upstream_up.set(i64::from(up));
}

/// Checks at once, then every `upstream.probe_interval` (as the config says at that moment),
/// until `stop` resolves.
pub async fn watch(gw: Arc<Gateway>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        check(&gw).await;
        let every = gw.runtime().config.upstream.probe_interval;
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
