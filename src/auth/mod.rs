//! Keys: their format ([`key`]) and the immutable lookup table built from the config ([`store`]).

pub mod key;
pub mod store;

pub use key::{ApiKey, KeyDigest, KeyFormatError};
pub use store::{AuthError, KeyStore};
