//! The event outbox. A transaction writes its events in one row per tenant
//! (in parts when there are many), in the same transaction as the change,
//! numbered by the transaction itself: on PostgreSQL its transaction id, on
//! SQLite (one writer) a counter. No row is shared by every commit, so
//! commits do not queue on one another to number their events.
//!
//! Reading in order is safe because a reader on PostgreSQL only reads rows of
//! transactions older than the oldest one still running
//! (`pg_snapshot_xmin`): those are all finished, so no row can later appear
//! before what was read. A long-running writing transaction anywhere in the
//! cluster therefore delays events, never loses them.
//!
//! An event's public sequence is `base + ((commit - commit_base) << 20) +
//! index`: increasing in commit order, above every number the earlier
//! one-row-per-event outbox gave, with room for 2^20 events per transaction
//! and tenant. A debit's event names the ledger entry that already holds its
//! key, correlation and meter instead of repeating them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::write::Script;
use crate::domain::*;
use crate::error::WalletError;

/// Bits of the public sequence that number events within one transaction.
const INDEX_BITS: u32 = 20;
/// Events per stored part: a few kilobytes a row.
const EVENTS_PER_PART: usize = 256;

/// How the outbox's numbers map to public sequences; fixed at migration.
#[derive(Debug, Clone, Copy)]
pub struct Numbering {
    /// The first public sequence after the events of the earlier outbox.
    pub base: u64,
    /// The commit id the numbering starts from.
    pub commit_base: i64,
}

impl Numbering {
    pub fn sequence(&self, commit: i64, index: u64) -> u64 {
        let commits = u64::try_from(commit - self.commit_base).unwrap_or(0);
        self.base + (commits << INDEX_BITS) + index
    }

    /// The position just after `after_sequence`: the commit to read from and
    /// the last index of it already read, if any.
    pub fn cursor(&self, after_sequence: u64) -> (i64, Option<u64>) {
        if after_sequence < self.base {
            return (self.commit_base, None);
        }
        let offset = after_sequence - self.base;
        let commit = self.commit_base + i64::try_from(offset >> INDEX_BITS).unwrap_or(i64::MAX);
        (commit, Some(offset & ((1 << INDEX_BITS) - 1)))
    }
}

pub async fn numbering(connection: &impl ConnectionTrait) -> Result<Numbering, WalletError> {
    let row = connection
        .query_one_raw(Statement::from_string(
            connection.get_database_backend(),
            "SELECT base, commit_base FROM event_numbering WHERE id = 1",
        ))
        .await?
        .ok_or_else(|| WalletError::internal("the event numbering row is missing"))?;
    let base: i64 = row.try_get("", "base")?;
    Ok(Numbering { base: u64::try_from(base).unwrap_or(0), commit_base: row.try_get("", "commit_base")? })
}

/// A decimal as mantissa and scale.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Amount(i128, u32);

impl From<Decimal> for Amount {
    fn from(value: Decimal) -> Self {
        Self(value.mantissa(), value.scale())
    }
}

impl Amount {
    fn value(self) -> Decimal {
        Decimal::try_from_i128_with_scale(self.0, self.1).unwrap_or_default()
    }
}

/// Where an event's key, correlation id and meter are.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Texts {
    Inline {
        key: String,
        correlation: String,
        meter: Option<String>,
    },
    /// The same as the entry at this sequence of the event's account.
    Entry(u64),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredEvent {
    kind: u8,
    account: u64,
    /// Microseconds after the part's `at`.
    after: i64,
    amount: Option<Amount>,
    available: Amount,
    grant: Option<[u8; 16]>,
    hold: Option<[u8; 16]>,
    texts: Texts,
    threshold: Option<Amount>,
    cap_percent: Option<u32>,
    counterparty: Option<[u8; 16]>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredPart {
    at: i64,
    events: Vec<StoredEvent>,
}

const EVENT_TYPES: [EventType; 20] = [
    EventType::AccountCreated,
    EventType::AccountUpdated,
    EventType::GrantCreated,
    EventType::GrantExpired,
    EventType::GrantVoided,
    EventType::Debited,
    EventType::Refunded,
    EventType::Adjusted,
    EventType::HoldCreated,
    EventType::HoldCaptured,
    EventType::HoldReleased,
    EventType::HoldExpired,
    EventType::BalanceLow,
    EventType::BalanceDepleted,
    EventType::BalanceWarning,
    EventType::SpendingCapAlert,
    EventType::TransferredOut,
    EventType::TransferredIn,
    EventType::TransferHeld,
    EventType::TransferRejected,
];

fn kind_code(event_type: EventType) -> u8 {
    EVENT_TYPES.iter().position(|known| *known == event_type).and_then(|index| u8::try_from(index).ok()).unwrap_or(0)
}

/// The events of a batch, in the order they happened, each with its wallet.
pub struct Written<'a> {
    pub wallet: &'a Wallet,
    pub events: &'a [Event],
    /// The entries the same changes wrote, which events may point into.
    pub entries: &'a [Entry],
}

/// The stored rows of a batch's events: (tenant, part, payload), one row per
/// tenant and part, each part holding up to EVENTS_PER_PART events.
pub fn encode(batch: &[Written<'_>]) -> Result<Vec<(TenantId, i32, Vec<u8>)>, WalletError> {
    let mut by_tenant: BTreeMap<TenantId, Vec<StoredEvent>> = BTreeMap::new();
    let at = batch.iter().flat_map(|written| written.events.iter().map(|event| event.occurred_at)).min();
    let Some(at) = at else {
        return Ok(Vec::new());
    };
    let base = at.timestamp_micros();
    for written in batch {
        let account = &written.wallet.account;
        for event in written.events {
            let texts = match written.entries.iter().rev().find(|entry| {
                entry.idempotency_key == event.idempotency_key
                    && entry.correlation_id == event.correlation_id
                    && entry.meter_code == event.meter_code
            }) {
                Some(entry) if !event.idempotency_key.is_empty() => Texts::Entry(entry.sequence),
                _ => Texts::Inline {
                    key: event.idempotency_key.clone(),
                    correlation: event.correlation_id.clone(),
                    meter: event.meter_code.clone(),
                },
            };
            by_tenant.entry(account.tenant_id).or_default().push(StoredEvent {
                kind: kind_code(event.event_type),
                account: account.number,
                after: event.occurred_at.timestamp_micros() - base,
                amount: event.amount.map(Amount::from),
                available: event.available.into(),
                grant: event.grant_id.map(|id| id.0.into_bytes()),
                hold: event.hold_id.map(|id| id.0.into_bytes()),
                texts,
                threshold: event.threshold.map(Amount::from),
                cap_percent: event.cap_percent,
                counterparty: event.counterparty.map(|id| id.0.into_bytes()),
            });
        }
    }
    let mut rows_out = Vec::new();
    for (tenant, events) in by_tenant {
        if events.len() >= 1 << INDEX_BITS {
            return Err(WalletError::internal("a transaction wrote more events than a commit can number"));
        }
        for (part, chunk) in events.chunks(EVENTS_PER_PART).enumerate() {
            let payload = postcard::to_allocvec(&StoredPart { at: base, events: chunk.to_vec() })
                .map_err(|error| WalletError::internal(format!("events do not encode: {error}")))?;
            rows_out.push((tenant, i32::try_from(part).unwrap_or(i32::MAX), payload));
        }
    }
    Ok(rows_out)
}

/// Adds a batch's events to a SQLite script, numbered by the counter its one
/// writer advances (PostgreSQL writes them with the rest of a batch).
pub fn push_sqlite(script: &mut Script, batch: &[Written<'_>]) -> Result<(), WalletError> {
    let rows_out = encode(batch)?;
    if rows_out.is_empty() {
        return Ok(());
    }
    script.push_sql("UPDATE event_numbering SET last_commit = last_commit + 1 WHERE id = 1", Vec::new());
    // A part is up to a few kilobytes.
    let per_statement = reservoir_common::db::rows_per_insert(2_048);
    let mut rows_out = rows_out.into_iter().peekable();
    while rows_out.peek().is_some() {
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(per_statement * 3);
        let mut rows = Vec::with_capacity(per_statement);
        for (tenant, part, payload) in rows_out.by_ref().take(per_statement) {
            values.extend([tenant.0.into(), part.into(), payload.into()]);
            rows.push("(?, (SELECT last_commit FROM event_numbering WHERE id = 1), ?, ?)");
        }
        let sql = format!("INSERT INTO events (tenant_id, commit_id, part, payload) VALUES {}", rows.join(", "));
        script.push_sql(&sql, values);
    }
    Ok(())
}

/// An event as read, before its account and texts are filled in.
pub struct ReadEvent {
    pub sequence: u64,
    pub account_number: u64,
    /// The entry whose texts the event shares, if it points to one.
    pub texts_at: Option<u64>,
    pub event: Event,
}

/// An event of the earlier outbox: its sequence and the encoded wire event.
pub struct LegacyEvent {
    pub sequence: u64,
    pub payload: Vec<u8>,
}

/// Up to `limit` events of a tenant after `after_sequence`, in order. The
/// caller fills in each event's account id and, where `texts_at` is set, its
/// texts from that ledger entry.
pub async fn read(
    connection: &impl ConnectionTrait,
    numbering: Numbering,
    tenant: TenantId,
    after_sequence: u64,
    limit: usize,
) -> Result<Vec<ReadEvent>, WalletError> {
    let backend = connection.get_database_backend();
    let (commit, read_index) = numbering.cursor(after_sequence);
    // Parts hold EVENTS_PER_PART events each but the last, so the part of
    // the first unread event is known without reading the ones before it.
    let first_index = read_index.map_or(0, |read| read + 1);
    let first_part = i32::try_from(first_index / EVENTS_PER_PART as u64).unwrap_or(i32::MAX);
    let horizon = if backend == DbBackend::Postgres {
        "AND commit_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
    } else {
        ""
    };
    let rows = connection
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "SELECT commit_id, part, payload FROM events WHERE tenant_id = $1 \
                 AND (commit_id > $2 OR (commit_id = $2 AND part >= $3)) {horizon} \
                 ORDER BY commit_id, part LIMIT $4"
            ),
            [
                tenant.0.into(),
                commit.into(),
                first_part.into(),
                i64::try_from(limit.div_ceil(EVENTS_PER_PART) + 1).unwrap_or(2).into(),
            ],
        ))
        .await?;
    let mut read = Vec::new();
    for row in rows {
        let commit_id: i64 = row.try_get("", "commit_id")?;
        let part_number: i32 = row.try_get("", "part")?;
        let payload: Vec<u8> = row.try_get("", "payload")?;
        let part: StoredPart = postcard::from_bytes(&payload)
            .map_err(|error| WalletError::internal(format!("stored events do not decode: {error}")))?;
        let first = u64::try_from(part_number).unwrap_or(0) * EVENTS_PER_PART as u64;
        for (offset, stored) in part.events.into_iter().enumerate() {
            let index = first + offset as u64;
            if commit_id == commit && index < first_index {
                continue;
            }
            if read.len() >= limit {
                // Stop at a whole event; the rest is read next time.
                return Ok(read);
            }
            read.push(decode(numbering.sequence(commit_id, index), part.at, stored)?);
        }
    }
    Ok(read)
}

fn decode(sequence: u64, at: i64, stored: StoredEvent) -> Result<ReadEvent, WalletError> {
    let event_type = *EVENT_TYPES
        .get(usize::from(stored.kind))
        .ok_or_else(|| WalletError::internal("a stored event has an unknown type"))?;
    let occurred_at: DateTime<Utc> = DateTime::from_timestamp_micros(at + stored.after).unwrap_or_default();
    let (texts_at, idempotency_key, correlation_id, meter_code) = match stored.texts {
        Texts::Inline { key, correlation, meter } => (None, key, correlation, meter),
        Texts::Entry(sequence) => (Some(sequence), String::new(), String::new(), None),
    };
    Ok(ReadEvent {
        sequence,
        account_number: stored.account,
        texts_at,
        event: Event {
            event_type,
            account_id: AccountId(Uuid::nil()),
            occurred_at,
            amount: stored.amount.map(Amount::value),
            available: stored.available.value(),
            grant_id: stored.grant.map(|bytes| GrantId(Uuid::from_bytes(bytes))),
            hold_id: stored.hold.map(|bytes| HoldId(Uuid::from_bytes(bytes))),
            idempotency_key,
            correlation_id,
            meter_code,
            threshold: stored.threshold.map(Amount::value),
            cap_percent: stored.cap_percent,
            counterparty: stored.counterparty.map(|bytes| AccountId(Uuid::from_bytes(bytes))),
        },
    })
}

/// Events of the earlier outbox after `after_sequence`, below `base`.
pub async fn read_legacy(
    connection: &impl ConnectionTrait,
    numbering: Numbering,
    tenant: TenantId,
    after_sequence: u64,
    limit: usize,
) -> Result<Vec<LegacyEvent>, WalletError> {
    if after_sequence + 1 >= numbering.base {
        return Ok(Vec::new());
    }
    let rows = connection
        .query_all_raw(Statement::from_sql_and_values(
            connection.get_database_backend(),
            "SELECT sequence, payload FROM outbox_events WHERE tenant_id = $1 AND sequence > $2 \
             ORDER BY sequence LIMIT $3",
            [
                tenant.0.into(),
                i64::try_from(after_sequence).unwrap_or(i64::MAX).into(),
                i64::try_from(limit).unwrap_or(500).into(),
            ],
        ))
        .await?;
    rows.into_iter()
        .map(|row| {
            let sequence: i64 = row.try_get("", "sequence")?;
            Ok(LegacyEvent { sequence: u64::try_from(sequence).unwrap_or(0), payload: row.try_get("", "payload")? })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_follow_commits_and_resume_after_the_last_read() {
        let numbering = Numbering { base: 1_000, commit_base: 500 };
        let first = numbering.sequence(501, 0);
        let later = numbering.sequence(501, 7);
        let next_commit = numbering.sequence(502, 0);
        assert!(999 < first && first < later && later < next_commit);
        assert_eq!(numbering.cursor(later), (501, Some(7)));
        assert_eq!(numbering.cursor(0), (500, None));
        assert_eq!(numbering.cursor(999), (500, None));
    }
}
