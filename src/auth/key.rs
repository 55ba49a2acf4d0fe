//! The keygate key format: `sk-kg-` + 32 base62 characters + a 6-character base62 CRC-32.
//!
//! A presented key is checked for shape and checksum before anything else touches it, then
//! reduced to its SHA-256 [`KeyDigest`], the only form in which a key is ever stored or compared.

use std::fmt;

use rand::Rng;
use sha2::{Digest, Sha256};

/// Every keygate key starts with this.
pub const PREFIX: &str = "sk-kg-";
const BODY_LEN: usize = 32;
const CHECK_LEN: usize = 6;
/// Total length of a well-formed key.
pub const KEY_LEN: usize = PREFIX.len() + BODY_LEN + CHECK_LEN;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const DIGEST_PREFIX: &str = "sha256:";

/// Why a presented string is not a keygate key. Never carries the string itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("the key does not have the keygate format (sk-kg- followed by 38 base62 characters)")]
    Malformed,
    #[error("the key's checksum does not match (a typo or a truncated key)")]
    BadChecksum,
}

/// A freshly generated key. The secret is shown to the operator once; `Debug` hides it.
pub struct ApiKey(String);

impl ApiKey {
    /// Draws 32 characters from the OS CSPRNG and appends their checksum.
    pub fn generate() -> Self {
        let mut rng = rand::rngs::OsRng;
        let mut key = String::with_capacity(KEY_LEN);
        key.push_str(PREFIX);
        for _ in 0..BODY_LEN {
            key.push(char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]));
        }
        let check = checksum(&key.as_bytes()[PREFIX.len()..]);
        key.extend(check.iter().map(|&b| char::from(b)));
        Self(key)
    }

    /// The secret, for printing exactly once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(&self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(sk-kg-*****)")
    }
}

/// Checks shape and checksum of a presented key and returns its digest. Allocates nothing.
pub fn verify(presented: &str) -> Result<KeyDigest, KeyFormatError> {
    let bytes = presented.as_bytes();
    let Some(rest) = bytes.strip_prefix(PREFIX.as_bytes()) else {
        return Err(KeyFormatError::Malformed);
    };
    if rest.len() != BODY_LEN + CHECK_LEN || !rest.iter().all(u8::is_ascii_alphanumeric) {
        return Err(KeyFormatError::Malformed);
    }
    let (body, check) = rest.split_at(BODY_LEN);
    if checksum(body) != check {
        return Err(KeyFormatError::BadChecksum);
    }
    Ok(KeyDigest::of(presented))
}

/// CRC-32 (IEEE) of the body, in base62, most significant digit first, zero-padded.
fn checksum(body: &[u8]) -> [u8; CHECK_LEN] {
    let mut n = crc32fast::hash(body);
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// SHA-256 of a whole key string; what the config stores as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest([u8; 32]);

/// A SHA-256 digest is already uniformly distributed: its first eight bytes are the hash.
/// Only configured keys are ever inserted, so clients cannot steer collisions.
impl std::hash::Hash for KeyDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

impl KeyDigest {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses `sha256:` + 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some(hex) = s.strip_prefix(DIGEST_PREFIX) else {
            return Err(format!("must start with \"{DIGEST_PREFIX}\""));
        };
        if hex.len() != 64 {
            return Err(format!(
                "must be \"{DIGEST_PREFIX}\" followed by 64 hex digits (found {})",
                hex.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let (Some(hi), Some(lo)) = (hex_val(pair[0]), hex_val(pair[1])) else {
                return Err("must contain only lowercase hex digits after \"sha256:\"".into());
            };
            out[i] = hi << 4 | lo;
        }
        Ok(Self(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(DIGEST_PREFIX)?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_verify_and_are_distinct() {
        let a = ApiKey::generate();
        let b = ApiKey::generate();
        assert_eq!(a.expose().len(), KEY_LEN);
        assert_ne!(a.expose(), b.expose());
        assert_eq!(verify(a.expose()), Ok(a.digest()));
        assert_eq!(format!("{a:?}"), "ApiKey(sk-kg-*****)");
    }

    #[test]
    fn checksum_is_crc32_in_padded_base62() {
        // Expected values computed independently with Python's zlib.crc32.
        assert_eq!(&checksum(&[b'0'; BODY_LEN]), b"2wjyrI");
        assert_eq!(&checksum(b"abcdefghijklmnopqrstuvwxyzABCDEF"), b"1mVgZW");
        // A test vector, assembled so no literal key stands in the source.
        let key = format!("{PREFIX}abcdefghijklmnopqrstuvwxyzABCDEF{}", "1mVgZW");
        assert!(verify(&key).is_ok());
    }

    #[test]
    fn verify_refuses_bad_shapes_and_checksums() {
        let key = ApiKey::generate();
        let s = key.expose();
        assert_eq!(verify(""), Err(KeyFormatError::Malformed));
        assert_eq!(verify(&s[..KEY_LEN - 1]), Err(KeyFormatError::Malformed));
        assert_eq!(verify(&format!("{s}x")), Err(KeyFormatError::Malformed));
        assert_eq!(
            verify(&s.replacen("sk-kg-", "sk-xx-", 1)),
            Err(KeyFormatError::Malformed)
        );
        let mut typo = s.as_bytes().to_vec();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(verify(&typo), Err(KeyFormatError::BadChecksum));
        let mut bad = s.as_bytes().to_vec();
        bad[10] = b'-';
        assert_eq!(
            verify(&String::from_utf8(bad).unwrap()),
            Err(KeyFormatError::Malformed)
        );
    }

    #[test]
    fn digest_round_trips_through_its_text_form() {
        let key = ApiKey::generate();
        let text = key.digest().to_string();
        assert!(text.starts_with("sha256:"));
        assert_eq!(KeyDigest::parse(&text), Ok(key.digest()));
        assert!(KeyDigest::parse("sha256:ABCD").is_err());
        assert!(KeyDigest::parse(&text.to_uppercase()).is_err());
        assert!(KeyDigest::parse(&text.replace("sha256:", "md5:")).is_err());
    }
}
