//! Who may call, from where, for what: client-IP resolution behind trusted proxies, the CIDR
//! and referrer rules a key carries, the scopes it grants, and the brute-force guard.

pub mod client_ip;
pub mod guard;
pub mod referrer;
pub mod scope;

pub use client_ip::{IpRules, parse_ip_or_cidr};
pub use referrer::ReferrerRules;
pub use scope::{Scope, ScopeSet};
