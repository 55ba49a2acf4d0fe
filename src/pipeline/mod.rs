//! A request's path through keygate, phase by phase:
//! [`admit`] -> [`authenticate`] -> route -> [`authorize`] (source) -> [`limit`] (enter) ->
//! body -> [`plan`] (model, reservation) -> [`limit`] (reserve) -> [`forward`] -> [`settle`].
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
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, Response, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use self::body::{Continuation, Metered, ResponseBody};
use self::ctx::RequestCtx;
use self::route::{RouteError, RouteKind};
use self::settle::{Outcome, Seen, Settlement};
use crate::error::Refusal;
use crate::state::{Gateway, Runtime};
use crate::upstream::UsageScanner;
use crate::upstream::conn::Conn;
use crate::upstream::usage_strip::UsageStripper;

/// What the pipeline produced for a request it did not refuse.
enum Answer {
    /// The upstream's answer, to be streamed through and metered, and its connection.
    Stream(Response<Incoming>, Conn),
    /// An answer keygate rebuilt (a filtered model list).
    Rebuilt(Response<ResponseBody>),
}

/// The most of an unread body keygate reads (and throws away) before an early refusal, so the
/// connection stays usable for the client's next request.
const DRAIN_MAX_BYTES: u64 = 64 * 1024;
/// How long it waits for that body.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

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
    let (parts, body) = req.into_parts();
    // For the request log line: cheap handles (the method is inline, the URI shares its bytes).
    settlement.ctx.method = parts.method.clone();
    settlement.ctx.uri = parts.uri.clone();
    let mut body = Some(body);
    let response = match process(&gw, &rt, peer, parts, &mut body, &mut settlement).await {
        Ok(Answer::Stream(response, conn)) => stream(&rt, response, conn, settlement),
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
            let mut response = refusal.to_response(&settlement.ctx.id);
            // A body left unread would make hyper close the connection after this answer
            // without saying so, and a pooling client would send its next request into the
            // void. Read a small one; otherwise say the connection closes.
            let reusable = match body.take() {
                Some(unread) => drain(unread).await,
                None => !settlement.ctx.body_unfinished,
            };
            if !reusable {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            settlement.finish(Outcome::Refused(refusal.reason()), Seen::default());
            response
        }
    };
    Ok(response)
}

/// Reads and drops an unread request body of up to [`DRAIN_MAX_BYTES`] within
/// [`DRAIN_TIMEOUT`]; false when it is larger, slower or broken.
async fn drain(mut body: Incoming) -> bool {
    if body.is_end_stream() {
        return true;
    }
    if body.size_hint().lower() > DRAIN_MAX_BYTES {
        return false;
    }
    let read = async {
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                total += data.len() as u64;
                if total > DRAIN_MAX_BYTES {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIMEOUT, read)
        .await
        .unwrap_or(false)
}

/// Builds the response that streams the upstream's answer through [`Metered`].
fn stream(
    rt: &Runtime,
    response: Response<Incoming>,
    conn: Conn,
    mut settlement: Settlement,
) -> Response<ResponseBody> {
    settlement.set_status(response.status().as_u16());
    let (mut parts, incoming) = response.into_parts();
    crate::upstream::headers::to_client(&mut parts.headers, &settlement.ctx.id);
    if let Some(admission) = &settlement.admission {
        limit::set_rate_headers(&mut parts.headers, &admission.headers);
    }
    let ctx = &settlement.ctx;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes());
    let scanner = UsageScanner::for_content_type(content_type);
    if matches!(scanner, UsageScanner::Sse { .. }) {
        // nginx and other proxies buffer answers unless told not to: events must not wait.
        parts.headers.insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
    }
    // Usage is read only from answers of routes that report it.
    let scanner = if ctx.reports_usage {
        scanner
    } else {
        UsageScanner::None
    };
    let upstream = &rt.config.upstream;
    // An answer that reports usage is read to its end even if the client leaves, to bill what
    // the upstream charges for it: always when it is not streamed (the upstream finishes it
    // anyway), and for streams on keys with a budget (the upstream may too; streams of other
    // keys are cut, which tells the upstream to stop, and billed by what was seen).
    let continuation =
        (ctx.reports_usage && (!ctx.stream || ctx.hard_budget)).then_some(Continuation {
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
        conn,
        scanner,
        stripper,
        settlement,
        upstream.idle_timeout,
        continuation,
    );
    Response::from_parts(parts, ResponseBody::Metered(Box::new(body)))
}

async fn process(
    gw: &Gateway,
    rt: &Runtime,
    peer: SocketAddr,
    parts: Parts,
    body: &mut Option<Incoming>,
    settlement: &mut Settlement,
) -> Result<Answer, Refusal> {
    let config = &rt.config;
    let ctx = &mut settlement.ctx;
    admit::admit(&parts, peer, config, ctx)?;
    // The path is checked before the key so that a refusal for a bad path never depends on
    // whether the key is valid.
    route::check_canonical(parts.uri.path()).map_err(|_| Refusal::NotCanonical)?;
    if gw.metering.guard.blocked(ctx.client_ip).is_some() {
        return Err(Refusal::BlockedClient);
    }
    // A cheap handle (reference-counted) so the route can borrow the path while `parts` moves on.
    let uri = parts.uri.clone();
    // Resolved before the key so that a refusal of the key is counted under the endpoint the
    // client called; an unknown route is refused only after the key, as before.
    let route = route::resolve(&parts.method, uri.path());
    if let Ok(r) = &route {
        ctx.endpoint = r.endpoint;
    }
    let key = authenticate::authenticate(&parts.headers, &rt.keys, &gw.metering, ctx)?;
    ctx.key_id = Some(key.id.clone());
    let route = route.map_err(|e| match e {
        RouteError::NotCanonical => Refusal::NotCanonical,
        RouteError::NotFound => Refusal::UnknownRoute,
        RouteError::MethodNotAllowed => Refusal::MethodNotAllowed,
    })?;
    route::check_query(&route, &parts.method, uri.query())?;
    authorize::authorize_source(key, ctx.client_ip, &parts.headers, &route)?;
    if let (RouteKind::RetrieveModel, Some(name)) = (route.kind, route.param) {
        let model = authorize::authorize_listed_model(key, &config.models, name)?;
        ctx.model = Some(model.clone());
    }

    // Admitted before the body is read: the key's concurrency and request rate bound what
    // it can make keygate buffer, and the gateway-wide budget bounds all bodies together.
    let entry = limit::enter(&gw.metering, key)?;
    let incoming = body.take().ok_or(Refusal::BodyTimeout)?;
    let (body, _buffered) = forward::read_body(
        incoming,
        &parts.headers,
        &config.server.limits,
        &gw.body_budget,
        ctx,
    )
    .await?;
    let rewritten = plan::plan(rt, key, &route, &parts.headers, &body, ctx)?;
    let admission = limit::reserve(&gw.metering, key, entry, ctx).await?;
    settlement.admission = Some(admission);
    let body = rewritten.map_or(body, Bytes::from);

    let path = route.path;
    let list_models = route.kind == RouteKind::ListModels;
    let (response, conn) = forward::send(gw, rt, parts, path, body, &mut settlement.ctx).await?;
    let status = response.status();
    if let Some(refusal) = forward::upstream_refusal(&response) {
        return Err(refusal);
    }
    if list_models && status.is_success() {
        return forward::filter_model_list(
            response,
            conn,
            key,
            &config.models,
            &config.upstream,
            &settlement.ctx.id,
        )
        .await
        .map(Answer::Rebuilt);
    }
    Ok(Answer::Stream(response, conn))
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
