//! Settle: the one place that runs after every request, whatever happened, exactly once.
//!
//! A [`Settlement`] is created when a request arrives and travels with it: into the response
//! body when the answer streams. It is finished explicitly on completion, refusal or upstream
//! failure; if it is dropped unfinished (client gone mid-request or mid-stream) its `Drop`
//! settles the request as aborted. Today it writes one structured log line; metering and
//! metrics hang here next.

use std::time::Instant;

use super::ctx::RequestCtx;
use crate::upstream::Usage;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Refused by keygate, with the refusal's reason label.
    Refused(&'static str),
    /// The upstream answered and the whole answer reached the client.
    Completed,
    /// The upstream failed mid-answer.
    UpstreamError,
    /// The upstream stalled longer than `upstream.idle_timeout` mid-answer.
    UpstreamIdle,
    /// The client went away before the answer was complete.
    ClientAborted,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Refused(_) => "refused",
            Outcome::Completed => "completed",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamIdle => "upstream_idle_timeout",
            Outcome::ClientAborted => "client_aborted",
        }
    }
}

/// Status reported for a client that left before any status was sent (nginx's convention).
const CLIENT_CLOSED: u16 = 499;

pub struct Settlement {
    pub ctx: RequestCtx,
    status: u16,
    done: bool,
}

impl Settlement {
    pub fn new(ctx: RequestCtx) -> Self {
        Self {
            ctx,
            status: CLIENT_CLOSED,
            done: false,
        }
    }

    /// Records the status sent to the client.
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn finish(mut self, outcome: Outcome, usage: Option<Usage>) {
        self.record(outcome, usage);
    }

    fn record(&mut self, outcome: Outcome, usage: Option<Usage>) {
        if self.done {
            return;
        }
        self.done = true;
        let ctx = &self.ctx;
        let now = Instant::now();
        let latency_ms = now.duration_since(ctx.started).as_secs_f64() * 1e3;
        let upstream_ms = ctx
            .upstream_started
            .map(|t| now.duration_since(t).as_secs_f64() * 1e3);
        let ttfb_ms = ctx.upstream_first_byte.map(|d| d.as_secs_f64() * 1e3);
        let usage = usage.unwrap_or_default();
        let reason = match outcome {
            Outcome::Refused(reason) => reason,
            _ => "",
        };
        tracing::info!(
            target: "keygate::request",
            request_id = ctx.id.to_str().unwrap_or(""),
            key = ctx.key_id.as_deref().unwrap_or("-"),
            model = ctx.model.as_deref().unwrap_or("-"),
            endpoint = ctx.endpoint,
            client_ip = ?ctx.client_ip,
            stream = ctx.stream,
            status = self.status,
            outcome = outcome.label(),
            reason,
            latency_ms,
            upstream_ms,
            ttfb_ms,
            prompt_tokens = usage.prompt_tokens,
            cached_prompt_tokens = usage.cached_prompt_tokens,
            completion_tokens = usage.completion_tokens,
            "request"
        );
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.record(Outcome::ClientAborted, None);
    }
}
