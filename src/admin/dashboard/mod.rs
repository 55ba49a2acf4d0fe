//! The built-in dashboard on the admin listener, for people who hand out keys and want to look
//! rather than read tables:
//!
//! - `GET /dashboard`: every key with status, created, last used, spend against budget and the
//!   utilization of each limit, then the recent security events across keys;
//! - `GET /dashboard/keys/{id}`: one key's daily requests, tokens, cost and error rate as
//!   charts, cost by model, p50/p95 latency, recent security events, limit suggestions and
//!   cost advice (404 for an unknown key);
//! - `GET /dashboard/events`: the recent security events.
//!
//! The pages ask for the admin token as the password of HTTP Basic auth (any user name),
//! checked by the admin guard like every protected admin route. They are read-only (nothing
//! here writes the config or the ledger) and show no secret and no key hash, since the
//! [`model`] they render holds none. They make no external request: [`pages`] renders
//! self-contained HTML with inline CSS and [`svg`] charts drawn by keygate, so the dashboard
//! works offline and on a phone.
//!
//! Data flows one way: the ledger and the live limit counters fill a [`model`] value, [`pages`]
//! renders it, the router sends the HTML.

pub mod data;
pub mod model;
pub mod pages;
pub mod svg;

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use super::auth;
use crate::pipeline::body::ResponseBody;
use crate::state::Gateway;

/// The content security policy of every page: nothing but its own inline styles, and the key
/// search submitted to the dashboard itself.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Serves `GET /dashboard...` for someone who presents the admin token with Basic auth.
pub async fn handle(
    gw: &Gateway,
    client_ip: IpAddr,
    req: &Request<Incoming>,
) -> Response<ResponseBody> {
    let rt = gw.runtime();
    if let Err(denied) = auth::check(gw, &rt, req.headers(), client_ip, auth::Scheme::Basic).await {
        let why = match denied {
            auth::Denied::Disabled => {
                "The dashboard is disabled: set the variable named by admin.token_env."
            }
            auth::Denied::WrongToken => {
                "Sign in with the admin token as the password (any user name)."
            }
        };
        let mut r = html(StatusCode::UNAUTHORIZED, pages::message("Sign in", why));
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"keygate\", charset=\"UTF-8\""),
        );
        return r;
    }
    match req.uri().path().trim_end_matches('/') {
        "/dashboard" => {
            let query = query_param(req.uri().query(), "q").unwrap_or_default();
            html(
                StatusCode::OK,
                pages::overview(&data::overview(gw, &query).await),
            )
        }
        "/dashboard/events" => html(StatusCode::OK, pages::events(&data::events(gw))),
        p => match p.strip_prefix("/dashboard/keys/").map(percent_decode) {
            Some(Some(id)) => match data::key(gw, &id).await {
                Some(page) => html(StatusCode::OK, pages::key(&page)),
                None => html(
                    StatusCode::NOT_FOUND,
                    pages::not_found(&format!("Key {id}")),
                ),
            },
            _ => html(StatusCode::NOT_FOUND, pages::not_found("This page")),
        },
    }
}

/// A query parameter's value, form-decoded (`+` is a space); `None` when absent or invalid.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            percent_decode(&v.replace('+', " "))
        } else {
            None
        }
    })
}

/// Decodes `%XX` escapes of a path segment; `None` for bad escapes or non-UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn html(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, CSP),
    ] {
        r.headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    r
}
