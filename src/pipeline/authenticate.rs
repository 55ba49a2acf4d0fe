//! Authenticate: exactly one `Authorization: Bearer <key>` header, checked against the
//! snapshot's key table. The key is never echoed, logged or kept. A missing, malformed or
//! unknown key counts toward the client address's brute-force guard, and the request that
//! trips it is reported as a `suspicious_pattern`.

use std::sync::Arc;

use http::{HeaderMap, header};

use super::ctx::RequestCtx;
use crate::auth::{AuthError, KeyStore};
use crate::config::KeyPolicy;
use crate::error::Refusal;
use crate::events::{Event, EventKind};
use crate::state::Metering;

pub fn authenticate<'a>(
    headers: &HeaderMap,
    keys: &'a KeyStore,
    metering: &Metering,
    ctx: &RequestCtx,
) -> Result<&'a Arc<KeyPolicy>, Refusal> {
    let result = lookup(headers, keys, ctx);
    if let Err(Refusal::Auth(AuthError::Missing | AuthError::Unknown | AuthError::Malformed(_))) =
        &result
        && metering.guard.record_invalid(ctx.client_ip)
    {
        metering
            .metrics
            .security_event(EventKind::SuspiciousPattern);
        metering.events.record(Event {
            time: ctx.started_utc,
            kind: EventKind::SuspiciousPattern,
            reason: "too_many_invalid_keys",
            key_id: None,
            client_ip: Some(ctx.client_ip),
            detail: Some("too many missing or invalid keys within a minute".into()),
            request_id: ctx.id.to_str().ok().map(str::to_owned),
        });
    }
    result
}

fn lookup<'a>(
    headers: &HeaderMap,
    keys: &'a KeyStore,
    ctx: &RequestCtx,
) -> Result<&'a Arc<KeyPolicy>, Refusal> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Refusal::Auth(AuthError::Missing));
    };
    if values.next().is_some() {
        return Err(Refusal::AmbiguousCredentials);
    }
    let bytes = value.as_bytes();
    let token = match bytes.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => bytes[7..].trim_ascii(),
        // Another scheme (Basic, a bare key) carries no keygate key.
        _ => return Err(Refusal::Auth(AuthError::Missing)),
    };
    if token.is_empty() {
        return Err(Refusal::Auth(AuthError::Missing));
    }
    let token = std::str::from_utf8(token).map_err(|_| Refusal::Auth(AuthError::Unknown))?;
    keys.authenticate(token, ctx.started_utc)
        .map_err(Refusal::Auth)
}
