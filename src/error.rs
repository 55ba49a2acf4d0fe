//! Every refusal keygate answers with, mapped in one place to an HTTP status, an OpenAI-shaped
//! error body and a bounded reason label. The matches are exhaustive: a new variant does not
//! compile until it has a status, a code and a message.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::access::Scope;
use crate::auth::{AuthError, KeyFormatError};
use crate::limits::RateHeaders;
use crate::pipeline::body::ResponseBody;

#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Auth(AuthError),
    /// More than one `Authorization` header.
    AmbiguousCredentials,
    IpNotAllowed,
    ReferrerNotAllowed,
    ScopeNotAllowed(Scope),
    ModelNotAllowed,
    ModelNotFound,
    UnknownRoute,
    MethodNotAllowed,
    NotCanonical,
    InvalidRequest(Cow<'static, str>),
    UriTooLong,
    BodyTooLarge,
    /// The body did not arrive within `server.body_read_timeout`.
    BodyTimeout,
    UpstreamUnreachable,
    UpstreamTimeout,
    /// The upstream refused keygate's own credentials: an operator problem, never shown.
    UpstreamAuth,
    UpstreamKeyMissing,
    /// A per-key rate limit: `limit` is requests, tokens or concurrency.
    RateLimited {
        limit: &'static str,
        retry_after: Duration,
        headers: RateHeaders,
    },
    /// The request alone needs more tokens than the key may use per minute.
    TooManyTokens {
        headers: RateHeaders,
    },
    /// The key's monthly spending limit is reached; it resets with the next UTC month.
    BudgetExceeded {
        retry_after: Duration,
    },
    /// The client address presented too many invalid keys and is cooling down.
    BlockedClient {
        retry_after: Duration,
    },
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Auth(_) => StatusCode::UNAUTHORIZED,
            Refusal::AmbiguousCredentials | Refusal::NotCanonical | Refusal::InvalidRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Refusal::IpNotAllowed
            | Refusal::ReferrerNotAllowed
            | Refusal::ScopeNotAllowed(_)
            | Refusal::ModelNotAllowed => StatusCode::FORBIDDEN,
            Refusal::ModelNotFound | Refusal::UnknownRoute => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::UpstreamUnreachable | Refusal::UpstreamAuth | Refusal::UpstreamKeyMissing => {
                StatusCode::BAD_GATEWAY
            }
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::RateLimited { .. }
            | Refusal::TooManyTokens { .. }
            | Refusal::BudgetExceeded { .. }
            | Refusal::BlockedClient { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The OpenAI `error.code`; see PRODUCT.md's table.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Auth(AuthError::Missing | AuthError::Malformed(_) | AuthError::Unknown) => {
                "invalid_api_key"
            }
            Refusal::Auth(AuthError::Expired) => "expired_api_key",
            Refusal::Auth(AuthError::Inactive) => "inactive_api_key",
            Refusal::IpNotAllowed => "ip_not_allowed",
            Refusal::ReferrerNotAllowed => "referrer_not_allowed",
            Refusal::ScopeNotAllowed(_) | Refusal::ModelNotAllowed => "permission_denied",
            Refusal::ModelNotFound => "model_not_found",
            Refusal::UnknownRoute => "unknown_route",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::AmbiguousCredentials
            | Refusal::NotCanonical
            | Refusal::InvalidRequest(_)
            | Refusal::UriTooLong
            | Refusal::BodyTimeout => "invalid_request",
            Refusal::BodyTooLarge => "request_too_large",
            Refusal::UpstreamUnreachable
            | Refusal::UpstreamTimeout
            | Refusal::UpstreamAuth
            | Refusal::UpstreamKeyMissing => "upstream_error",
            Refusal::RateLimited { .. } | Refusal::TooManyTokens { .. } => "rate_limit_exceeded",
            Refusal::BudgetExceeded { .. } => "budget_exceeded",
            Refusal::BlockedClient { .. } => "rate_limit_exceeded",
        }
    }

    /// A bounded label for logs and metrics: finer than `code` where that helps an operator.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Auth(AuthError::Missing) => "missing_key",
            Refusal::Auth(AuthError::Malformed(KeyFormatError::Malformed)) => "malformed_key",
            Refusal::Auth(AuthError::Malformed(KeyFormatError::BadChecksum)) => "bad_checksum",
            Refusal::Auth(AuthError::Unknown) => "unknown_key",
            Refusal::Auth(AuthError::Expired) => "expired_key",
            Refusal::Auth(AuthError::Inactive) => "inactive_key",
            Refusal::AmbiguousCredentials => "ambiguous_credentials",
            Refusal::IpNotAllowed => "ip_not_allowed",
            Refusal::ReferrerNotAllowed => "referrer_not_allowed",
            Refusal::ScopeNotAllowed(_) => "scope_not_allowed",
            Refusal::ModelNotAllowed => "model_not_allowed",
            Refusal::ModelNotFound => "model_not_found",
            Refusal::UnknownRoute => "unknown_route",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::NotCanonical => "non_canonical_path",
            Refusal::InvalidRequest(_) => "invalid_request",
            Refusal::UriTooLong => "uri_too_long",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::UpstreamUnreachable => "upstream_unreachable",
            Refusal::UpstreamTimeout => "upstream_timeout",
            Refusal::UpstreamAuth => "upstream_auth",
            Refusal::UpstreamKeyMissing => "upstream_key_missing",
            Refusal::RateLimited {
                limit: "requests", ..
            } => "rate_limited_requests",
            Refusal::RateLimited {
                limit: "tokens", ..
            }
            | Refusal::TooManyTokens { .. } => "rate_limited_tokens",
            Refusal::RateLimited { .. } => "rate_limited_concurrency",
            Refusal::BudgetExceeded { .. } => "budget_exceeded",
            Refusal::BlockedClient { .. } => "blocked_client",
        }
    }

    fn error_type(&self) -> &'static str {
        match self.status().as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        }
    }

    pub fn message(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Refusal::Auth(AuthError::Missing) => {
                "No API key provided. Send it as 'Authorization: Bearer <key>'."
            }
            Refusal::Auth(AuthError::Malformed(KeyFormatError::Malformed)) => {
                "Invalid API key: it does not have the keygate key format."
            }
            Refusal::Auth(AuthError::Malformed(KeyFormatError::BadChecksum)) => {
                "Invalid API key: its checksum does not match; check for a typo or truncation."
            }
            Refusal::Auth(AuthError::Unknown) => "Invalid API key.",
            Refusal::Auth(AuthError::Expired) => "This API key has expired.",
            Refusal::Auth(AuthError::Inactive) => "This API key has been deactivated.",
            Refusal::AmbiguousCredentials => {
                "Send exactly one 'Authorization: Bearer <key>' header."
            }
            Refusal::IpNotAllowed => "This API key may not be used from your IP address.",
            Refusal::ReferrerNotAllowed => "This API key may not be used from this referrer.",
            Refusal::ScopeNotAllowed(scope) => match scope {
                Scope::Chat => "This API key does not have the 'chat' scope.",
                Scope::Code => "This API key does not have the 'code' scope.",
                Scope::Image => "This API key does not have the 'image' scope.",
                Scope::Audio => "This API key does not have the 'audio' scope.",
                Scope::Embeddings => "This API key does not have the 'embeddings' scope.",
                Scope::Files => "This API key does not have the 'files' scope.",
                Scope::FineTuning => "This API key does not have the 'fine_tuning' scope.",
            },
            Refusal::ModelNotAllowed => "This API key may not use this model.",
            Refusal::ModelNotFound => {
                "The model does not exist or is not available through this gateway."
            }
            Refusal::UnknownRoute => "Unknown API route.",
            Refusal::MethodNotAllowed => "This API route does not accept this HTTP method.",
            Refusal::NotCanonical => {
                "The request path is not canonical (no '.', '..', '//', trailing '/', ';' or percent-encoding)."
            }
            Refusal::InvalidRequest(msg) => return msg.clone(),
            Refusal::UriTooLong => "The request URI is too long.",
            Refusal::BodyTooLarge => "The request body is too large.",
            Refusal::BodyTimeout => "The request body did not arrive in time.",
            Refusal::UpstreamUnreachable => "The upstream API could not be reached.",
            Refusal::UpstreamTimeout => "The upstream API did not answer in time.",
            Refusal::UpstreamAuth | Refusal::UpstreamKeyMissing => {
                "The gateway could not authenticate to the upstream API. The operator has been alerted."
            }
            Refusal::RateLimited {
                limit: "requests", ..
            } => {
                "Rate limit reached for requests per minute on this API key. Retry after the time in 'retry-after'."
            }
            Refusal::RateLimited {
                limit: "tokens", ..
            } => {
                "Rate limit reached for tokens per minute on this API key. Retry after the time in 'retry-after'."
            }
            Refusal::RateLimited { .. } => "Too many concurrent requests on this API key.",
            Refusal::TooManyTokens { .. } => {
                "This request alone needs more tokens than this API key may use per minute; lower max_tokens or the prompt size."
            }
            Refusal::BlockedClient { .. } => {
                "Too many invalid API keys from your address. Retry after the time in 'retry-after'."
            }
            Refusal::BudgetExceeded { .. } => {
                "This API key has reached its monthly spending limit. It resets at the start of the next month (UTC)."
            }
        })
    }

    /// The response a client sees. `request_id` lets the client quote the failure to an operator.
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let body = serde_json::json!({
            "error": {
                "message": self.message(),
                "type": self.error_type(),
                "code": self.code(),
                "param": null,
            }
        });
        let mut response = Response::new(ResponseBody::full(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("x-request-id", request_id.clone());
        match self {
            Refusal::Auth(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Refusal::RateLimited {
                retry_after,
                headers: rate,
                ..
            } => {
                crate::pipeline::limit::set_rate_headers(headers, rate);
                headers.insert(header::RETRY_AFTER, retry_after_secs(*retry_after));
            }
            Refusal::TooManyTokens { headers: rate } => {
                crate::pipeline::limit::set_rate_headers(headers, rate);
                headers.insert(
                    header::RETRY_AFTER,
                    retry_after_secs(Duration::from_secs(60)),
                );
            }
            Refusal::BudgetExceeded { retry_after } | Refusal::BlockedClient { retry_after } => {
                headers.insert(header::RETRY_AFTER, retry_after_secs(*retry_after));
            }
            _ => {}
        }
        response
    }
}

/// Whole seconds, rounded up, at least 1.
fn retry_after_secs(d: Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}
