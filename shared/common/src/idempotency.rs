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

/// A recorded answer as a replay finds it: the record a store keeps of an
/// answer now (`T`, what rebuilds it), or, for records written before
/// stores kept answers that way, the encoded response itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Replayed<T> {
    Answer(T),
    Encoded(Vec<u8>),
}

impl<T: serde::de::DeserializeOwned> Replayed<T> {
    /// A replay record's two columns read back: the answer's record (JSON)
    /// where there is one, else the encoded response of an older record.
    pub fn read(answer: Option<&str>, response: Vec<u8>) -> Result<Self, String> {
        match answer {
            Some(answer) => serde_json::from_str(answer)
                .map(Self::Answer)
                .map_err(|error| format!("a recorded answer does not read: {error}")),
            None => Ok(Self::Encoded(response)),
        }
    }
}

/// What a replay record keeps of an answer: its record, as JSON.
pub fn answer_record(answer: &impl serde::Serialize) -> Result<String, String> {
    serde_json::to_string(answer).map_err(|error| format!("an answer does not record: {error}"))
}

/// A response recorded encoded, as it was sent.
pub fn decode_encoded<M: Message + Default>(encoded: &[u8]) -> Result<M, String> {
    M::decode(encoded).map_err(|error| format!("a recorded response does not decode: {error}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{decode_encoded, request_hash};

    #[test]
    fn the_same_request_hashes_the_same_and_another_does_not() {
        let health = |service: &str| tonic_health::pb::HealthCheckRequest { service: service.to_owned() };
        assert_eq!(request_hash(&health("a")), request_hash(&health("a")));
        assert_ne!(request_hash(&health("a")), request_hash(&health("b")));
        assert_eq!(request_hash(&health("a")).len(), 64);
    }

    #[test]
    fn an_encoded_response_decodes_as_sent() {
        let sent = tonic_health::pb::HealthCheckRequest { service: "a".to_owned() };
        let decoded: tonic_health::pb::HealthCheckRequest =
            decode_encoded(&prost::Message::encode_to_vec(&sent)).unwrap();
        assert_eq!(decoded, sent);
        assert!(decode_encoded::<tonic_health::pb::HealthCheckRequest>(&[0xff]).is_err());
    }
}
