//! Making API keys, and the peppered hash of each that the server keeps.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// Every key starts with this, so a leaked key is recognisable in logs and by scanners.
pub const KEY_PREFIX: &str = "rsv_";

/// A fresh API key: the prefix and 244 random bits from two v4 uuids.
pub fn generate_key() -> String {
    format!("{KEY_PREFIX}{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// The first characters of a key, kept in the clear so an operator can tell keys apart.
pub fn key_display_prefix(key: &str) -> String {
    key.chars().take(12).collect()
}

/// HMAC-SHA-256 of the key under the pepper, hex-encoded. Keys are long and
/// random, so a fast hash is enough; the pepper keeps a stolen table useless.
pub fn hash_key(pepper: &str, key: &str) -> String {
    // HMAC accepts a key of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(pepper.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(key.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_key_hash_depends_on_the_pepper_and_is_stable() {
        let key = generate_key();
        assert!(key.starts_with(KEY_PREFIX));
        assert_eq!(key.len(), KEY_PREFIX.len() + 64);
        assert_eq!(hash_key("p", &key), hash_key("p", &key));
        assert_ne!(hash_key("p", &key), hash_key("q", &key));
        assert_ne!(hash_key("p", &key), hash_key("p", &generate_key()));
    }
}
