//! The immutable key table of one config snapshot: digest -> key policy.
//!
//! A presented key is checked for format and checksum, hashed, and looked up by digest. The
//! table holds each key's current digest and, during a rotation grace, its previous one.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use super::key::{self, KeyDigest, KeyFormatError};
use crate::config::KeyPolicy;

/// Why authentication failed. Carries nothing of the presented key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed(KeyFormatError),
    Unknown,
    Expired,
    Inactive,
}

struct Slot {
    policy: Arc<KeyPolicy>,
    /// Set for a rotated-out secret: valid until this instant.
    valid_until: Option<SystemTime>,
}

#[derive(Default)]
pub struct KeyStore {
    by_digest: HashMap<KeyDigest, Slot, BuildHasherDefault<DigestHasher>>,
}

impl KeyStore {
    pub fn new(keys: &[Arc<KeyPolicy>]) -> Self {
        let mut by_digest = HashMap::with_capacity_and_hasher(keys.len() * 2, Default::default());
        for policy in keys {
            by_digest.insert(
                policy.digest,
                Slot {
                    policy: policy.clone(),
                    valid_until: None,
                },
            );
            if let Some(prev) = &policy.previous {
                by_digest.insert(
                    prev.digest,
                    Slot {
                        policy: policy.clone(),
                        valid_until: Some(prev.expires),
                    },
                );
            }
        }
        Self { by_digest }
    }

    /// Authenticates a presented key at time `now`.
    pub fn authenticate(
        &self,
        presented: &str,
        now: SystemTime,
    ) -> Result<&Arc<KeyPolicy>, AuthError> {
        let digest = key::verify(presented).map_err(AuthError::Malformed)?;
        let slot = self.by_digest.get(&digest).ok_or(AuthError::Unknown)?;
        let policy = &slot.policy;
        if !policy.active {
            return Err(AuthError::Inactive);
        }
        let expired = |t: Option<SystemTime>| t.is_some_and(|t| now >= t);
        if expired(policy.expires) || expired(slot.valid_until) {
            return Err(AuthError::Expired);
        }
        Ok(policy)
    }
}

/// Passes through the `u64` that [`KeyDigest`]'s `Hash` writes.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for KeyDigest; fold any other input so the hasher stays correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
