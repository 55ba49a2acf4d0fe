//! Talking to the upstream API: keygate's own connection [`pool`], whose connections are driven
//! by the requests that use them ([`conn`]), what headers may cross in each direction
//! ([`headers`]), and reading token usage from answers as they stream ([`usage`],
//! [`usage_strip`]).

pub mod conn;
pub mod headers;
pub mod pool;
pub mod probe;
pub mod usage;
pub mod usage_strip;

pub use usage::{Usage, UsageScanner};
