//! Settle: the one place that runs after every request, whatever happened, exactly once.
//!
//! A [`Settlement`] is created when a request arrives and travels with it: into the response
//! body when the answer streams. It is finished explicitly on completion, refusal or upstream
//! failure; if it is dropped unfinished (client gone mid-request or mid-stream) its `Drop`
//! settles the request as aborted. Settling replaces the limit reservation by the real usage,
//! queues a usage event for the ledger, and writes one structured log line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ctx::RequestCtx;
use crate::error::Reason;
use crate::limits::Admission;
use crate::metrics::Observation;
use crate::state::Metering;
use crate::upstream::Usage;
use crate::usage::{UsageEvent, cost};

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Refused by keygate, with the refusal's reason.
    Refused(Reason),
    /// The upstream answered and the whole answer reached the client.
    Completed,
    /// The upstream failed mid-answer.
    UpstreamError,
    /// The upstream stalled longer than `upstream.idle_timeout` mid-answer.
    UpstreamIdle,
    /// The client went away before the answer was complete.
    ClientAborted,
    /// Still open when the shutdown grace ended: cut by keygate.
    ShutdownCut,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Refused(r) if r.is_upstream_failure() => "upstream_error",
            Outcome::Refused(_) => "refused",
            Outcome::Completed => "completed",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamIdle => "upstream_idle_timeout",
            Outcome::ClientAborted => "client_aborted",
            Outcome::ShutdownCut => "shutdown_cut",
        }
    }
}

/// Status reported for a client that left before any status was sent (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

/// What the response body saw of the answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    /// Usage the upstream reported, if it did.
    pub usage: Option<Usage>,
    /// Completion tokens seen streaming (at least one per text delta, per choice).
    pub streamed_tokens: u64,
}

pub struct Settlement {
    pub ctx: RequestCtx,
    status: u16,
    done: bool,
    metering: Arc<Metering>,
    /// The limit reservation to settle, once the request was admitted.
    pub admission: Option<Admission>,
}

impl Settlement {
    pub fn new(ctx: RequestCtx, metering: Arc<Metering>) -> Self {
        metering.metrics.inflight.inc();
        Self {
            ctx,
            status: CLIENT_CLOSED,
            done: false,
            metering,
            admission: None,
        }
    }

    /// Records the status sent to the client.
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn finish(mut self, outcome: Outcome, seen: Seen) {
        self.record(outcome, seen);
    }

    /// What the request is billed: its usage, the per-request price it owes, and whether the
    /// usage is an estimate. Usage the upstream reported wins. A request the upstream never
    /// got, or answered with an error, costs nothing. Otherwise a request that ended without
    /// usage is billed an estimate: for a stream of a key without a budget, its reserved prompt
    /// plus what was seen streaming; for anything else, its whole reservation (the
    /// continuation in [`super::body`] reads such an answer to its end first, so this is what
    /// is billed only when that failed too).
    fn billed(&self, outcome: Outcome, seen: Seen) -> (Usage, u64, bool) {
        let ctx = &self.ctx;
        let upstream_refused = ctx.upstream_status.is_some_and(|s| s >= 400);
        if !ctx.reached_upstream || upstream_refused {
            return (Usage::default(), 0, false);
        }
        let r = &ctx.reserved;
        if let Some(usage) = seen.usage {
            return (usage, r.per_request_micros, false);
        }
        if outcome == Outcome::Completed && !ctx.reports_usage {
            // Answers of per-request routes report no usage: their price is the request's.
            return (Usage::default(), r.per_request_micros, false);
        }
        let completion = if ctx.stream && !ctx.hard_budget {
            seen.streamed_tokens
        } else {
            r.completion_tokens
        };
        let usage = Usage {
            prompt_tokens: r.prompt_tokens,
            cached_prompt_tokens: 0,
            completion_tokens: completion,
        };
        (usage, r.per_request_micros, true)
    }

    fn record(&mut self, outcome: Outcome, seen: Seen) {
        if self.done {
            return;
        }
        self.done = true;
        // A request dropped because the shutdown grace ran out was cut by keygate.
        let outcome = match outcome {
            Outcome::ClientAborted
                if self
                    .metering
                    .cut_at_shutdown
                    .load(std::sync::atomic::Ordering::Relaxed) =>
            {
                Outcome::ShutdownCut
            }
            other => other,
        };
        let (usage, per_request, estimated) = self.billed(outcome, seen);
        let ctx = &self.ctx;
        let cost_micros = ctx
            .model
            .as_ref()
            .map_or(0, |m| cost::of_usage(&m.price, &usage))
            .saturating_add(per_request);
        if let Some(admission) = self.admission.take() {
            let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            self.metering.limits.settle(admission, tokens, cost_micros);
        }
        let now = Instant::now();
        let latency = now.duration_since(ctx.started);
        if let Some(key_id) = &ctx.key_id {
            self.metering.recorder.record(UsageEvent {
                key_id: key_id.clone(),
                model: ctx.model.as_ref().map(|m| m.name.clone()),
                started: ctx.started_utc,
                finished: ctx.started_utc + latency,
                error: self.status >= 400,
                usage,
                cost_micros,
                estimated,
                latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            });
        }
        let refusal = match outcome {
            Outcome::Refused(reason) => Some(reason),
            _ => None,
        };
        let upstream = ctx.upstream_started.map(|t| now.duration_since(t));
        let security_event = refusal.and_then(Reason::security_event);
        let metrics = &self.metering.metrics;
        metrics.inflight.dec();
        metrics.observe(&Observation {
            key: ctx.key_id.as_deref().unwrap_or(""),
            model: ctx.model.as_ref().map_or("", |m| &*m.name),
            endpoint: ctx.endpoint,
            status: self.status,
            refusal,
            security_event,
            usage,
            cost_micros,
            total: latency,
            upstream,
            ttfb: ctx.upstream_first_byte,
        });
        if let Some(kind) = security_event {
            self.metering.events.record(crate::events::Event {
                time: ctx.started_utc,
                kind,
                reason: refusal.map_or("", Reason::label),
                key_id: ctx.key_id.clone(),
                client_ip: Some(ctx.client_ip),
                detail: None,
                request_id: ctx.id.to_str().ok().map(str::to_owned),
            });
        }
        // Whole microseconds: integers format cheaply, and 0 means "did not happen".
        let us =
            |d: Option<Duration>| d.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let reason = refusal.map_or("", Reason::label);
        tracing::info!(
            target: "keygate::request",
            request_id = ctx.id.to_str().unwrap_or(""),
            key = ctx.key_id.as_deref().unwrap_or("-"),
            model = ctx.model.as_ref().map_or("-", |m| &*m.name),
            endpoint = ctx.endpoint,
            method = ctx.method.as_str(),
            path = log_path(ctx.uri.path()),
            client_ip = %ctx.client_ip,
            stream = ctx.stream,
            status = self.status,
            outcome = outcome.label(),
            reason,
            latency_us = us(Some(latency)),
            upstream_us = us(upstream),
            ttfb_us = us(ctx.upstream_first_byte),
            prompt_tokens = usage.prompt_tokens,
            cached_prompt_tokens = usage.cached_prompt_tokens,
            completion_tokens = usage.completion_tokens,
            cost_micros,
            estimated,
            "request"
        );
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.record(Outcome::ClientAborted, Seen::default());
    }
}

/// Longest path the log line keeps.
const MAX_LOGGED_PATH: usize = 200;

/// The request path for the log line, cut to [`MAX_LOGGED_PATH`] bytes (a URI path is ASCII).
fn log_path(path: &str) -> &str {
    path.get(..MAX_LOGGED_PATH).unwrap_or(path)
}
