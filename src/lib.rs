//! keygate: an authenticating, metering reverse proxy for OpenAI-compatible LLM APIs.
//!
//! # Layout
//! - [`cli`]: the `keygate` subcommands (`serve`, `check`).
//! - [`config`]: the TOML file as written ([`config::file`]) and validated ([`config::validate`]).
//! - [`reload`]: hot reload of the config file (file watch and SIGHUP).
//! - [`state`]: the immutable per-request [`state::Runtime`] snapshot and the shared [`state::Gateway`].
//! - [`server`]: listeners, TLS, connection limits, graceful drain.
//! - [`admin`]: the admin listener: `/metrics`, `/healthz`, `/readyz`.
//! - [`metrics`]: the Prometheus registry and metric names.
//! - [`logging`]: batched log lines on stderr.
//! - [`pipeline`]: a request's phases in order: admit, authenticate, authorize, forward, settle.
//! - [`auth`]: the key format and the key table.
//! - [`access`]: client-IP resolution, CIDR and referrer rules, scopes.
//! - [`upstream`]: the pooled upstream client, header hygiene, usage extraction.
//! - [`limits`]: per-key request, token, concurrency and spend limits.
//! - [`usage`]: cost, the SQLite usage ledger and its recorder.
//! - [`error`]: every refusal mapped to a status, an OpenAI error body and a reason label.

pub mod access;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod events;
pub mod keyinfo;
pub mod limits;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod reload;
pub mod server;
pub mod state;
pub mod upstream;
pub mod usage;
