//! Talking to the upstream API: the pooled TLS client ([`client`]), what headers may cross in
//! each direction ([`headers`]), and reading token usage from answers as they stream ([`usage`]).

pub mod client;
pub mod headers;
pub mod usage;
pub mod usage_strip;

pub use client::UpstreamClient;
pub use usage::{Usage, UsageScanner};
