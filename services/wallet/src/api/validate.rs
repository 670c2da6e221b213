//! Request validation: every string, list and map has a stated maximum, and
//! every refusal names its field.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use prost::Message;
use reservoir_common::money::{MoneyError, Unit};
use reservoir_common::status::FieldViolation;
use reservoir_common::time::{from_timestamp, truncate_to_micros};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::WalletError;
use crate::store::IdempotencyCheck;

/// Idempotency keys: long enough for a UUID with a prefix or a composite key.
pub const IDEMPOTENCY_KEY_LENGTH_MAX: usize = 128;
/// External ids, correlation ids: a UUID or a caller's own id with room to spare.
pub const ID_LENGTH_MAX: usize = 128;
/// Meter codes: short identifiers, like `gpu_seconds`.
pub const METER_CODE_LENGTH_MAX: usize = 64;
/// Meter codes a grant may be restricted to.
pub const METER_CODES_MAX: usize = 32;
/// Descriptions and reasons: a sentence or two for the ledger, not a document.
pub const DESCRIPTION_LENGTH_MAX: usize = 512;
/// Metadata entries per map, and their key and value lengths: enough for
/// tags, small enough that a ledger row stays small.
pub const METADATA_ENTRIES_MAX: usize = 32;
pub const METADATA_KEY_LENGTH_MAX: usize = 64;
pub const METADATA_VALUE_LENGTH_MAX: usize = 512;
/// Debits per BatchDebit: one ingest batch of the metering service.
pub const BATCH_DEBITS_MAX: usize = 1_000;
/// Ledger page size: a page stays under a megabyte on the wire.
pub const PAGE_SIZE_MAX: u32 = 1_000;
pub const PAGE_SIZE_DEFAULT: u32 = 100;
/// Hold lifetimes: at least a second, at most 30 days (a card authorisation's usual longest).
pub const HOLD_TTL_SECONDS_MAX: u32 = 30 * 24 * 3_600;
/// Priorities: small non-negative numbers are plenty to order grants.
pub const PRIORITY_MAX: i32 = 1_000_000;

/// Collects every violation of a request before answering, so a client
/// learns all its mistakes at once.
#[derive(Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    pub fn finish(self) -> Result<(), WalletError> {
        if self.0.is_empty() { Ok(()) } else { Err(WalletError::InvalidArgument(self.0)) }
    }

    pub fn id<T>(&mut self, field: &str, text: &str, wrap: impl FnOnce(Uuid) -> T) -> Option<T> {
        match Uuid::parse_str(text) {
            Ok(id) => Some(wrap(id)),
            Err(_) if text.is_empty() => {
                self.add(field, "is required");
                None
            }
            Err(_) => {
                self.add(field, "is not a valid id");
                None
            }
        }
    }

    pub fn idempotency_key(&mut self, field: &str, key: &str) {
        if key.is_empty() {
            self.add(field, "is required: every mutating call takes an idempotency key");
        } else if key.chars().count() > IDEMPOTENCY_KEY_LENGTH_MAX {
            self.add(field, format!("is longer than {IDEMPOTENCY_KEY_LENGTH_MAX} characters"));
        }
    }

    pub fn text(&mut self, field: &str, text: &str, length_max: usize) {
        if text.chars().count() > length_max {
            self.add(field, format!("is longer than {length_max} characters"));
        }
    }

    pub fn required_text(&mut self, field: &str, text: &str, length_max: usize) {
        if text.trim().is_empty() {
            self.add(field, "is required");
        } else {
            self.text(field, text, length_max);
        }
    }

    pub fn meter_code(&mut self, field: &str, code: &str) {
        let ok = code.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if code.len() > METER_CODE_LENGTH_MAX {
            self.add(field, format!("is longer than {METER_CODE_LENGTH_MAX} characters"));
        } else if !ok {
            self.add(field, "may hold only letters, digits and _ - . :");
        }
    }

    pub fn metadata(&mut self, field: &str, metadata: &BTreeMap<String, String>) {
        if metadata.len() > METADATA_ENTRIES_MAX {
            self.add(field, format!("has more than {METADATA_ENTRIES_MAX} entries"));
            return;
        }
        for (key, value) in metadata {
            if key.is_empty() || key.chars().count() > METADATA_KEY_LENGTH_MAX {
                self.add(format!("{field}[{key}]"), format!("keys are 1 to {METADATA_KEY_LENGTH_MAX} characters"));
            }
            if value.chars().count() > METADATA_VALUE_LENGTH_MAX {
                self.add(
                    format!("{field}[{key}]"),
                    format!("values are at most {METADATA_VALUE_LENGTH_MAX} characters"),
                );
            }
        }
    }

    pub fn positive_amount(&mut self, field: &str, unit: &Unit, text: &str) -> Option<Decimal> {
        self.amount_with(field, text, |text| unit.parse_positive(text))
    }

    pub fn amount_with(
        &mut self,
        field: &str,
        text: &str,
        parse: impl FnOnce(&str) -> Result<Decimal, MoneyError>,
    ) -> Option<Decimal> {
        if text.is_empty() {
            self.add(field, "is required");
            return None;
        }
        match parse(text) {
            Ok(amount) => Some(amount),
            Err(error) => {
                self.add(field, error.to_string());
                None
            }
        }
    }

    pub fn time(&mut self, field: &str, timestamp: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
        let timestamp = timestamp?;
        match from_timestamp(timestamp) {
            Some(instant) => Some(truncate_to_micros(instant)),
            None => {
                self.add(field, "is not a valid instant");
                None
            }
        }
    }
}

/// What an idempotent call is checked against: the method and a hash of the
/// whole request (maps are encoded in key order, so the hash is stable).
pub fn idempotency_check(method: &'static str, key: &str, request: &impl Message) -> IdempotencyCheck {
    let digest = Sha256::digest(request.encode_to_vec());
    IdempotencyCheck { key: key.to_owned(), method, request_hash: hex::encode(digest) }
}

pub fn now() -> DateTime<Utc> {
    truncate_to_micros(Utc::now())
}
