//! Idempotency keys as the services check them: a change is recorded under
//! its key with a hash of the request, and the same key sent again with
//! another request is refused (IDEMPOTENCY_KEY_REUSED) rather than replayed.

use prost::Message;
use sha2::{Digest, Sha256};

/// The hash a request is recorded with beside its key: SHA-256 of its
/// protobuf encoding, in hex. The same message encodes the same way, so a
/// retry hashes as the first attempt did.
pub fn request_hash(request: &impl Message) -> String {
    hex::encode(Sha256::digest(request.encode_to_vec()))
}

#[cfg(test)]
mod tests {
    use super::request_hash;

    #[test]
    fn the_same_request_hashes_the_same_and_another_does_not() {
        let health = |service: &str| tonic_health::pb::HealthCheckRequest { service: service.to_owned() };
        assert_eq!(request_hash(&health("a")), request_hash(&health("a")));
        assert_ne!(request_hash(&health("a")), request_hash(&health("b")));
        assert_eq!(request_hash(&health("a")).len(), 64);
    }
}
