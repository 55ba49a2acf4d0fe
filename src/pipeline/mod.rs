//! A request's path through keygate, phase by phase:
//! [`admit`] -> [`authenticate`] -> route -> [`authorize`] (source) -> body ->
//! [`authorize`] (model) -> [`forward`] -> [`settle`].
//! Every refusal is a [`Refusal`]; every request, refused or not, is settled exactly once.

pub mod admit;
pub mod authenticate;
pub mod authorize;
pub mod body;
pub mod ctx;
pub mod forward;
pub mod limit;
pub mod plan;
pub mod request_json;
pub mod route;
pub mod settle;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, header};
use hyper::body::Incoming;

use self::body::{Continuation, Metered, ResponseBody};
use self::ctx::RequestCtx;
use self::route::{RouteError, RouteKind};
use self::settle::{Outcome, Seen, Settlement};
use crate::auth::AuthError;
use crate::error::Refusal;
use crate::events::EventKind;
use crate::state::{Gateway, Runtime};
use crate::upstream::UsageScanner;
use crate::upstream::usage_strip::UsageStripper;

/// What the pipeline produced for a request it did not refuse.
enum Answer {
    /// The upstream's answer, to be streamed through and metered.
    Stream(Response<Incoming>),
    /// An answer keygate rebuilt (a filtered model list).
    Rebuilt(Response<ResponseBody>),
}

/// hyper's service entry point: one request in, one response out, never an error.
pub async fn handle(
    gw: Arc<Gateway>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let rt = gw.runtime();
    let metering = gw.metering.clone();
    let mut settlement = Settlement::new(
        RequestCtx::new(metering.clock.now_utc(), peer.ip()),
        metering,
    );
    let response = match process(&gw, &rt, peer, req, &mut settlement).await {
        Ok(Answer::Stream(response)) => {
            settlement.set_status(response.status().as_u16());
            let (mut parts, incoming) = response.into_parts();
            crate::upstream::headers::to_client(&mut parts.headers, &settlement.ctx.id);
            if let Some(admission) = &settlement.admission {
                limit::set_rate_headers(&mut parts.headers, &admission.headers);
            }
            let ctx = &settlement.ctx;
            // Usage is read only from answers of routes that report it.
            let scanner = if ctx.reports_usage {
                UsageScanner::for_content_type(
                    parts
                        .headers
                        .get(header::CONTENT_TYPE)
                        .map(|v| v.as_bytes()),
                )
            } else {
                UsageScanner::None
            };
            let upstream = &rt.config.upstream;
            // A non-streamed answer that reports usage is read to its end even if the client
            // leaves, to bill what the upstream charges for it.
            let continuation = (ctx.reports_usage && !ctx.stream).then_some(Continuation {
                idle: upstream.idle_timeout,
                total: upstream.first_byte_timeout,
            });
            let stripper = ctx.strip_usage.then(UsageStripper::default);
            if stripper.is_some() {
                // The client gets fewer bytes than the upstream sent.
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            let body = Metered::new(
                incoming,
                scanner,
                stripper,
                settlement,
                upstream.idle_timeout,
                continuation,
            );
            Response::from_parts(parts, ResponseBody::Metered(Box::new(body)))
        }
        Ok(Answer::Rebuilt(mut response)) => {
            settlement.set_status(response.status().as_u16());
            if let Some(admission) = &settlement.admission {
                limit::set_rate_headers(response.headers_mut(), &admission.headers);
            }
            settlement.finish(Outcome::Completed, Seen::default());
            response
        }
        Err(refusal) => {
            log_refusal(&refusal, &settlement.ctx);
            settlement.set_status(refusal.status().as_u16());
            let response = refusal.to_response(&settlement.ctx.id);
            settlement.finish(Outcome::Refused(refusal.reason()), Seen::default());
            response
        }
    };
    Ok(response)
}

async fn process(
    gw: &Gateway,
    rt: &Runtime,
    peer: SocketAddr,
    req: Request<Incoming>,
    settlement: &mut Settlement,
) -> Result<Answer, Refusal> {
    let config = &rt.config;
    let ctx = &mut settlement.ctx;
    admit::admit(&req, peer, config, ctx)?;
    // The path is checked before the key so that a refusal for a bad path never depends on
    // whether the key is valid.
    route::check_canonical(req.uri().path()).map_err(|_| Refusal::NotCanonical)?;
    let client_ip = ctx.client_ip;
    let guard = &gw.metering.guard;
    if guard.blocked(client_ip).is_some() {
        return Err(Refusal::BlockedClient);
    }
    let key = match authenticate::authenticate(req.headers(), &rt.keys, ctx.started_utc) {
        Ok(key) => key,
        Err(refusal) => {
            if let Refusal::Auth(AuthError::Unknown | AuthError::Malformed(_)) = refusal {
                let limits = &config.server.limits;
                let tripped = guard.record_invalid(
                    client_ip,
                    limits.invalid_keys_per_minute,
                    limits.invalid_key_cooldown,
                );
                if let Some(count) = tripped {
                    gw.metering
                        .metrics
                        .security_event(EventKind::SuspiciousPattern);
                    gw.metering.events.record(crate::events::Event {
                        time: ctx.started_utc,
                        kind: EventKind::SuspiciousPattern,
                        reason: "too_many_invalid_keys",
                        key_id: None,
                        client_ip: Some(client_ip),
                        detail: Some(format!("{count} invalid keys within a minute")),
                    });
                }
            }
            return Err(refusal);
        }
    };
    ctx.key_id = Some(key.id.clone());

    let (parts, body) = req.into_parts();
    // A cheap handle (reference-counted) so the route can borrow the path while `parts` moves on.
    let uri = parts.uri.clone();
    let route = route::resolve(&parts.method, uri.path()).map_err(|e| match e {
        RouteError::NotCanonical => Refusal::NotCanonical,
        RouteError::NotFound => Refusal::UnknownRoute,
        RouteError::MethodNotAllowed => Refusal::MethodNotAllowed,
    })?;
    ctx.endpoint = route.endpoint;
    authorize::authorize_source(key, client_ip, &parts.headers, &route)?;

    if let (RouteKind::RetrieveModel, Some(name)) = (route.kind, route.param) {
        let model = authorize::authorize_listed_model(key, &config.models, name)?;
        ctx.model = Some(model.clone());
    }

    let body = forward::read_body(body, &parts.headers, &config.server.limits).await?;
    let rewritten = plan::plan(rt, key, &route, &parts.headers, &body, ctx)?;
    let admission = limit::limit(&gw.metering, key, ctx)?;
    settlement.admission = Some(admission);
    let body = rewritten.map_or(body, Bytes::from);

    let path = route.path;
    let list_models = route.kind == RouteKind::ListModels;
    let response = forward::send(gw, rt, parts, path, body, &mut settlement.ctx).await?;
    let status = response.status();
    if let Some(refusal) = forward::upstream_refusal(&response) {
        return Err(refusal);
    }
    if list_models && status.is_success() {
        return forward::filter_model_list(
            response,
            key,
            &config.models,
            &config.upstream,
            &settlement.ctx.id,
        )
        .await
        .map(Answer::Rebuilt);
    }
    Ok(Answer::Stream(response))
}

fn log_refusal(refusal: &Refusal, ctx: &RequestCtx) {
    let id = ctx.id.to_str().unwrap_or("");
    match refusal {
        Refusal::UpstreamAuth => tracing::error!(
            target: "keygate::upstream",
            request_id = id,
            "the upstream REJECTED keygate's upstream API key (401/403): check upstream.api_key_env"
        ),
        Refusal::UpstreamKeyMissing => tracing::error!(
            target: "keygate::upstream",
            request_id = id,
            "no upstream API key: the variable named by upstream.api_key_env is unset or empty"
        ),
        Refusal::UpstreamStatus { status, .. } if status.as_u16() == 402 => tracing::error!(
            target: "keygate::upstream",
            request_id = id,
            "the upstream refused keygate's account (402 payment required): check its balance"
        ),
        Refusal::UpstreamStatus { status, .. } => tracing::warn!(
            target: "keygate::upstream",
            request_id = id,
            status = status.as_u16(),
            "the upstream answered with an error; the client got keygate's own error body"
        ),
        _ => {}
    }
}
