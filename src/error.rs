//! Every refusal keygate answers with, mapped in one place to an HTTP status, an OpenAI-shaped
//! error body, retry advice and a bounded [`Reason`] label. The matches are exhaustive: a new
//! variant does not compile until it has a status, a code, a message and a reason.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::access::Scope;
use crate::auth::{AuthError, KeyFormatError};
use crate::events::EventKind;
use crate::limits::{BudgetShortfall, RateHeaders};
use crate::pipeline::body::ResponseBody;
use crate::usage::cost::format_usd;

/// Which per-key limit refused a request (the `limit` label of `keygate_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    Concurrency,
    Spend,
}

impl LimitKind {
    pub const ALL: [LimitKind; 4] = [
        LimitKind::Requests,
        LimitKind::Tokens,
        LimitKind::Concurrency,
        LimitKind::Spend,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
            LimitKind::Concurrency => "concurrency",
            LimitKind::Spend => "spend",
        }
    }
}

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
    /// keygate cannot bound what the request would cost, and the key has a budget.
    CostUnbounded(Cow<'static, str>),
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
    /// The upstream answered 429, 402 or 5xx. Its body describes keygate's upstream account,
    /// so the client gets keygate's own error instead (429 keeps `retry-after`).
    UpstreamStatus {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    /// A per-key rate limit: requests, tokens or concurrency.
    RateLimited {
        limit: LimitKind,
        retry_after: Duration,
        headers: RateHeaders,
    },
    /// The request alone needs more tokens than the key may use per minute.
    TooManyTokens {
        headers: RateHeaders,
    },
    /// The request's worst-case cost does not fit what is left of the monthly budget.
    BudgetExceeded(BudgetShortfall),
    /// The client address presented too many invalid keys and is cooling down.
    BlockedClient,
    /// Usage has not been written durably for longer than `storage.max_unflushed`, so a key
    /// with a budget cannot be admitted.
    LedgerUnavailable,
    /// A trusted proxy's `X-Forwarded-For` has an entry that is not an address.
    BadForwardedFor,
    /// Request bodies already buffered use up `server.max_buffered_body_bytes`.
    BodyBufferFull,
    /// The shared limit store cannot be reached and `cluster.on_redis_down = "deny"`.
    LimitsUnavailable,
}

/// Why a request was refused: a bounded label for logs and metrics, finer than the error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MissingKey,
    MalformedKey,
    BadChecksum,
    UnknownKey,
    ExpiredKey,
    InactiveKey,
    AmbiguousCredentials,
    IpNotAllowed,
    ReferrerNotAllowed,
    ScopeNotAllowed,
    ModelNotAllowed,
    ModelNotFound,
    CostUnbounded,
    UnknownRoute,
    MethodNotAllowed,
    NonCanonicalPath,
    InvalidRequest,
    UriTooLong,
    BodyTooLarge,
    BodyTimeout,
    UpstreamUnreachable,
    UpstreamTimeout,
    UpstreamAuth,
    UpstreamKeyMissing,
    UpstreamStatus,
    RateLimitedRequests,
    RateLimitedTokens,
    RateLimitedConcurrency,
    BudgetExceeded,
    BlockedClient,
    LedgerUnavailable,
    BadForwardedFor,
    BodyBufferFull,
    LimitsUnavailable,
}

impl Reason {
    /// Reasons of a request refused before a key was authenticated.
    pub const AUTH_FAILURES: [Reason; 7] = [
        Reason::MissingKey,
        Reason::MalformedKey,
        Reason::BadChecksum,
        Reason::UnknownKey,
        Reason::ExpiredKey,
        Reason::InactiveKey,
        Reason::AmbiguousCredentials,
    ];

    /// The upstream failed or refused keygate (not the client's doing, nor a limit's).
    pub fn is_upstream_failure(self) -> bool {
        matches!(
            self,
            Reason::UpstreamUnreachable
                | Reason::UpstreamTimeout
                | Reason::UpstreamAuth
                | Reason::UpstreamKeyMissing
                | Reason::UpstreamStatus
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            Reason::MissingKey => "missing_key",
            Reason::MalformedKey => "malformed_key",
            Reason::BadChecksum => "bad_checksum",
            Reason::UnknownKey => "unknown_key",
            Reason::ExpiredKey => "expired_key",
            Reason::InactiveKey => "inactive_key",
            Reason::AmbiguousCredentials => "ambiguous_credentials",
            Reason::IpNotAllowed => "ip_not_allowed",
            Reason::ReferrerNotAllowed => "referrer_not_allowed",
            Reason::ScopeNotAllowed => "scope_not_allowed",
            Reason::ModelNotAllowed => "model_not_allowed",
            Reason::ModelNotFound => "model_not_found",
            Reason::CostUnbounded => "cost_unbounded",
            Reason::UnknownRoute => "unknown_route",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::NonCanonicalPath => "non_canonical_path",
            Reason::InvalidRequest => "invalid_request",
            Reason::UriTooLong => "uri_too_long",
            Reason::BodyTooLarge => "body_too_large",
            Reason::BodyTimeout => "body_timeout",
            Reason::UpstreamUnreachable => "upstream_unreachable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamAuth => "upstream_auth",
            Reason::UpstreamKeyMissing => "upstream_key_missing",
            Reason::UpstreamStatus => "upstream_status",
            Reason::RateLimitedRequests => "rate_limited_requests",
            Reason::RateLimitedTokens => "rate_limited_tokens",
            Reason::RateLimitedConcurrency => "rate_limited_concurrency",
            Reason::BudgetExceeded => "budget_exceeded",
            Reason::BlockedClient => "blocked_client",
            Reason::LedgerUnavailable => "ledger_unavailable",
            Reason::BadForwardedFor => "bad_forwarded_for",
            Reason::BodyBufferFull => "body_buffer_full",
            Reason::LimitsUnavailable => "limits_unavailable",
        }
    }

    pub fn is_auth_failure(self) -> bool {
        Self::AUTH_FAILURES.contains(&self)
    }

    /// The per-key limit behind a rate-limit or budget refusal.
    pub fn limit(self) -> Option<LimitKind> {
        match self {
            Reason::RateLimitedRequests => Some(LimitKind::Requests),
            Reason::RateLimitedTokens => Some(LimitKind::Tokens),
            Reason::RateLimitedConcurrency => Some(LimitKind::Concurrency),
            Reason::BudgetExceeded => Some(LimitKind::Spend),
            _ => None,
        }
    }

    /// The security event a refusal for this reason is, if it is one.
    pub fn security_event(self) -> Option<EventKind> {
        if self.is_auth_failure() {
            return Some(EventKind::Unauthorized);
        }
        match self.limit() {
            Some(LimitKind::Spend) => Some(EventKind::BudgetExceeded),
            Some(_) => Some(EventKind::RateLimited),
            None => match self {
                Reason::IpNotAllowed => Some(EventKind::IpDenied),
                Reason::ReferrerNotAllowed => Some(EventKind::ReferrerDenied),
                // A blocked address's requests are not new events: its block was one.
                _ => None,
            },
        }
    }
}

static X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// The longest `retry-after` keygate sends: a client that may retry should not sleep longer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Auth(_) => StatusCode::UNAUTHORIZED,
            Refusal::AmbiguousCredentials
            | Refusal::NotCanonical
            | Refusal::InvalidRequest(_)
            | Refusal::BadForwardedFor => StatusCode::BAD_REQUEST,
            Refusal::IpNotAllowed
            | Refusal::ReferrerNotAllowed
            | Refusal::ScopeNotAllowed(_)
            | Refusal::ModelNotAllowed
            | Refusal::CostUnbounded(_) => StatusCode::FORBIDDEN,
            Refusal::ModelNotFound | Refusal::UnknownRoute => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::UpstreamUnreachable | Refusal::UpstreamAuth | Refusal::UpstreamKeyMissing => {
                StatusCode::BAD_GATEWAY
            }
            Refusal::UpstreamStatus { status, .. } => {
                if *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                    *status
                } else {
                    StatusCode::BAD_GATEWAY
                }
            }
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::RateLimited { .. }
            | Refusal::TooManyTokens { .. }
            | Refusal::BudgetExceeded(_)
            | Refusal::BlockedClient => StatusCode::TOO_MANY_REQUESTS,
            Refusal::LedgerUnavailable | Refusal::BodyBufferFull | Refusal::LimitsUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The OpenAI `error.code`; see the table in docs/reference.md.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Auth(AuthError::Missing | AuthError::Malformed(_) | AuthError::Unknown) => {
                "invalid_api_key"
            }
            Refusal::Auth(AuthError::Expired) => "expired_api_key",
            Refusal::Auth(AuthError::Inactive) => "inactive_api_key",
            Refusal::IpNotAllowed => "ip_not_allowed",
            Refusal::ReferrerNotAllowed => "referrer_not_allowed",
            Refusal::ScopeNotAllowed(_) | Refusal::ModelNotAllowed | Refusal::CostUnbounded(_) => {
                "permission_denied"
            }
            Refusal::ModelNotFound => "model_not_found",
            Refusal::UnknownRoute => "unknown_route",
            Refusal::MethodNotAllowed => "method_not_allowed",
            Refusal::AmbiguousCredentials
            | Refusal::NotCanonical
            | Refusal::InvalidRequest(_)
            | Refusal::UriTooLong
            | Refusal::BodyTimeout
            | Refusal::BadForwardedFor => "invalid_request",
            Refusal::BodyTooLarge => "request_too_large",
            Refusal::UpstreamUnreachable
            | Refusal::UpstreamTimeout
            | Refusal::UpstreamAuth
            | Refusal::UpstreamKeyMissing
            | Refusal::UpstreamStatus { .. } => "upstream_error",
            Refusal::RateLimited { .. } | Refusal::TooManyTokens { .. } => "rate_limit_exceeded",
            Refusal::BudgetExceeded(_) => "budget_exceeded",
            Refusal::BlockedClient => "rate_limit_exceeded",
            Refusal::LedgerUnavailable => "ledger_unavailable",
            Refusal::BodyBufferFull => "server_busy",
            Refusal::LimitsUnavailable => "limits_unavailable",
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            Refusal::Auth(AuthError::Missing) => Reason::MissingKey,
            Refusal::Auth(AuthError::Malformed(KeyFormatError::Malformed)) => Reason::MalformedKey,
            Refusal::Auth(AuthError::Malformed(KeyFormatError::BadChecksum)) => Reason::BadChecksum,
            Refusal::Auth(AuthError::Unknown) => Reason::UnknownKey,
            Refusal::Auth(AuthError::Expired) => Reason::ExpiredKey,
            Refusal::Auth(AuthError::Inactive) => Reason::InactiveKey,
            Refusal::AmbiguousCredentials => Reason::AmbiguousCredentials,
            Refusal::IpNotAllowed => Reason::IpNotAllowed,
            Refusal::ReferrerNotAllowed => Reason::ReferrerNotAllowed,
            Refusal::ScopeNotAllowed(_) => Reason::ScopeNotAllowed,
            Refusal::ModelNotAllowed => Reason::ModelNotAllowed,
            Refusal::ModelNotFound => Reason::ModelNotFound,
            Refusal::CostUnbounded(_) => Reason::CostUnbounded,
            Refusal::UnknownRoute => Reason::UnknownRoute,
            Refusal::MethodNotAllowed => Reason::MethodNotAllowed,
            Refusal::NotCanonical => Reason::NonCanonicalPath,
            Refusal::InvalidRequest(_) => Reason::InvalidRequest,
            Refusal::UriTooLong => Reason::UriTooLong,
            Refusal::BodyTooLarge => Reason::BodyTooLarge,
            Refusal::BodyTimeout => Reason::BodyTimeout,
            Refusal::UpstreamUnreachable => Reason::UpstreamUnreachable,
            Refusal::UpstreamTimeout => Reason::UpstreamTimeout,
            Refusal::UpstreamAuth => Reason::UpstreamAuth,
            Refusal::UpstreamKeyMissing => Reason::UpstreamKeyMissing,
            Refusal::UpstreamStatus { .. } => Reason::UpstreamStatus,
            Refusal::RateLimited { limit, .. } => match limit {
                LimitKind::Requests => Reason::RateLimitedRequests,
                LimitKind::Tokens => Reason::RateLimitedTokens,
                LimitKind::Concurrency => Reason::RateLimitedConcurrency,
                LimitKind::Spend => Reason::BudgetExceeded,
            },
            Refusal::TooManyTokens { .. } => Reason::RateLimitedTokens,
            Refusal::BudgetExceeded(_) => Reason::BudgetExceeded,
            Refusal::BlockedClient => Reason::BlockedClient,
            Refusal::LedgerUnavailable => Reason::LedgerUnavailable,
            Refusal::BadForwardedFor => Reason::BadForwardedFor,
            Refusal::BodyBufferFull => Reason::BodyBufferFull,
            Refusal::LimitsUnavailable => Reason::LimitsUnavailable,
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
            Refusal::CostUnbounded(msg) | Refusal::InvalidRequest(msg) => return msg.clone(),
            Refusal::UnknownRoute => "Unknown API route.",
            Refusal::MethodNotAllowed => "This API route does not accept this HTTP method.",
            Refusal::NotCanonical => {
                "The request path is not canonical (no '.', '..', '//', trailing '/', ';' or percent-encoding)."
            }
            Refusal::UriTooLong => "The request URI is too long.",
            Refusal::BodyTooLarge => "The request body is too large.",
            Refusal::BodyTimeout => "The request body did not arrive in time.",
            Refusal::UpstreamUnreachable => "The upstream API could not be reached.",
            Refusal::UpstreamTimeout => "The upstream API did not answer in time.",
            Refusal::UpstreamAuth | Refusal::UpstreamKeyMissing => {
                "The gateway could not authenticate to the upstream API. The operator has been alerted."
            }
            Refusal::UpstreamStatus { status, .. } => match status.as_u16() {
                429 => {
                    "The upstream API is rate limiting this gateway. Retry after the time in 'retry-after'."
                }
                402 => {
                    "The upstream API refused this gateway's account. The operator has been alerted."
                }
                _ => "The upstream API failed to answer this request.",
            },
            Refusal::RateLimited { limit, .. } => match limit {
                LimitKind::Requests => {
                    "Rate limit reached for requests per minute on this API key. Retry after the time in 'retry-after'."
                }
                LimitKind::Tokens => {
                    "Rate limit reached for tokens per minute on this API key. Retry after the time in 'retry-after'."
                }
                LimitKind::Concurrency | LimitKind::Spend => {
                    "Too many concurrent requests on this API key."
                }
            },
            Refusal::TooManyTokens { .. } => {
                "This request alone needs more tokens than this API key may use per minute; lower max_tokens or the prompt size."
            }
            Refusal::BlockedClient => {
                "Too many invalid API keys from your address; requests from it are refused for a while."
            }
            Refusal::BudgetExceeded(b) => return budget_message(b).into(),
            Refusal::LedgerUnavailable => {
                "The gateway cannot record usage right now, so requests on keys with a spending limit are paused. Retry shortly."
            }
            Refusal::BadForwardedFor => {
                "X-Forwarded-For from a trusted proxy has an entry that is not an IP address."
            }
            Refusal::BodyBufferFull => {
                "The gateway is holding as many request bodies as it may; retry shortly."
            }
            Refusal::LimitsUnavailable => {
                "The gateway cannot reach the store that holds this API key's limits; retry shortly."
            }
        })
    }

    /// Whether a retry of the same request can succeed; `false` is sent as
    /// `x-should-retry: false`, which the OpenAI SDKs honour.
    fn should_retry(&self) -> Option<bool> {
        match self {
            Refusal::BudgetExceeded(b) => Some(b.retryable()),
            // Only an operator can fix these: a retry would fail the same way.
            Refusal::TooManyTokens { .. }
            | Refusal::BlockedClient
            | Refusal::UpstreamAuth
            | Refusal::UpstreamKeyMissing => Some(false),
            // The upstream's 429 and 5xx may pass; any other status (402: the upstream
            // account's balance) will not.
            Refusal::UpstreamStatus { status, .. } => {
                Some(*status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
            }
            Refusal::RateLimited { .. }
            | Refusal::LedgerUnavailable
            | Refusal::BodyBufferFull
            | Refusal::LimitsUnavailable => Some(true),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::RateLimited { retry_after, .. } => Some(*retry_after),
            Refusal::UpstreamStatus { retry_after, .. } => *retry_after,
            Refusal::BudgetExceeded(b) if b.retryable() => Some(Duration::from_secs(1)),
            Refusal::LedgerUnavailable => Some(Duration::from_secs(5)),
            Refusal::BodyBufferFull | Refusal::LimitsUnavailable => Some(Duration::from_secs(1)),
            _ => None,
        }
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
            Refusal::RateLimited { headers: rate, .. }
            | Refusal::TooManyTokens { headers: rate } => {
                crate::pipeline::limit::set_rate_headers(headers, rate);
            }
            _ => {}
        }
        match self.should_retry() {
            Some(false) => {
                headers.insert(&X_SHOULD_RETRY, HeaderValue::from_static("false"));
            }
            Some(true) => {
                headers.insert(&X_SHOULD_RETRY, HeaderValue::from_static("true"));
                if let Some(after) = self.retry_after() {
                    headers.insert(header::RETRY_AFTER, retry_after_secs(after));
                }
            }
            None => {}
        }
        response
    }
}

fn budget_message(b: &BudgetShortfall) -> String {
    if b.spent >= b.budget {
        return format!(
            "This API key has reached its monthly spending limit of ${}. It resets at the start of the next month (UTC).",
            format_usd(b.budget)
        );
    }
    let numbers = format!(
        "this request could cost up to ${} (its prompt estimate plus max_tokens times the outputs asked for), and ${} is left of this API key's ${} monthly spending limit",
        format_usd(b.request),
        format_usd(b.left()),
        format_usd(b.budget)
    );
    if b.retryable() {
        format!(
            "Requests of this API key still in flight have reserved ${}: {numbers}. Retry when they finish, or lower max_tokens.",
            format_usd(b.in_flight)
        )
    } else {
        format!("Refused: {numbers}. Lower max_tokens (or n, or the prompt) and retry.")
    }
}

/// Whole seconds, rounded up, at least 1 and at most [`MAX_RETRY_AFTER`].
fn retry_after_secs(d: Duration) -> HeaderValue {
    let d = d.min(MAX_RETRY_AFTER);
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}
