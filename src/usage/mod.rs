//! Usage accounting: what each request cost ([`cost`]), the durable per-key, per-day,
//! per-model ledger in SQLite ([`ledger`]), and the [`recorder`] that moves usage events off
//! the request path into the ledger through a bounded channel.

pub mod calendar;
pub mod cost;
pub mod ledger;
pub mod recorder;
pub mod report;

pub use ledger::Ledger;
pub use recorder::{Recorder, UsageEvent};
