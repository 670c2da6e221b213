//! Usage events, stored a batch at a time and drawn a line at a time. A
//! batch is one transaction: the monthly counters it advances are locked (in
//! key order, so batches never deadlock), events already known are answered
//! as they stood, the new ones are priced in order and inserted, and each
//! new event joins the line of its batch, account and meter. A line is what
//! the wallet draws in one go under one key; until its answer is recorded it
//! stays listed in `usage_lines`, from which a crashed or failed draw is
//! taken up again, with the same events in the same order under the same key.
//!
//! On PostgreSQL every step is one statement whatever the batch size, its
//! rows bound as arrays; SQLite (one writer) goes through sea-orm. Where a
//! statement joins a table with its arrays, every condition on the table is
//! part of the join (the tenant comes along as a column): a condition on the
//! table alone lets the planner, on a young table's statistics, scan the
//! table first and the arrays once per row, which costs seconds a batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction, rows_per_insert};
use reservoir_common::ids::AccountId;
use rust_decimal::Decimal;
use sea_orm::sea_query::ArrayType;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    Statement, Value,
};
use uuid::Uuid;

use super::counters::{CounterKey, Counters, additions, counter_key, take_counters, write_counters};
use super::entities::event;
use super::events::event_from_row;
use super::latest::{Latest, latest_of, write_latest};
use super::lines::{Line, insert_lines};
use super::unique::{CountedValue, insert_values, seen_values};
use super::{CLAIM, NewEvent, Store, Stored, StoredEvent, json};
use crate::domain::wallet_key;
use crate::domain::{Aggregation, EventStatus, PriceVersion, month_of, replaces_latest};
use crate::error::MeteringError;

/// Times batches are stored again when a concurrent batch stored one of their
/// new event ids first: the next try finds it known.
const STORE_TRIES_MAX: usize = 3;

/// What one try at storing batches came to.
enum Tried {
    Stored(Vec<StoredBatch>),
    /// A new event id was stored concurrently; nothing was written.
    Raced,
}

pub(super) fn array(kind: ArrayType, values: Vec<Value>) -> Value {
    Value::Array(kind, Some(Box::new(values)))
}

/// The tenant once per row, as an array joined like the others (a lone
/// `tenant_id = $1` would be planned as a condition on the table alone).
pub(super) fn tenants(tenant: TenantId, rows: usize) -> Value {
    array(ArrayType::Uuid, vec![Value::from(tenant.0); rows])
}

/// An event to store from ingestion, with the price it is charged by, the
/// scale of its wallet and how its meter adds up.
#[derive(Debug, Clone)]
pub struct IngestEvent {
    pub event: NewEvent,
    pub price: Arc<PriceVersion>,
    pub scale: u32,
    pub aggregation: Arc<Aggregation>,
}

impl IngestEvent {
    /// What `billed` costs on top of the month's figure before it.
    fn charge(&self, figure_before: Decimal, billed: Decimal) -> Result<Decimal, String> {
        self.price.charge(&self.event.dimensions, figure_before, billed, self.scale).map_err(|error| error.to_string())
    }

    fn is_latest(&self) -> bool {
        *self.aggregation == Aggregation::Latest
    }

    /// The value its meter counts, for a UNIQUE_COUNT meter (ingestion
    /// refuses an event without it).
    fn counted(&self) -> Option<CountedValue> {
        let value = self.aggregation.counted_value(&self.event.dimensions).ok().flatten()?;
        Some((counter_key(&self.event), value.to_owned()))
    }
}

/// What storing one batch came to: each event's fate, and the lines of the new ones.
pub type StoredBatch = (Vec<Stored>, Vec<Line>);

impl Store {
    /// Stores batches of one tenant in one transaction, each in order and
    /// after the ones before it. A known event id answers with what was
    /// stored for it; a new event advances its monthly counter, is priced for
    /// the usage before it, and joins its batch's line of its account and
    /// meter. The lines of the new events are returned claimed, for the
    /// caller to draw now. An event whose charge cannot be computed is
    /// refused on its own (`Stored::Unpriced`); its batch is stored without it.
    pub async fn store_batches(
        &self,
        tenant: TenantId,
        batches: Vec<Vec<IngestEvent>>,
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredBatch>, MeteringError> {
        let attempt: Vec<&[IngestEvent]> = batches.iter().map(Vec::as_slice).collect();
        for tried in 0..STORE_TRIES_MAX {
            // A retry takes the counters before it reads the known events,
            // so a concurrent batch with the same new ids is waited out.
            let counters_first = tried > 0;
            match self.try_store_batches(tenant, &attempt, now, counters_first).await? {
                Tried::Stored(stored) => return Ok(stored),
                Tried::Raced => {}
            }
        }
        Err(MeteringError::Conflict("events of the batch were stored concurrently".into()))
    }

    /// One try; nothing is written unless every batch is stored. The first
    /// try reads which events are known, then takes the counters advanced
    /// by what the new ones add (one statement on PostgreSQL); a new id
    /// stored concurrently meanwhile makes the try [`Tried::Raced`].
    /// `counters_first` takes the counters unchanged before reading the
    /// known events instead, so a concurrent batch holding them is waited
    /// out and its events found known.
    async fn try_store_batches(
        &self,
        tenant: TenantId,
        batches: &[&[IngestEvent]],
        now: DateTime<Utc>,
        counters_first: bool,
    ) -> Result<Tried, MeteringError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let all = || batches.iter().flat_map(|batch| batch.iter());
        let ids: Vec<String> = all().map(|new| new.event.event_id.clone()).collect();
        let (mut known, Counters { mut counters, held }) = if counters_first {
            let unchanged = all().map(|new| (counter_key(&new.event), Some(Decimal::ZERO))).collect();
            let counters = take_counters(&transaction, tenant, unchanged).await?;
            (known_events(&transaction, tenant, ids).await?, counters)
        } else {
            let known = known_events(&transaction, tenant, ids).await?;
            let additions =
                additions(all().map(|new| (&new.event, new.aggregation.assumed_addition(new.event.quantity))), &known);
            (known, take_counters(&transaction, tenant, additions).await?)
        };
        // Which counted values the months have seen, read under the counters' locks.
        let candidates = all().filter(|new| !known.contains_key(&new.event.event_id)).filter_map(IngestEvent::counted);
        let mut seen = seen_values(&transaction, tenant, candidates.collect()).await?;
        let mut first_seen: Vec<CountedValue> = Vec::new();
        // The latest quantities of LATEST meters' months, read under the same locks.
        let months = all()
            .filter(|new| new.is_latest() && !known.contains_key(&new.event.event_id))
            .map(|new| counter_key(&new.event));
        let mut latest = latest_of(&transaction, tenant, months.collect()).await?;
        let mut latest_changed: BTreeSet<CounterKey> = BTreeSet::new();
        let this_month = month_of(now);
        let mut stored_batches = Vec::with_capacity(batches.len());
        let mut rows: Vec<(StoredEvent, String, i32)> = Vec::new();
        let mut all_lines: Vec<Line> = Vec::new();
        for batch in batches {
            // One line per account and meter of this batch.
            let batch_id = Uuid::now_v7();
            let mut lines: BTreeMap<(AccountId, String), Line> = BTreeMap::new();
            let mut results = Vec::with_capacity(batch.len());
            for new in batch.iter() {
                let event = &new.event;
                if let Some(stored) = known.get(&event.event_id) {
                    results.push(Stored::Duplicate(stored.clone()));
                    continue;
                }
                if new.is_latest() {
                    // Reports are taken for the month under way only: an
                    // earlier month is closed, or closes at the next pass.
                    if month_of(event.occurred_at) < this_month {
                        results.push(Stored::Closed);
                        continue;
                    }
                    // Priced now as the month's charge would be, so a figure
                    // that cannot be charged is refused while it is sent.
                    if let Err(reason) = new.charge(Decimal::ZERO, event.quantity) {
                        results.push(Stored::Unpriced(reason));
                        continue;
                    }
                    let month = counter_key(event);
                    match latest.get(&month) {
                        Some(current) if !current.open => {
                            results.push(Stored::Closed);
                            continue;
                        }
                        Some(current)
                            if !replaces_latest(
                                event.occurred_at,
                                &event.event_id,
                                current.occurred_at,
                                &current.event_id,
                            ) => {}
                        _ => {
                            let reported = Latest {
                                quantity: event.quantity,
                                occurred_at: event.occurred_at,
                                event_id: event.event_id.clone(),
                                dimensions: event.dimensions.clone(),
                                open: true,
                            };
                            latest.insert(month.clone(), reported);
                            latest_changed.insert(month);
                        }
                    }
                }
                let counter = counters.entry(counter_key(event)).or_insert(Decimal::ZERO);
                let figure_before = *counter;
                let counted = new.counted();
                let new_value = counted.as_ref().is_some_and(|counted| !seen.contains(counted));
                let billed = new.aggregation.bill(figure_before, event.quantity, new_value);
                // Pricing adds the billed quantity to the figure before it,
                // checked: once priced, the counter cannot overflow.
                let amount = match new.charge(figure_before, billed.quantity) {
                    Ok(amount) => amount,
                    Err(reason) => {
                        results.push(Stored::Unpriced(reason));
                        continue;
                    }
                };
                *counter = billed.figure_after;
                if let Some(counted) = counted.filter(|_| new_value) {
                    seen.insert(counted.clone());
                    first_seen.push(counted);
                }
                let stored = StoredEvent {
                    event_id: event.event_id.clone(),
                    account_id: event.account_id,
                    meter_code: event.meter_code.clone(),
                    quantity: billed.quantity,
                    dimensions: event.dimensions.clone(),
                    occurred_at: event.occurred_at,
                    status: EventStatus::Pending,
                    amount,
                    charged_amount: Decimal::ZERO,
                    uncovered_amount: Decimal::ZERO,
                    entry_ids: Vec::new(),
                    reason: String::new(),
                };
                let line = lines.entry((event.account_id, event.meter_code.clone())).or_insert_with(|| Line {
                    tenant,
                    key: wallet_key("usage", &format!("{batch_id}/{}/{}", event.account_id, event.meter_code)),
                    account_id: event.account_id,
                    meter_code: event.meter_code.clone(),
                    events: Vec::new(),
                });
                let line_position = i32::try_from(line.events.len()).unwrap_or(i32::MAX);
                line.events.push(stored.clone());
                rows.push((stored.clone(), line.key.clone(), line_position));
                known.insert(stored.event_id.clone(), stored.clone());
                results.push(Stored::New(stored));
            }
            let lines: Vec<Line> = lines.into_values().collect();
            all_lines.extend(lines.iter().cloned());
            stored_batches.push((results, lines));
        }
        let expected = rows.len() as u64;
        if insert_events(&transaction, tenant, rows, now).await? != expected {
            // A new event id was stored concurrently: the next try finds it known.
            transaction.rollback().await?;
            return Ok(Tried::Raced);
        }
        insert_values(&transaction, tenant, first_seen).await?;
        let latest_changed = latest_changed.into_iter().filter_map(|month| latest.remove_entry(&month)).collect();
        write_latest(&transaction, tenant, latest_changed).await?;
        write_counters(&transaction, tenant, &counters, &held).await?;
        insert_lines(&transaction, &all_lines, now + CLAIM, now).await?;
        transaction.commit().await?;
        Ok(Tried::Stored(stored_batches))
    }
}

/// The stored events among the batch's ids.
async fn known_events(
    transaction: &DatabaseTransaction,
    tenant: TenantId,
    ids: Vec<String>,
) -> Result<HashMap<String, StoredEvent>, MeteringError> {
    let mut known = HashMap::new();
    let rows = if transaction.get_database_backend() == DbBackend::Postgres {
        event::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT e.* FROM UNNEST($1::uuid[], $2::text[]) AS v(t, id) \
                 JOIN usage_events e ON e.tenant_id = v.t AND e.event_id = v.id",
                [tenants(tenant, ids.len()), array(ArrayType::String, ids.into_iter().map(Value::from).collect())],
            ))
            .all(transaction)
            .await?
    } else {
        let mut rows = Vec::new();
        for chunk in ids.chunks(500) {
            rows.extend(
                event::Entity::find()
                    .filter(event::Column::TenantId.eq(tenant.0))
                    .filter(event::Column::EventId.is_in(chunk.to_vec()))
                    .all(transaction)
                    .await?,
            );
        }
        rows
    };
    for row in rows {
        let stored = event_from_row(row)?;
        known.insert(stored.event_id.clone(), stored);
    }
    Ok(known)
}

/// Inserts new events, skipping ids stored meanwhile; returns how many were inserted.
async fn insert_events(
    transaction: &DatabaseTransaction,
    tenant: TenantId,
    rows: Vec<(StoredEvent, String, i32)>,
    now: DateTime<Utc>,
) -> Result<u64, MeteringError> {
    if rows.is_empty() {
        return Ok(0);
    }
    if transaction.get_database_backend() == DbBackend::Postgres {
        let mut columns: Vec<Vec<Value>> = (0..9).map(|_| Vec::with_capacity(rows.len())).collect();
        for (stored, key, position) in &rows {
            let values: [Value; 9] = [
                stored.event_id.clone().into(),
                stored.account_id.0.into(),
                stored.meter_code.clone().into(),
                stored.quantity.into(),
                json(&stored.dimensions).into(),
                stored.occurred_at.into(),
                stored.amount.into(),
                key.clone().into(),
                (*position).into(),
            ];
            for (column, value) in columns.iter_mut().zip(values) {
                column.push(value);
            }
        }
        let kinds = [
            ArrayType::String,
            ArrayType::Uuid,
            ArrayType::String,
            ArrayType::Decimal,
            ArrayType::String,
            ArrayType::ChronoDateTimeUtc,
            ArrayType::Decimal,
            ArrayType::String,
            ArrayType::Int,
        ];
        let mut values: Vec<Value> = vec![tenant.0.into(), now.into()];
        values.extend(kinds.into_iter().zip(columns).map(|(kind, column)| array(kind, column)));
        let inserted = transaction
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO usage_events (tenant_id, event_id, account_id, meter_code, quantity, dimensions, \
                 occurred_at, status, amount, charged_amount, uncovered_amount, entry_ids, reason, origin, \
                 claimed_until, created_at, updated_at, draw_key, draw_position) \
                 SELECT $1, v.id, v.account, v.meter, v.quantity, v.dimensions, v.occurred_at, 'PENDING', v.amount, \
                 0, 0, '[]', '', 'INGEST', $2, $2, $2, v.draw_key, v.position \
                 FROM UNNEST($3::text[], $4::uuid[], $5::text[], $6::numeric[], $7::text[], $8::timestamptz[], \
                 $9::numeric[], $10::text[], $11::int[]) \
                 AS v(id, account, meter, quantity, dimensions, occurred_at, amount, draw_key, position) \
                 ON CONFLICT (tenant_id, event_id) DO NOTHING",
                values,
            ))
            .await?;
        return Ok(inserted.rows_affected());
    }
    let count = rows.len() as u64;
    let models: Vec<event::ActiveModel> = rows
        .into_iter()
        .map(|(stored, key, position)| event::ActiveModel {
            tenant_id: Set(tenant.0),
            event_id: Set(stored.event_id),
            account_id: Set(stored.account_id.0),
            meter_code: Set(stored.meter_code),
            quantity: Set(Amount(stored.quantity)),
            dimensions: Set(json(&stored.dimensions)),
            occurred_at: Set(stored.occurred_at),
            status: Set(EventStatus::Pending.name().to_owned()),
            amount: Set(Amount(stored.amount)),
            charged_amount: Set(Amount(Decimal::ZERO)),
            uncovered_amount: Set(Amount(Decimal::ZERO)),
            entry_ids: Set("[]".to_owned()),
            reason: Set(String::new()),
            origin: Set("INGEST".to_owned()),
            claimed_until: Set(now),
            created_at: Set(now),
            updated_at: Set(now),
            draw_key: Set(Some(key)),
            draw_position: Set(Some(position)),
        })
        .collect();
    // An event row is a few hundred bytes on the wire.
    for chunk in models.chunks(rows_per_insert(400)) {
        event::Entity::insert_many(chunk.to_vec()).exec_without_returning(transaction).await?;
    }
    Ok(count)
}
