//! Webhook signatures as the Standard Webhooks specification
//! (standardwebhooks.com) defines them, so a receiver verifies deliveries
//! with that project's libraries: each request carries `webhook-id` (the
//! event's id, the same on every attempt), `webhook-timestamp` (Unix seconds
//! of the attempt) and `webhook-signature`, a space-separated list of
//! `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per secret in
//! force. A secret is `whsec_` and the base64 of the key's bytes.
//!
//! Releases up to 0.1 sent `reservoir-webhook-*` headers signed another way
//! (hex, keyed by the secret's text, over `<timestamp>.<body>`). They are
//! still sent beside the standard ones so receivers built against 0.1 keep
//! verifying while they move; they go in 0.2.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// The headers of 0.1, deprecated.
pub const LEGACY_ID_HEADER: &str = "reservoir-webhook-id";
pub const LEGACY_TIMESTAMP_HEADER: &str = "reservoir-webhook-timestamp";
pub const LEGACY_SIGNATURE_HEADER: &str = "reservoir-webhook-signature";

const SECRET_PREFIX: &str = "whsec_";
/// Bytes of a new secret's key (the specification allows 24 to 64).
const KEY_BYTES: usize = 32;
/// How far a request's timestamp may be from the receiver's clock: the
/// specification's five minutes, against replays of a captured request.
pub const TOLERANCE_SECONDS: i64 = 300;

/// A fresh signing secret: `whsec_` and the base64 of 32 random bytes.
pub fn new_secret() -> String {
    let key: [u8; KEY_BYTES] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The key a secret stands for: the base64 after the prefix. The secrets
/// of 0.1 (64 hex digits) are base64 too, and decode the same way in every
/// receiver's library; a text that is not base64 (none was ever issued)
/// keys by its bytes.
fn key_of(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    STANDARD.decode(encoded).unwrap_or_else(|_| encoded.as_bytes().to_vec())
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // An HMAC takes a key of any length: this never fails.
    #[allow(clippy::expect_used)]
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length")
}

/// The HMAC-SHA256 of `<id>.<timestamp>.<body>` under the secret's key.
fn signed(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = mac(&key_of(secret));
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    mac
}

/// One signature: the base64 HMAC-SHA256 of `<id>.<timestamp>.<body>`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    STANDARD.encode(signed(secret, id, timestamp, body).finalize().into_bytes())
}

/// The `webhook-signature` value: one `v1,` signature per secret.
pub fn signature_header(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|secret| format!("v1,{}", sign(secret, id, timestamp, body))).collect::<Vec<_>>().join(" ")
}

/// The `reservoir-webhook-signature` value of 0.1: hex HMAC-SHA256 keyed by
/// the secret's text, over `<timestamp>.<body>`.
pub fn legacy_signature_header(secrets: &[&str], timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| {
            let mut mac = mac(secret.as_bytes());
            mac.update(format!("{timestamp}.").as_bytes());
            mac.update(body);
            format!("v1,{}", hex::encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a request was not taken as signed by the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A header is missing or empty.
    Missing(&'static str),
    /// The timestamp is not a number of seconds, or is further than the
    /// tolerance from now.
    Timestamp,
    /// No signature in the header is the secret's.
    Signature,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(header) => write!(f, "no {header} header"),
            Self::Timestamp => write!(f, "timestamp outside {TOLERANCE_SECONDS} s of now"),
            Self::Signature => write!(f, "no signature matches the secret"),
        }
    }
}

/// Verifies a request as a receiver does: its three headers present, its
/// timestamp within the tolerance of `now` (Unix seconds), and one of its
/// `v1` signatures the secret's (compared in constant time).
pub fn verify(secret: &str, id: &str, timestamp: &str, signatures: &str, body: &[u8], now: i64) -> Result<(), Refusal> {
    if id.is_empty() {
        return Err(Refusal::Missing(ID_HEADER));
    }
    if timestamp.is_empty() {
        return Err(Refusal::Missing(TIMESTAMP_HEADER));
    }
    if signatures.is_empty() {
        return Err(Refusal::Missing(SIGNATURE_HEADER));
    }
    let at: i64 = timestamp.parse().map_err(|_| Refusal::Timestamp)?;
    if (now - at).abs() > TOLERANCE_SECONDS {
        return Err(Refusal::Timestamp);
    }
    let expected = signed(secret, id, at, body);
    let matches = signatures
        .split(' ')
        .filter_map(|part| part.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .any(|signature| expected.clone().verify_slice(&signature).is_ok());
    if matches { Ok(()) } else { Err(Refusal::Signature) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The example of the specification's reference libraries: secret,
    /// id, timestamp and body, and the signature they all compute.
    #[test]
    fn signs_as_the_specification_s_libraries_do() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(signature, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let header = signature_header(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(header, format!("v1,{signature}"));
        assert_eq!(verify(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", &header, body, 1_614_265_400), Ok(()));
    }

    #[test]
    fn a_new_secret_is_32_bytes_of_base64() {
        let secret = new_secret();
        let encoded = secret.strip_prefix("whsec_").unwrap();
        assert_eq!(STANDARD.decode(encoded).unwrap().len(), 32);
        assert_ne!(secret, new_secret());
    }

    #[test]
    fn every_secret_in_force_signs() {
        let (old, new) = (new_secret(), new_secret());
        let header = signature_header(&[&new, &old], "evt", 100, b"{}");
        assert_eq!(verify(&old, "evt", "100", &header, b"{}", 100), Ok(()));
        assert_eq!(verify(&new, "evt", "100", &header, b"{}", 100), Ok(()));
        assert_eq!(verify(&new_secret(), "evt", "100", &header, b"{}", 100), Err(Refusal::Signature));
    }

    #[test]
    fn a_changed_body_id_or_timestamp_is_refused() {
        let secret = new_secret();
        let header = signature_header(&[&secret], "evt", 100, b"{}");
        assert_eq!(verify(&secret, "evt", "100", &header, b"{ }", 100), Err(Refusal::Signature));
        assert_eq!(verify(&secret, "evt2", "100", &header, b"{}", 100), Err(Refusal::Signature));
        assert_eq!(verify(&secret, "evt", "101", &header, b"{}", 101), Err(Refusal::Signature));
        assert_eq!(verify(&secret, "evt", "100", &header, b"{}", 100 + 301), Err(Refusal::Timestamp));
        assert_eq!(verify(&secret, "evt", "soon", &header, b"{}", 100), Err(Refusal::Timestamp));
        assert_eq!(verify(&secret, "", "100", &header, b"{}", 100), Err(Refusal::Missing(ID_HEADER)));
    }

    #[test]
    fn the_legacy_signature_is_hex_over_timestamp_and_body() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_test").unwrap();
        mac.update(br#"1700000000.{"id":"1"}"#);
        let expected = format!("v1,{}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(legacy_signature_header(&["whsec_test"], 1_700_000_000, br#"{"id":"1"}"#), expected);
    }
}
