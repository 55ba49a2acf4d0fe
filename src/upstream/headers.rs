//! Header hygiene in both directions. Toward the upstream: the client's credentials, the
//! hop-by-hop headers and every header the client named in `Connection` are removed before
//! keygate sets its own `Authorization`, `X-Forwarded-For` and `X-Request-Id`, so nothing a
//! client sends can remove or replace them; `Host` is the upstream's. Toward the client:
//! hop-by-hop headers are removed.

use std::io::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Never crosses the gateway in either direction.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Request headers keygate replaces or that must not reach the upstream. The OpenAI account
/// selectors would let a client pick which upstream organization or project is billed.
static CLIENT_ONLY: [HeaderName; 16] = [
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    header::EXPECT,
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    header::UPGRADE,
    header::HOST,
    header::CONTENT_LENGTH,
    header::COOKIE,
    header::ACCEPT_ENCODING,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
    HeaderName::from_static("x-request-id"),
];

/// Removes every header named in `Connection` (a client can mark any header hop-by-hop).
fn remove_connection_listed(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
}

/// Removes every header `drop` names, found in one pass over the headers present: a message
/// carries a handful, fewer than the lists checked, and a lookup per listed name cost more
/// than the pass.
fn remove_where(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    // On the stack: a message rarely carries more than a few of them.
    let mut found: [Option<HeaderName>; 8] = Default::default();
    let mut more = Vec::new();
    let mut slots = found.iter_mut();
    for name in headers.keys().filter(|name| drop(name)) {
        match slots.next() {
            Some(slot) => *slot = Some(name.clone()),
            None => more.push(name.clone()),
        }
    }
    for name in found.into_iter().flatten().chain(more) {
        headers.remove(name);
    }
}

/// Rewrites a client's request headers, in place, into what the upstream receives.
pub fn to_upstream(
    headers: &mut HeaderMap,
    upstream_auth: &HeaderValue,
    host: &HeaderValue,
    client_ip: IpAddr,
    request_id: &HeaderValue,
) {
    if headers.contains_key(header::CONNECTION) {
        remove_connection_listed(headers);
    }
    remove_where(headers, |name| {
        HOP_BY_HOP.contains(name) || CLIENT_ONLY.contains(name) || name == X_FORWARDED_FOR
    });
    headers.insert(header::AUTHORIZATION, upstream_auth.clone());
    headers.insert(header::HOST, host.clone());
    // Usage must be readable from the answer, so ask for it uncompressed.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if let Some(ip) = value_written(|out| write!(out, "{client_ip}")) {
        headers.insert(&X_FORWARDED_FOR, ip);
    }
    headers.insert(&X_REQUEST_ID, request_id.clone());
}

/// A header value written by `write` into a buffer on the stack, then copied once into the
/// value: no allocation for formatting. `None` past 64 bytes or for bytes a header cannot hold.
pub fn value_written(
    write: impl FnOnce(&mut &mut [u8]) -> std::io::Result<()>,
) -> Option<HeaderValue> {
    let mut buf = [0u8; 64];
    let left = {
        let mut out = &mut buf[..];
        write(&mut out).ok()?;
        out.len()
    };
    HeaderValue::from_bytes(buf.get(..buf.len() - left)?).ok()
}

/// Response headers that describe keygate's upstream account, not the client's key.
static UPSTREAM_ONLY: [HeaderName; 4] = [
    header::UPGRADE,
    header::SET_COOKIE,
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
];

/// Rewrites the upstream's response headers, in place, into what the client receives. The
/// upstream's `x-ratelimit-*` describe keygate's whole account, so they never reach a client.
pub fn to_client(headers: &mut HeaderMap, request_id: &HeaderValue) {
    if headers.contains_key(header::CONNECTION) {
        remove_connection_listed(headers);
    }
    remove_where(headers, |name| {
        HOP_BY_HOP.contains(name)
            || UPSTREAM_ONLY.contains(name)
            || name.as_str().starts_with("x-ratelimit-")
    });
    headers.insert(&X_REQUEST_ID, request_id.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_account_headers_never_reach_the_client() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-remaining-tokens", "5"),
            ("openai-organization", "org-keygate"),
            ("set-cookie", "__cf=1"),
            ("content-type", "application/json"),
        ] {
            h.insert(HeaderName::from_static(n), v.parse().unwrap());
        }
        to_client(&mut h, &HeaderValue::from_static("req_1"));
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-request-id"], "req_1");
        assert_eq!(h["content-type"], "application/json");
    }

    #[test]
    fn client_credentials_and_connection_tricks_never_reach_upstream() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer sk-kg-client".parse().unwrap());
        h.insert("x-api-key", "client".parse().unwrap());
        h.insert("api-key", "client".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert(
            "connection",
            "authorization, x-custom, x-forwarded-for".parse().unwrap(),
        );
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-request-id", "spoofed".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("openai-organization", "org-other".parse().unwrap());
        let auth = HeaderValue::from_static("Bearer upstream");
        let rid = HeaderValue::from_static("req_1");
        let host = HeaderValue::from_static("api.example");
        to_upstream(&mut h, &auth, &host, "192.0.2.1".parse().unwrap(), &rid);
        assert_eq!(h["host"], "api.example");
        assert_eq!(h["authorization"], "Bearer upstream");
        assert_eq!(h.get_all("authorization").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-request-id"], "req_1");
        assert_eq!(h["content-type"], "application/json");
        for gone in [
            "x-api-key",
            "api-key",
            "proxy-authorization",
            "connection",
            "x-custom",
            "upgrade",
        ] {
            assert!(!h.contains_key(gone), "{gone} must be removed");
        }
    }

    #[test]
    fn values_written_on_the_stack_are_whole_or_absent() {
        for ip in [
            "203.0.113.7",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            let value = value_written(|out| write!(out, "{addr}")).unwrap();
            assert_eq!(value.to_str().unwrap(), ip);
        }
        assert!(value_written(|out| out.write_all(&[b'x'; 65])).is_none());
        assert_eq!(
            value_written(|out| out.write_all(&[b'x'; 64]))
                .unwrap()
                .len(),
            64
        );
        assert!(value_written(|out| out.write_all(b"a\nb")).is_none());
    }

    #[test]
    fn every_listed_header_goes_however_many_a_request_carries() {
        // All 24 listed names at once (more than the pass keeps on the stack), some twice.
        let mut h = HeaderMap::new();
        for name in HOP_BY_HOP.iter().chain(&CLIENT_ONLY) {
            h.append(name, HeaderValue::from_static("client"));
            h.append(name, HeaderValue::from_static("again"));
        }
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("x-stainless-lang", "python".parse().unwrap());
        let auth = HeaderValue::from_static("Bearer upstream");
        let rid = HeaderValue::from_static("req_1");
        let host = HeaderValue::from_static("api.example");
        to_upstream(&mut h, &auth, &host, "192.0.2.1".parse().unwrap(), &rid);
        let mut left: Vec<(String, String)> = h
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        left.sort();
        let expected = [
            ("accept-encoding", "identity"),
            ("authorization", "Bearer upstream"),
            ("content-type", "application/json"),
            ("host", "api.example"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-request-id", "req_1"),
            ("x-stainless-lang", "python"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()));
        assert_eq!(left, expected);

        let mut h = HeaderMap::new();
        for name in HOP_BY_HOP.iter().chain(&UPSTREAM_ONLY) {
            h.append(name, HeaderValue::from_static("upstream"));
        }
        for n in 0..6 {
            h.insert(
                HeaderName::try_from(format!("x-ratelimit-{n}")).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        h.insert("content-type", "text/event-stream".parse().unwrap());
        to_client(&mut h, &rid);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "x-request-id"]);
    }
}
