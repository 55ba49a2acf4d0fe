//! Forward: read the client's body (bounded in size and time), send the request upstream on
//! the pooled client with keygate's credentials, and bound the wait for the answer's head.

use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Extensions, HeaderMap, HeaderValue, Response, Uri, Version, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::ctx::RequestCtx;
use crate::config::{KeyPolicy, Models, ServerLimits, Upstream};
use crate::error::Refusal;
use crate::state::{Gateway, Runtime};
use crate::upstream::conn::Conn;
use crate::upstream::pool::ConnectError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The largest model list keygate will read from the upstream to filter it.
const MAX_MODEL_LIST: usize = 4 * 1024 * 1024;

/// Reads the whole request body, counting it against the gateway-wide budget of buffered
/// body bytes (held by the returned permit until the request has been sent). Refused with 413
/// from `Content-Length` before reading, or as soon as a chunked body passes the limit; with
/// 408 if it does not arrive in time; with 503 when the budget is used up.
pub async fn read_body(
    mut body: Incoming,
    headers: &HeaderMap,
    limits: &ServerLimits,
    budget: &Arc<Semaphore>,
    ctx: &mut RequestCtx,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Refusal> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = limits.max_body_bytes;
    let mut held: Option<OwnedSemaphorePermit> = None;
    // Bytes are counted as they arrive, so a request that declares a large body and sends
    // nothing holds nothing.
    let mut hold = |bytes: usize| -> Result<(), Refusal> {
        let n = u32::try_from(bytes).map_err(|_| Refusal::BodyTooLarge)?;
        let permit = budget
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Refusal::BodyBufferFull)?;
        match held.as_mut() {
            Some(p) => p.merge(permit),
            None => held = Some(permit),
        }
        Ok(())
    };
    let result = async {
        if declared.is_some_and(|len| len > max) {
            return Err(Refusal::BodyTooLarge);
        }
        let read = async {
            let mut gathered = super::body::Gathered::default();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| {
                    Refusal::InvalidRequest("The request body could not be read.".into())
                })?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                total += data.len() as u64;
                if total > max {
                    return Err(Refusal::BodyTooLarge);
                }
                hold(data.len())?;
                gathered.push(data);
            }
            Ok(gathered.take().unwrap_or_default())
        };
        tokio::time::timeout(limits.body_read_timeout, read)
            .await
            .unwrap_or(Err(Refusal::BodyTimeout))
    }
    .await;
    match result {
        Ok(bytes) => Ok((bytes, held)),
        Err(refusal) => {
            ctx.body_unfinished = true;
            Err(refusal)
        }
    }
}

/// Sends the request upstream on a pooled connection (a fresh one if none is idle) and waits,
/// bounded by `upstream.first_byte_timeout`, for the head of its answer. Returns the answer
/// with the connection, which the caller drives while it reads the body.
pub async fn send(
    gw: &Gateway,
    rt: &Runtime,
    mut parts: Parts,
    path: &str,
    body: Bytes,
    ctx: &mut RequestCtx,
) -> Result<(Response<Incoming>, Conn), Refusal> {
    let upstream = &rt.config.upstream;
    let auth = rt
        .upstream_auth
        .as_ref()
        .ok_or(Refusal::UpstreamKeyMissing)?;
    parts.uri = upstream_path(upstream, path, parts.uri.query())?;
    parts.version = Version::HTTP_11;
    parts.extensions = Extensions::new();
    crate::upstream::headers::to_upstream(
        &mut parts.headers,
        auth,
        &upstream.host_header,
        ctx.client_ip,
        &ctx.id,
    );
    let request = http::Request::from_parts(parts, Full::new(body));

    let started = Instant::now();
    ctx.upstream_started = Some(started);
    let up = &gw.metering.metrics.upstream_up;
    let result =
        tokio::time::timeout(upstream.first_byte_timeout, exchange(gw, request, ctx)).await;
    ctx.upstream_first_byte = Some(started.elapsed());
    match result {
        Ok(Ok((response, conn))) => {
            up.set(1);
            ctx.upstream_status = Some(response.status().as_u16());
            Ok((response, conn))
        }
        Ok(Err(refusal)) => {
            if !ctx.reached_upstream {
                up.set(0);
            }
            Err(refusal)
        }
        Err(_) => Err(Refusal::UpstreamTimeout),
    }
}

/// Checks a connection out (or opens one), sends, and waits for the answer's head. A pooled
/// connection the upstream closed before the request was written is replaced once.
async fn exchange(
    gw: &Gateway,
    request: http::Request<Full<Bytes>>,
    ctx: &mut RequestCtx,
) -> Result<(Response<Incoming>, Conn), Refusal> {
    let mut request = Some(request);
    for _ in 0..2 {
        let mut conn = match gw.pool.checkout() {
            Some(conn) => conn,
            None => gw.pool.connect().await.map_err(|e| {
                tracing::warn!(target: "keygate::upstream", request_id = ctx.id.to_str().unwrap_or(""), error = %e, "cannot connect to the upstream");
                match e {
                    ConnectError::Timeout => Refusal::UpstreamTimeout,
                    ConnectError::Failed(_) => Refusal::UpstreamUnreachable,
                }
            })?,
        };
        let Some(req) = request.take() else { break };
        // From here the upstream may receive the request and charge for it.
        ctx.reached_upstream = true;
        match conn.send(req).await {
            Ok(response) => return Ok((response, conn)),
            Err(mut e) => {
                let unsent = e.take_message();
                if conn.reused()
                    && let Some(unsent) = unsent
                {
                    // The pooled connection was closed under us before the request left.
                    ctx.reached_upstream = false;
                    request = Some(unsent);
                    continue;
                }
                let e = e.into_error();
                tracing::warn!(target: "keygate::upstream", request_id = ctx.id.to_str().unwrap_or(""), error = %e, "upstream request failed");
                return Err(if e.is_timeout() {
                    Refusal::UpstreamTimeout
                } else {
                    Refusal::UpstreamUnreachable
                });
            }
        }
    }
    Err(Refusal::UpstreamUnreachable)
}

/// keygate's own refusal for an upstream answer whose body must not reach the client: 401/403
/// (the upstream refused keygate's key), 402, 429 and 5xx (their bodies describe keygate's
/// upstream account). 429 keeps its `retry-after`. Other answers, 400, 404 and 422 among
/// them, concern the client's own request and pass through.
pub fn upstream_refusal<B>(response: &Response<B>) -> Option<Refusal> {
    let status = response.status();
    match status.as_u16() {
        401 | 403 => Some(Refusal::UpstreamAuth),
        402 | 429 | 500..=599 => {
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Some(Refusal::UpstreamStatus {
                status,
                retry_after,
            })
        }
        _ => None,
    }
}

/// The origin-form URI (`/base/path?query`) the upstream receives.
fn upstream_path(upstream: &Upstream, path: &str, query: Option<&str>) -> Result<Uri, Refusal> {
    let mut pq = String::with_capacity(
        upstream.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    pq.push_str(&upstream.base_path);
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let pq = PathAndQuery::try_from(pq)
        .map_err(|_| Refusal::InvalidRequest("The request URI is invalid.".into()))?;
    Ok(Uri::from(pq))
}

/// `GET /models`: the upstream's list, keeping only the models this key may use.
pub async fn filter_model_list(
    response: Response<Incoming>,
    mut conn: Conn,
    key: &KeyPolicy,
    models: &Models,
    upstream: &Upstream,
    request_id: &HeaderValue,
) -> Result<Response<ResponseBody>, Refusal> {
    let (mut parts, body) = response.into_parts();
    let mut body = Limited::new(body, MAX_MODEL_LIST);
    let read = tokio::time::timeout(upstream.idle_timeout, async {
        let mut bytes = BytesMut::new();
        loop {
            let frame = std::future::poll_fn(|cx| {
                conn.poll_driven(cx, |cx| std::pin::Pin::new(&mut body).poll_frame(cx))
            })
            .await;
            match frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        bytes.extend_from_slice(data);
                    }
                }
                Some(Err(_)) => return Err(Refusal::UpstreamUnreachable),
                None => return Ok(bytes.freeze()),
            }
        }
    })
    .await;
    let bytes = match read {
        Ok(Ok(b)) => b,
        Ok(Err(refusal)) => return Err(refusal),
        Err(_) => return Err(Refusal::UpstreamTimeout),
    };
    conn.release();
    let mut list: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| Refusal::UpstreamUnreachable)?;
    let Some(data) = list.get_mut("data").and_then(|d| d.as_array_mut()) else {
        return Err(Refusal::UpstreamUnreachable);
    };
    data.retain(|entry| {
        entry
            .get("id")
            .and_then(|id| id.as_str())
            .and_then(|id| models.get(id))
            .is_some_and(|m| key.may_use(m))
    });
    let out = Bytes::from(list.to_string());
    crate::upstream::headers::to_client(&mut parts.headers, request_id);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(Response::from_parts(parts, ResponseBody::full(out)))
}
