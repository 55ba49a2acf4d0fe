//! Plan: what a JSON body asks for becomes what is authorized, reserved and forwarded.
//!
//! The body names the model (authorized against the key's scopes and model list on every
//! route), the completion cap and how many outputs it wants. From these the plan derives the
//! [`Reservation`]: the prompt estimate over every input, the cap times the outputs, and the
//! per-request price of routes priced per request. A request whose cost cannot be bounded
//! before forwarding is refused for a key with a monthly budget. When the client set no cap,
//! the cap reserved is written into the forwarded body, so the cap reserved is the cap the
//! upstream enforces.

use bytes::Bytes;
use http::{HeaderMap, header};

use super::authorize;
use super::ctx::{RequestCtx, Reservation};
use super::request_json::{self, CapField, RequestFields};
use super::route::{Route, RouteKind};
use crate::config::{KeyPolicy, Model};
use crate::error::Refusal;
use crate::limits::estimate;
use crate::state::Runtime;
use crate::upstream::usage::MAX_REPORTED_TOKENS;

/// Reads the body, authorizes its model, and decides the reservation and the body to forward.
/// Returns the body to forward instead of the client's, when keygate edited it.
pub fn plan(
    rt: &Runtime,
    key: &KeyPolicy,
    route: &Route<'_>,
    headers: &HeaderMap,
    body: &Bytes,
    ctx: &mut RequestCtx,
) -> Result<Option<Vec<u8>>, Refusal> {
    ctx.reports_usage = route.kind.reports_usage();
    let content_type = headers.get(header::CONTENT_TYPE).map(|ct| ct.as_bytes());
    let is_json = content_type.is_some_and(|ct| {
        let ct = ct.trim_ascii_start();
        ct.len() >= 16 && ct[..16].eq_ignore_ascii_case(b"application/json")
    });
    if is_json && content_type.is_some_and(|ct| !charset_is_utf8(ct)) {
        // keygate reads the body as UTF-8; an upstream told otherwise could read another model.
        return Err(Refusal::InvalidRequest(
            "JSON bodies must be UTF-8: send 'charset=utf-8' or no charset.".into(),
        ));
    }
    let has_body = !body.is_empty();
    if route.kind.requires_model() && !(is_json && has_body) {
        return Err(Refusal::InvalidRequest(
            "This route takes a JSON body naming a 'model', with 'Content-Type: application/json'."
                .into(),
        ));
    }
    if !has_body {
        return Ok(None);
    }
    if !is_json {
        // keygate cannot read which model a multipart (or other) body asks for, so it could
        // neither price it nor hold a key to its model list.
        if route.kind.may_name_model() {
            return Err(Refusal::InvalidRequest(
                "keygate only forwards JSON bodies on routes that choose a model.".into(),
            ));
        }
        return Ok(None);
    }
    let fields = request_json::parse(body, rt.config.server.limits.max_json_depth)
        .map_err(|e| Refusal::InvalidRequest(e.to_string().into()))?;
    ctx.stream = fields.stream;
    let model = match fields.model.as_deref() {
        Some(name) => authorize::authorize_model(key, &rt.config.models, name)?.clone(),
        // Without a model the upstream would pick its default, which keygate cannot price.
        None if route.kind.may_name_model() => {
            return Err(Refusal::InvalidRequest(
                "The request body must name a 'model'.".into(),
            ));
        }
        None => return Ok(None),
    };
    let budgeted = key.limits.monthly_spend_micros.is_some();
    ctx.hard_budget = budgeted;
    if budgeted && fields.media_parts {
        return Err(Refusal::CostUnbounded(
            "keygate cannot bound the cost of image, audio or file inputs before forwarding, so this API key's monthly spending limit could not hold: send text only.".into(),
        ));
    }
    let generates_tokens = route.kind.generates_tokens();
    let cap = Cap::of(key, &fields, &model);
    let reservation = reserve(route.kind, &fields, body.len(), &model, cap, budgeted)?;
    ctx.reserved = reservation;
    ctx.model = Some(model);
    // The cap reserved is the cap enforced: written into the member the upstream reads, when
    // the client did not set that member itself.
    let insert_cap = (generates_tokens && cap.spliced).then_some((cap.field, cap.value));
    let ask_usage = fields.stream && generates_tokens && fields.include_usage != Some(true);
    ctx.strip_usage = ask_usage;
    request_json::rewrite(body, &fields, insert_cap, ask_usage)
        .map_err(|e| Refusal::InvalidRequest(e.to_string().into()))
}

/// The completion cap a request runs with, and whether keygate must write it into the body.
#[derive(Debug, Clone, Copy)]
struct Cap {
    /// The member the model's upstream reads.
    field: CapField,
    value: u64,
    /// The client set a cap (in either member).
    from_client: bool,
    /// The member the upstream reads is not set: keygate sets it.
    spliced: bool,
}

impl Cap {
    /// The member the upstream reads if set; else the other member (the client's intent);
    /// else the key's `default_max_tokens`, else the model's, else 4096.
    fn of(key: &KeyPolicy, fields: &RequestFields<'_>, model: &Model) -> Self {
        let field = model.cap_field;
        let other = match field {
            CapField::MaxTokens => CapField::MaxCompletionTokens,
            CapField::MaxCompletionTokens => CapField::MaxTokens,
        };
        let enforced = fields.cap(field).value();
        let asked = enforced.or(fields.cap(other).value());
        let default = key.default_cap(model);
        Self {
            field,
            value: asked.unwrap_or(default),
            from_client: asked.is_some(),
            spliced: enforced.is_none(),
        }
    }
}

/// Whether a `Content-Type`'s `charset` parameter, if any, names UTF-8.
fn charset_is_utf8(content_type: &[u8]) -> bool {
    content_type.split(|&b| b == b';').skip(1).all(|param| {
        let Some(eq) = param.iter().position(|&b| b == b'=') else {
            return true;
        };
        let (name, value) = (param[..eq].trim_ascii(), param[eq + 1..].trim_ascii());
        if !name.eq_ignore_ascii_case(b"charset") {
            return true;
        }
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        value.eq_ignore_ascii_case(b"utf-8") || value.eq_ignore_ascii_case(b"utf8")
    })
}

fn reserve(
    kind: RouteKind,
    fields: &RequestFields<'_>,
    body_len: usize,
    model: &Model,
    cap: Cap,
    budgeted: bool,
) -> Result<Reservation, Refusal> {
    // Every output the request asks for: `n` (or `best_of`, which generates that many) per
    // prompt, and one prompt unless an array `prompt` names several.
    let per_prompt = fields.n.unwrap_or(1).max(fields.best_of.unwrap_or(1));
    let prompts = match kind {
        RouteKind::Completions => fields.prompt.prompts.max(1),
        _ => 1,
    };
    let outputs = per_prompt.saturating_mul(prompts);
    // Only answers that report usage are billed by token; the others by request.
    let (prompt_tokens, rate_prompt_tokens) = if kind.reports_usage() {
        (
            estimate::prompt_ceiling(body_len).min(MAX_REPORTED_TOKENS),
            estimate::prompt_tokens(body_len)
                .saturating_add(match kind {
                    RouteKind::Embeddings => fields.input.token_ids,
                    _ => fields.prompt.token_ids,
                })
                .min(MAX_REPORTED_TOKENS),
        )
    } else {
        (0, 0)
    };
    let mut r = Reservation {
        prompt_tokens,
        rate_prompt_tokens,
        client_cap: cap.from_client,
        ..Reservation::default()
    };
    if kind.generates_tokens() {
        r.completion_tokens = cap.value.saturating_mul(outputs).min(MAX_REPORTED_TOKENS);
    }
    if kind.priced_per_request() {
        let units = match kind {
            RouteKind::Images => fields.n.unwrap_or(1),
            _ => 1,
        };
        match model.per_request_micros {
            Some(price) => r.per_request_micros = price.saturating_mul(units),
            None if budgeted => {
                return Err(Refusal::CostUnbounded(format!(
                    "keygate cannot bound the cost of this request, so this API key's monthly spending limit could not hold: model '{}' has no per-request price on this gateway.",
                    model.name
                ).into()));
            }
            None => {}
        }
    } else if let Some(price) = model.per_request_micros {
        r.per_request_micros = price;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_utf8_charsets_are_read() {
        assert!(charset_is_utf8(b"application/json"));
        assert!(charset_is_utf8(b"application/json; charset=UTF-8"));
        assert!(charset_is_utf8(b"application/json;charset=\"utf8\"; x=y"));
        assert!(!charset_is_utf8(b"application/json; charset=utf-16"));
        assert!(!charset_is_utf8(b"application/json; charset=iso-8859-1"));
        assert!(!charset_is_utf8(b"application/json; CHARSET=utf-7"));
    }
}
