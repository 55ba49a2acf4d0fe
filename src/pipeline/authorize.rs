//! Authorize: may this key make this request, from here? Source address and referrer first
//! (cheap, before the body is read), then scope and model once the body has named the model.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

use super::route::Route;
use crate::config::{KeyPolicy, Model, Models};
use crate::error::Refusal;

/// Checks the key's IP and referrer rules and the route's own scope.
pub fn authorize_source(
    key: &KeyPolicy,
    client_ip: IpAddr,
    headers: &HeaderMap,
    route: &Route<'_>,
) -> Result<(), Refusal> {
    if !key.allowed_ips.allows(client_ip) {
        return Err(Refusal::IpNotAllowed);
    }
    if !key.allowed_referrers.allows(headers) {
        return Err(Refusal::ReferrerNotAllowed);
    }
    match route.kind.scope() {
        Some(scope) if !key.scopes.contains(scope) => Err(Refusal::ScopeNotAllowed(scope)),
        _ => Ok(()),
    }
}

/// Checks a model named by the client, on every route: configured (else 404), its scope
/// granted to the key (for chat and completions the model's scope is the request's scope) and
/// in the key's model list.
pub fn authorize_model<'m>(
    key: &KeyPolicy,
    models: &'m Models,
    name: &str,
) -> Result<&'m Arc<Model>, Refusal> {
    let model = models.get(name).ok_or(Refusal::ModelNotFound)?;
    if !key.scopes.contains(model.scope) {
        return Err(Refusal::ScopeNotAllowed(model.scope));
    }
    let listed = key
        .models
        .as_ref()
        .is_none_or(|list| list.iter().any(|m| **m == *model.name));
    if !listed {
        return Err(Refusal::ModelNotAllowed);
    }
    Ok(model)
}

/// For `GET /models/{id}`: a model the key may not use does not exist for it.
pub fn authorize_listed_model<'m>(
    key: &KeyPolicy,
    models: &'m Models,
    name: &str,
) -> Result<&'m Arc<Model>, Refusal> {
    models
        .get(name)
        .filter(|m| key.may_use(m))
        .ok_or(Refusal::ModelNotFound)
}
