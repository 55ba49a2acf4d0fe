//! Authenticate: exactly one `Authorization: Bearer <key>` header, checked against the
//! snapshot's key table. The key is never echoed, logged or kept.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, header};

use crate::auth::{AuthError, KeyStore};
use crate::config::KeyPolicy;
use crate::error::Refusal;

pub fn authenticate<'a>(
    headers: &HeaderMap,
    keys: &'a KeyStore,
    now: SystemTime,
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
    keys.authenticate(token, now).map_err(Refusal::Auth)
}
