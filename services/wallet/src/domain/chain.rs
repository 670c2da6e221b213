//! The ledger's hash chain. Each entry carries the SHA-256 of the hash of
//! the account's entry before it and of its own content, so an entry changed
//! or removed after it was written no longer matches what follows it, and a
//! hash kept by a customer (the head, or any entry's) later proves the history
//! up to it unchanged.
//!
//! A hash is the SHA-256 truncated to its first 128 bits (a truncation FIPS
//! 180-4 §7 provides for). Forging a history needs an entry matching a
//! hash already kept, a second preimage: 2^128 tries at 128 bits, as out of
//! reach as at 256, while every entry of every debit stores 16 bytes fewer.
//!
//! The content is every figure of the entry as the ledger holds it, each
//! field written with its length so no two entries encode alike. Instants
//! count whole microseconds (what both databases keep), amounts are their
//! normalized mantissa and scale (a database may give `1.50` back as `1.5`),
//! an absent id is sixteen zeros (no id is nil).

use std::fmt;

use sha2::{Digest, Sha256};

use super::types::{Entry, EntryId};

/// Bytes of a SHA-256 kept in the chain.
pub const HASH_BYTES: usize = 16;

/// A (truncated) SHA-256 of the chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LedgerHash(pub [u8; HASH_BYTES]);

impl LedgerHash {
    /// What the first entry of an account follows.
    pub const GENESIS: Self = Self([0; HASH_BYTES]);

    /// The stored form back: `None` unless it is 16 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; HASH_BYTES]>::try_from(bytes).ok().map(Self)
    }

    /// Lower-case hex, as shown to callers.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// Hex as a caller gives it back (either case); `None` unless 32 digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        Self::from_slice(&bytes)
    }
}

impl fmt::Debug for LedgerHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LedgerHash({})", self.to_hex())
    }
}

/// Version of the content's encoding, hashed first.
const ENCODING: &[u8] = b"reservoir.ledger.v1";

/// The hash of `entry` following `previous` (its own `hash` is not part of it).
pub fn entry_hash(previous: &LedgerHash, entry: &Entry) -> LedgerHash {
    let mut hasher = Sha256::new();
    hasher.update(ENCODING);
    hasher.update(previous.0);
    let mut field = |bytes: &[u8]| {
        hasher.update(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        hasher.update(bytes);
    };
    let optional_id = |id: Option<uuid::Uuid>| id.map_or([0; 16], uuid::Uuid::into_bytes);
    // An amount as its normalized mantissa and scale: the same whatever
    // scale a database gives it back with, and nothing to allocate.
    let amount = |amount: rust_decimal::Decimal| {
        let amount = amount.normalize();
        let mut bytes = [0; 20];
        bytes[..16].copy_from_slice(&amount.mantissa().to_be_bytes());
        bytes[16..].copy_from_slice(&amount.scale().to_be_bytes());
        bytes
    };
    field(entry.id.0.as_bytes());
    field(entry.account_id.0.as_bytes());
    field(&entry.sequence.to_be_bytes());
    field(&entry.position.to_be_bytes());
    field(&entry.created_at.timestamp_micros().to_be_bytes());
    field(entry.kind.name().as_bytes());
    field(&amount(entry.amount));
    field(&amount(entry.balance_after));
    field(&optional_id(entry.grant_id.map(|id| id.0)));
    field(&optional_id(entry.hold_id.map(|id| id.0)));
    field(entry.idempotency_key.as_bytes());
    field(entry.correlation_id.as_bytes());
    // A meter code is never empty, so empty stands for none.
    field(entry.meter_code.as_deref().unwrap_or_default().as_bytes());
    field(entry.description.as_bytes());
    field(&u32::try_from(entry.metadata.len()).unwrap_or(u32::MAX).to_be_bytes());
    for (key, value) in &entry.metadata {
        field(key.as_bytes());
        field(value.as_bytes());
    }
    field(&optional_id(entry.refunded_entry_id.map(|id| id.0)));
    field(&optional_id(entry.key_id.map(|id| id.0)));
    let digest = hasher.finalize();
    let mut hash = [0; HASH_BYTES];
    hash.copy_from_slice(&digest[..HASH_BYTES]);
    LedgerHash(hash)
}

/// Where a recomputed chain parts from the stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// The entry's stored hash is not the hash of its content after the
    /// entry before it: it, or one before it, was changed or removed.
    Altered { sequence: u64, entry: EntryId, expected: LedgerHash, stored: Option<LedgerHash> },
    /// The ledger goes from one sequence to a later one: entries are missing.
    Missing { sequence: u64 },
    /// The account's head is not the last entry's hash: entries at the end
    /// were removed, or the head was changed.
    Head { sequence: u64, entry: Option<EntryId>, expected: LedgerHash, stored: LedgerHash },
    /// An entry lies past the account's latest sequence: added behind the
    /// account's back.
    Beyond { sequence: u64, entry: EntryId },
    /// The entry at a sequence a caller kept a hash of has another hash now.
    Known { sequence: u64, entry: EntryId, expected: LedgerHash, stored: LedgerHash },
}

impl ChainBreak {
    /// The sequence of the first entry that does not match.
    pub fn sequence(&self) -> u64 {
        match self {
            Self::Altered { sequence, .. }
            | Self::Missing { sequence }
            | Self::Head { sequence, .. }
            | Self::Known { sequence, .. }
            | Self::Beyond { sequence, .. } => *sequence,
        }
    }

    /// The id of the entry that does not match; none where it is missing.
    pub fn entry(&self) -> Option<EntryId> {
        match self {
            Self::Altered { entry, .. } | Self::Known { entry, .. } | Self::Beyond { entry, .. } => Some(*entry),
            Self::Head { entry, .. } => *entry,
            Self::Missing { .. } => None,
        }
    }

    /// The reason shown to callers.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Altered { .. } => "ENTRY_ALTERED",
            Self::Missing { .. } => "ENTRY_MISSING",
            Self::Head { .. } => "HEAD_MISMATCH",
            Self::Known { .. } => "KNOWN_HASH_MISMATCH",
            Self::Beyond { .. } => "ENTRY_BEYOND_HEAD",
        }
    }
}

/// A hash a caller kept of the entry at `sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownHash {
    pub sequence: u64,
    pub hash: LedgerHash,
}

/// Recomputes an account's chain entry by entry, in sequence order from the
/// first; fed a page at a time, so a ledger of any length is checked in
/// bounded memory.
#[derive(Debug, Clone)]
pub struct ChainCheck {
    previous: LedgerHash,
    next_sequence: u64,
    last_entry: Option<EntryId>,
    known: Option<KnownHash>,
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self::new(None)
    }
}

impl ChainCheck {
    pub fn new(known: Option<KnownHash>) -> Self {
        Self { previous: LedgerHash::GENESIS, next_sequence: 1, last_entry: None, known }
    }

    /// Entries checked so far.
    pub fn checked(&self) -> u64 {
        self.next_sequence - 1
    }

    /// The next entry, in order.
    pub fn check(&mut self, entry: &Entry) -> Result<(), ChainBreak> {
        if entry.sequence != self.next_sequence {
            return Err(ChainBreak::Missing { sequence: self.next_sequence });
        }
        let expected = entry_hash(&self.previous, entry);
        if entry.hash != Some(expected) {
            return Err(ChainBreak::Altered {
                sequence: entry.sequence,
                entry: entry.id,
                expected,
                stored: entry.hash,
            });
        }
        if let Some(known) = self.known.filter(|known| known.sequence == entry.sequence && known.hash != expected) {
            let (sequence, entry) = (entry.sequence, entry.id);
            return Err(ChainBreak::Known { sequence, entry, expected: known.hash, stored: expected });
        }
        self.previous = expected;
        self.next_sequence += 1;
        self.last_entry = Some(entry.id);
        Ok(())
    }

    /// After the last entry: the account's stored head must be its hash, and
    /// a kept hash must have been met. Returns the head.
    pub fn finish(self, last_sequence: u64, head: LedgerHash) -> Result<LedgerHash, ChainBreak> {
        if self.checked() != last_sequence {
            return Err(ChainBreak::Missing { sequence: self.next_sequence });
        }
        if head != self.previous {
            let entry = self.last_entry;
            return Err(ChainBreak::Head { sequence: last_sequence, entry, expected: self.previous, stored: head });
        }
        if let Some(known) = self.known.filter(|known| known.sequence > last_sequence || known.sequence == 0) {
            return Err(ChainBreak::Missing { sequence: known.sequence });
        }
        Ok(head)
    }
}
