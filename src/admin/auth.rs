//! Who may use the admin listener's protected routes: the holder of the admin token (the
//! value of the variable named by `admin.token_env`), sent as `Authorization: Bearer <token>`
//! or, for the dashboard in a browser, as the password of HTTP Basic auth (any user name).
//!
//! The token is compared in constant time, as SHA-256 digests, so neither its content nor its
//! length leaks through timing. Wrong tokens are counted per address by the admin listener's
//! own brute-force guard (never the API's, so they cannot lock API clients out), recorded as
//! security events, and slowed down once an address has made too many; the right token is
//! never refused.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use http::{HeaderMap, header};
use sha2::Digest;

use crate::events::{Event, EventKind};
use crate::state::{Gateway, Runtime};

/// How long an answer to a wrong token waits once its address has tripped the guard.
const SLOW_DOWN: Duration = Duration::from_secs(2);

/// Why a request may not use a protected admin route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No admin token is configured: the admin API and dashboard are off.
    Disabled,
    /// The token is missing or wrong.
    WrongToken,
}

/// How the token was presented, which decides how a refusal asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Basic,
}

/// Checks the admin token of a request; a wrong one is counted, recorded and (for an address
/// past its limit) answered late.
pub async fn check(
    gw: &Gateway,
    rt: &Runtime,
    headers: &HeaderMap,
    client_ip: IpAddr,
    scheme: Scheme,
) -> Result<(), Denied> {
    let Some(expected) = rt.admin_token else {
        return Err(Denied::Disabled);
    };
    let presented = presented(headers, scheme).map(|t| <[u8; 32]>::from(sha2::Sha256::digest(t)));
    let ok =
        presented.is_some_and(|p| bool::from(subtle::ConstantTimeEq::ct_eq(&p[..], &expected[..])));
    if ok {
        return Ok(());
    }
    let metering = &gw.metering;
    if metering.admin_guard.record_invalid(client_ip) {
        metering
            .metrics
            .security_event(EventKind::SuspiciousPattern);
        metering.events.record(Event {
            time: SystemTime::now(),
            kind: EventKind::SuspiciousPattern,
            reason: "too_many_wrong_admin_tokens",
            key_id: None,
            client_ip: Some(client_ip),
            detail: Some("wrong admin tokens are now answered slowly".into()),
            request_id: None,
        });
    }
    metering.events.record(Event {
        time: SystemTime::now(),
        kind: EventKind::Unauthorized,
        reason: "invalid_admin_token",
        key_id: None,
        client_ip: Some(client_ip),
        detail: None,
        request_id: None,
    });
    if metering.admin_guard.blocked(client_ip).is_some() {
        // One wrong token at a time, however many connections ask.
        let _turn = metering.admin_slow_lane.acquire().await;
        tokio::time::sleep(SLOW_DOWN).await;
    }
    Err(Denied::WrongToken)
}

/// The token as presented with `scheme`, if any.
fn presented(headers: &HeaderMap, scheme: Scheme) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    match scheme {
        Scheme::Bearer => {
            let rest = strip_scheme(value, b"bearer ")?;
            Some(rest.trim_ascii().to_vec())
        }
        Scheme::Basic => {
            let encoded = strip_scheme(value, b"basic ")?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim_ascii())
                .ok()?;
            let colon = decoded.iter().position(|&b| b == b':')?;
            Some(decoded[colon + 1..].to_vec())
        }
    }
}

fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    let head = value.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| &value[scheme.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_bearer_and_basic() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer  tok ".parse().unwrap());
        assert_eq!(presented(&h, Scheme::Bearer), Some(b"tok".to_vec()));
        assert_eq!(presented(&h, Scheme::Basic), None);
        // "anyone:tok:with:colons"
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:tok:with:colons");
        h.insert(
            header::AUTHORIZATION,
            format!("basic {basic}").parse().unwrap(),
        );
        assert_eq!(
            presented(&h, Scheme::Basic),
            Some(b"tok:with:colons".to_vec())
        );
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(presented(&h, Scheme::Basic), None);
    }
}
