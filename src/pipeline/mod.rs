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
pub mod request_json;
pub mod route;
pub mod settle;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, header};
use hyper::body::Incoming;

use self::body::{Metered, ResponseBody};
use self::ctx::RequestCtx;
use self::route::{RouteError, RouteKind};
use self::settle::{Outcome, Seen, Settlement};
use crate::auth::AuthError;
use crate::error::Refusal;
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
            let scanner = UsageScanner::for_content_type(
                parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .map(|v| v.as_bytes()),
            );
            let idle = rt.config.upstream.idle_timeout;
            let stripper = settlement.ctx.strip_usage.then(UsageStripper::default);
            if stripper.is_some() {
                // The client gets fewer bytes than the upstream sent.
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            let body = Metered::new(incoming, scanner, stripper, settlement, idle);
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
    if let Some(retry_after) = guard.blocked(client_ip) {
        return Err(Refusal::BlockedClient { retry_after });
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
                    gw.metering.metrics.security_event("suspicious_pattern");
                    gw.metering.events.record(crate::events::Event {
                        time: ctx.started_utc,
                        kind: "suspicious_pattern",
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
    let plan = authorize_body(rt, key, &route, &parts.headers, &body, ctx)?;
    let admission = limit::limit(
        &gw.metering,
        key,
        route.kind,
        body.len(),
        plan.max_tokens,
        ctx,
    )?;
    settlement.admission = Some(admission);
    let body = plan.rewritten.map_or(body, Bytes::from);

    let path = route.path;
    let list_models = route.kind == RouteKind::ListModels;
    let response = forward::send(gw, rt, parts, path, body, ctx).await?;
    let status = response.status();
    if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
        return Err(Refusal::UpstreamAuth);
    }
    if list_models && status.is_success() {
        return forward::filter_model_list(
            response,
            key,
            &config.models,
            &config.upstream,
            &ctx.id,
        )
        .await
        .map(Answer::Rebuilt);
    }
    Ok(Answer::Stream(response))
}

/// What the body decided about the rest of the request.
#[derive(Default)]
struct BodyPlan {
    /// The completion cap the client asked for.
    max_tokens: Option<u64>,
    /// The body to forward instead, when keygate must ask a stream for its usage.
    rewritten: Option<Vec<u8>>,
}

/// Reads model and stream flags from a JSON body and authorizes the model.
fn authorize_body(
    rt: &Runtime,
    key: &crate::config::KeyPolicy,
    route: &route::Route<'_>,
    headers: &http::HeaderMap,
    body: &Bytes,
    ctx: &mut RequestCtx,
) -> Result<BodyPlan, Refusal> {
    let is_json = headers.get(header::CONTENT_TYPE).is_some_and(|ct| {
        let ct = ct.as_bytes().trim_ascii_start();
        ct.len() >= 16 && ct[..16].eq_ignore_ascii_case(b"application/json")
    });
    let has_body = !body.is_empty();
    if route.kind.requires_model() && !(is_json && has_body) {
        return Err(Refusal::InvalidRequest(
            "This route takes a JSON body naming a 'model', with 'Content-Type: application/json'."
                .into(),
        ));
    }
    if !has_body {
        return Ok(BodyPlan::default());
    }
    if !is_json {
        // keygate cannot read which model a multipart (or other) body asks for, so it could
        // neither price it nor hold a key to its model list.
        if route.kind.may_name_model() {
            return Err(Refusal::InvalidRequest(
                "keygate only forwards JSON bodies on routes that choose a model.".into(),
            ));
        }
        return Ok(BodyPlan::default());
    }
    let fields = request_json::parse(body, rt.config.server.limits.max_json_depth)
        .map_err(|e| Refusal::InvalidRequest(e.to_string().into()))?;
    ctx.stream = fields.stream;
    match fields.model.as_deref() {
        Some(name) => {
            let model = authorize::authorize_model(key, &rt.config.models, route, name)?;
            ctx.model = Some(model.clone());
        }
        // Without a model the upstream would pick its default, which keygate cannot price.
        None if route.kind.may_name_model() => {
            return Err(Refusal::InvalidRequest(
                "The request body must name a 'model'.".into(),
            ));
        }
        None => {}
    }
    let mut plan = BodyPlan {
        max_tokens: fields.max_tokens,
        rewritten: None,
    };
    let streams_tokens = matches!(
        route.kind,
        RouteKind::ChatCompletions | RouteKind::Completions
    );
    if fields.stream && streams_tokens && fields.include_usage != Some(true) {
        let rewritten = request_json::with_include_usage(body, &fields)
            .map_err(|e| Refusal::InvalidRequest(e.to_string().into()))?;
        plan.rewritten = Some(rewritten);
        ctx.strip_usage = true;
    }
    Ok(plan)
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
        _ => {}
    }
}
