//! Request validation: every string, list and map has a stated maximum, and
//! every refusal names its field.

use std::collections::BTreeMap;

use prost::Message;
use reservoir_common::auth::TenantId;
pub use reservoir_common::validate::{IDEMPOTENCY_KEY_LENGTH_MAX, METER_CODE_LENGTH_MAX, Violations};

use crate::store::IdempotencyCheck;

/// External ids, correlation ids: a UUID or a caller's own id with room to spare.
pub const ID_LENGTH_MAX: usize = 128;
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
/// Lines per DrawUsage: an ingest batch's accounts and meters.
pub const USAGE_LINES_MAX: usize = 1_000;
/// Amounts per usage line, and per DrawUsage: what a few ingest batches hold,
/// so one request stays a few hundred kilobytes.
pub const USAGE_LINE_AMOUNTS_MAX: usize = 1_000;
pub const USAGE_AMOUNTS_MAX: usize = 10_000;
/// Hold lifetimes: at least a second, at most 30 days (a card authorisation's usual longest).
pub const HOLD_TTL_SECONDS_MAX: u32 = 30 * 24 * 3_600;
pub use reservoir_common::money::GRANT_PRIORITY_MAX as PRIORITY_MAX;

/// What an idempotent call is checked against: the method and a hash of the
/// whole request (maps are encoded in key order, so the hash is stable).
pub fn idempotency_check(
    tenant: TenantId,
    method: &'static str,
    key: &str,
    request: &impl Message,
) -> IdempotencyCheck {
    IdempotencyCheck::new(tenant, method, key, &request.encode_to_vec())
}

pub use reservoir_common::time::now;

/// Checks a metadata map against the wallet's limits.
pub fn check_metadata(violations: &mut Violations, field: &str, metadata: &BTreeMap<String, String>) {
    violations.map(field, metadata, METADATA_ENTRIES_MAX, METADATA_KEY_LENGTH_MAX, METADATA_VALUE_LENGTH_MAX);
}
