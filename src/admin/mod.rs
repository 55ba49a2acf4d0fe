//! The admin listener: `GET /metrics` (Prometheus text format), `GET /healthz` and
//! `GET /readyz` ([`health`]), the token-protected admin API under `/admin/` ([`keys`],
//! authenticated by [`auth`]) and the read-only [`dashboard`] under `/dashboard`. It answers only requests whose `Host` is allowed by
//! `admin.allowed_hosts` (421 otherwise), so a web page in an operator's browser cannot read it
//! through DNS rebinding. Defaults to 127.0.0.1:8090.

mod auth;
pub mod dashboard;
mod health;
mod keys;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::pipeline::body::ResponseBody;
use crate::state::Gateway;

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 64 * 1024;

pub async fn handle(
    gw: Arc<Gateway>,
    peer: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let rt = gw.runtime();
    let host = req
        .headers()
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()));
    if !host.is_some_and(|h| rt.config.admin.allowed_hosts.allows(h)) {
        return Ok(error(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            "This Host is not served here; add it to admin.allowed_hosts.",
        ));
    }
    let path = req.uri().path().to_owned();
    let response = match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => health::metrics(&gw).await,
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "pass"})),
        (&Method::GET, "/readyz") => health::readyz(&gw).await,
        (_, p) if p.starts_with("/admin/") => admin_api(&gw, peer.ip().to_canonical(), req).await,
        (&Method::GET, p) if p == "/dashboard" || p.starts_with("/dashboard/") => {
            dashboard::handle(&gw, peer.ip().to_canonical(), &req).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "unknown_route",
            "Unknown admin route.",
        ),
    };
    Ok(response)
}

/// `/admin/*`: the admin token as a bearer token.
async fn admin_api(
    gw: &Arc<Gateway>,
    client_ip: IpAddr,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let rt = gw.runtime();
    if let Err(denied) = auth::check(gw, &rt, req.headers(), client_ip, auth::Scheme::Bearer).await
    {
        let why = match denied {
            auth::Denied::Disabled => {
                "The admin API is disabled: set the variable named by admin.token_env."
            }
            auth::Denied::WrongToken => "Missing or wrong admin token.",
        };
        let mut r = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": {"message": why, "type": "authentication_error", "code": "invalid_admin_token"}}),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "body too large",
            );
        }
    };
    let segments: Vec<&str> = parts
        .uri
        .path()
        .trim_start_matches("/admin/")
        .split('/')
        .collect();
    let (status, value) =
        keys::handle(gw, &parts.method, &segments, parts.uri.query(), &body).await;
    json_response(status, &value)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<ResponseBody> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": "invalid_request_error", "code": code}}),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
