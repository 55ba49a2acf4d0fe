//! Admit: checks that cost nothing and need no key. URI length, request framing that could
//! smuggle a second request past the upstream, and the client's address.

use std::net::SocketAddr;

use http::request::Parts;
use http::{HeaderMap, header};

use super::ctx::RequestCtx;
use crate::config::Config;
use crate::error::Refusal;

pub fn admit(
    req: &Parts,
    peer: SocketAddr,
    config: &Config,
    ctx: &mut RequestCtx,
) -> Result<(), Refusal> {
    ctx.client_ip =
        crate::access::client_ip::resolve(peer, &req.headers, &config.server.trusted_proxies)
            .map_err(|_| Refusal::BadForwardedFor)?;
    let uri_len = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > config.server.limits.max_uri_bytes {
        return Err(Refusal::UriTooLong);
    }
    check_framing(&req.headers)
}

/// Refuses framing that two HTTP parsers could read differently: any transfer coding other
/// than a single `chunked`, and `Transfer-Encoding` together with `Content-Length`. (hyper
/// already drops the `Content-Length` of such a request and closes the connection after it;
/// the second check keeps keygate safe should that ever change.)
fn check_framing(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = codings.next() else {
        return Ok(());
    };
    if codings.next().is_some()
        || !first
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked")
    {
        return Err(Refusal::InvalidRequest(
            "Transfer-Encoding other than a single 'chunked' is not accepted.".into(),
        ));
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(Refusal::InvalidRequest(
            "Transfer-Encoding and Content-Length together are not accepted.".into(),
        ));
    }
    Ok(())
}
