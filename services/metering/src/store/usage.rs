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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction, rows_per_insert};
use rust_decimal::Decimal;
use sea_orm::sea_query::{ArrayType, Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement, Value,
};
use uuid::Uuid;

use super::entities::{counter, event, line};
use super::{CLAIM, NewEvent, Settlement, Store, Stored, StoredEvent, event_from_row, json};
use crate::domain::wallet_key;
use crate::domain::{EventStatus, PriceVersion, month_of};
use crate::error::MeteringError;

/// Lines of events stored before lines existed are named by this and the
/// event id: each such event is drawn alone, under the key it always had.
pub const LEGACY_LINE_PREFIX: &str = "legacy:";

/// Times batches are stored again when a concurrent batch stored one of their
/// new event ids first: the next try finds it known.
const STORE_TRIES_MAX: usize = 3;

/// What one try at storing batches came to.
enum Tried {
    Stored(Vec<StoredBatch>),
    /// A new event id was stored concurrently; nothing was written.
    Raced,
}

/// One line: the usage of one account and meter drawn in one go.
#[derive(Debug, Clone)]
pub struct Line {
    pub tenant: TenantId,
    /// The wallet key the line is drawn under.
    pub key: String,
    pub account_id: Uuid,
    pub meter_code: String,
    /// The line's events in order.
    pub events: Vec<StoredEvent>,
}

fn array(kind: ArrayType, values: Vec<Value>) -> Value {
    Value::Array(kind, Some(Box::new(values)))
}

/// The tenant once per row, as an array joined like the others (a lone
/// `tenant_id = $1` would be planned as a condition on the table alone).
fn tenants(tenant: TenantId, rows: usize) -> Value {
    array(ArrayType::Uuid, vec![Value::from(tenant.0); rows])
}

/// A counter's key: account, meter, month.
type CounterKey = (Uuid, String, String);

/// An event to store from ingestion, with the price it is charged by and
/// the scale of its wallet.
#[derive(Debug, Clone)]
pub struct IngestEvent {
    pub event: NewEvent,
    pub price: Arc<PriceVersion>,
    pub scale: u32,
}

impl IngestEvent {
    fn charge(&self, usage_before: Decimal) -> Result<Decimal, String> {
        self.price
            .charge(&self.event.dimensions, usage_before, self.event.quantity, self.scale)
            .map_err(|error| error.to_string())
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
            let additions = additions(all().map(|new| &new.event), &known);
            (known, take_counters(&transaction, tenant, additions).await?)
        };
        let mut stored_batches = Vec::with_capacity(batches.len());
        let mut rows: Vec<(StoredEvent, String, i32)> = Vec::new();
        let mut all_lines: Vec<Line> = Vec::new();
        for batch in batches {
            // One line per account and meter of this batch.
            let batch_id = Uuid::now_v7();
            let mut lines: BTreeMap<(Uuid, String), Line> = BTreeMap::new();
            let mut results = Vec::with_capacity(batch.len());
            for new in batch.iter() {
                let event = &new.event;
                if let Some(stored) = known.get(&event.event_id) {
                    results.push(Stored::Duplicate(stored.clone()));
                    continue;
                }
                let counter = counters.entry(counter_key(event)).or_insert(Decimal::ZERO);
                let usage_before = *counter;
                // Pricing adds the quantity to the usage before it, checked:
                // once priced, the counter cannot overflow.
                let amount = match new.charge(usage_before) {
                    Ok(amount) => amount,
                    Err(reason) => {
                        results.push(Stored::Unpriced(reason));
                        continue;
                    }
                };
                *counter = usage_before + event.quantity;
                let stored = StoredEvent {
                    event_id: event.event_id.clone(),
                    account_id: event.account_id,
                    meter_code: event.meter_code.clone(),
                    quantity: event.quantity,
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
        write_counters(&transaction, tenant, &counters, &held).await?;
        insert_lines(&transaction, &all_lines, now + CLAIM, now).await?;
        transaction.commit().await?;
        Ok(Tried::Stored(stored_batches))
    }

    /// Claims up to `limit` lines nobody holds, oldest claim first, with their
    /// events in order (an event stored before lines is a line of its own).
    pub async fn claim_lines(&self, now: DateTime<Utc>, limit: u64) -> Result<Vec<Line>, MeteringError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let backend = transaction.get_database_backend();
        let mut query = line::Entity::find()
            .filter(line::Column::ClaimedUntil.lt(now))
            .order_by_asc(line::Column::ClaimedUntil)
            .limit(limit);
        if backend == DbBackend::Postgres {
            query = query
                .lock_with_behavior(sea_orm::sea_query::LockType::Update, sea_orm::sea_query::LockBehavior::SkipLocked);
        }
        let due = query.all(&transaction).await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_tenant: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
        for row in &due {
            by_tenant.entry(row.tenant_id).or_default().push(row.draw_key.clone());
        }
        for (tenant, keys) in &by_tenant {
            line::Entity::update_many()
                .col_expr(line::Column::ClaimedUntil, Expr::value(now + CLAIM))
                .filter(line::Column::TenantId.eq(*tenant))
                .filter(line::Column::DrawKey.is_in(keys.clone()))
                .exec(&transaction)
                .await?;
        }
        let mut lines = Vec::with_capacity(due.len());
        for (tenant, keys) in by_tenant {
            let (legacy, drawn): (Vec<String>, Vec<String>) =
                keys.into_iter().partition(|key| key.starts_with(LEGACY_LINE_PREFIX));
            let mut events: BTreeMap<String, Vec<event::Model>> = BTreeMap::new();
            for chunk in drawn.chunks(500) {
                for row in event::Entity::find()
                    .filter(event::Column::TenantId.eq(tenant))
                    .filter(event::Column::DrawKey.is_in(chunk.to_vec()))
                    .order_by_asc(event::Column::DrawPosition)
                    .all(&transaction)
                    .await?
                {
                    if let Some(key) = row.draw_key.clone() {
                        events.entry(key).or_default().push(row);
                    }
                }
            }
            for key in legacy {
                let id = key.trim_start_matches(LEGACY_LINE_PREFIX).to_owned();
                if let Some(row) = event::Entity::find_by_id((tenant, id)).one(&transaction).await? {
                    events.insert(key, vec![row]);
                }
            }
            for row in due.iter().filter(|row| row.tenant_id == tenant) {
                let rows = events.remove(&row.draw_key).unwrap_or_default();
                lines.push(Line {
                    tenant: TenantId(tenant),
                    key: row.draw_key.clone(),
                    account_id: row.account_id,
                    meter_code: row.meter_code.clone(),
                    events: rows.into_iter().map(event_from_row).collect::<Result<_, _>>()?,
                });
            }
        }
        transaction.commit().await?;
        Ok(lines)
    }

    /// Lets go of lines whose draw could not be sent, so the next pass takes them.
    pub async fn release_lines(
        &self,
        tenant: TenantId,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), MeteringError> {
        for chunk in keys.chunks(500) {
            line::Entity::update_many()
                .col_expr(line::Column::ClaimedUntil, Expr::value(now))
                .filter(line::Column::TenantId.eq(tenant.0))
                .filter(line::Column::DrawKey.is_in(chunk.to_vec()))
                .exec(&self.db)
                .await?;
        }
        Ok(())
    }

    /// Records the wallet's answers for drawn lines and forgets the lines, in
    /// one transaction.
    pub async fn settle_lines(
        &self,
        tenant: TenantId,
        settlements: &[(String, Settlement)],
        lines: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), MeteringError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        settle(&transaction, tenant, settlements, now).await?;
        if transaction.get_database_backend() == DbBackend::Postgres {
            if !lines.is_empty() {
                transaction
                    .execute_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "DELETE FROM usage_lines l USING UNNEST($1::uuid[], $2::text[]) AS v(t, k) \
                         WHERE l.tenant_id = v.t AND l.draw_key = v.k",
                        [
                            tenants(tenant, lines.len()),
                            array(ArrayType::String, lines.iter().map(|key| Value::from(key.clone())).collect()),
                        ],
                    ))
                    .await?;
            }
        } else {
            for chunk in lines.chunks(500) {
                line::Entity::delete_many()
                    .filter(line::Column::TenantId.eq(tenant.0))
                    .filter(line::Column::DrawKey.is_in(chunk.to_vec()))
                    .exec(&transaction)
                    .await?;
            }
        }
        transaction.commit().await?;
        Ok(())
    }
}

/// A counter's key for an event.
fn counter_key(event: &NewEvent) -> CounterKey {
    (event.account_id, event.meter_code.clone(), month_of(event.occurred_at))
}

/// What the new events among `events` add to each counter, should every one
/// be priced (`None` where the sum would overflow: that counter is taken
/// unchanged and written once the events are priced).
fn additions<'a>(
    events: impl Iterator<Item = &'a NewEvent>,
    known: &HashMap<String, StoredEvent>,
) -> BTreeMap<CounterKey, Option<Decimal>> {
    let mut additions: BTreeMap<CounterKey, Option<Decimal>> = BTreeMap::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for event in events.filter(|event| !known.contains_key(&event.event_id)) {
        // Every counter an event may advance is taken, a repeated id's too
        // (it is new again should pricing refuse its first occurrence).
        let sum = additions.entry(counter_key(event)).or_insert(Some(Decimal::ZERO));
        if seen.insert(event.event_id.as_str()) {
            *sum = sum.and_then(|sum| sum.checked_add(event.quantity));
        }
    }
    additions
}

/// A batch's monthly counters once taken: as they stood before the batch
/// (to price its events from), and as its transaction holds them now (what
/// [`write_counters`] compares the priced counters with).
struct Counters {
    counters: BTreeMap<CounterKey, Decimal>,
    held: HashMap<CounterKey, Decimal>,
}

/// Takes the counters of `additions` for the transaction. On PostgreSQL one
/// statement creates the missing ones, locks them in key order (so batches
/// never deadlock) and adds to each what the batch's new events would add,
/// so a batch whose events are all priced writes its counters once; an event
/// pricing refuses is taken back by [`write_counters`]. SQLite has one
/// writer at a time: its counters are read as they stand.
async fn take_counters(
    transaction: &DatabaseTransaction,
    tenant: TenantId,
    additions: BTreeMap<CounterKey, Option<Decimal>>,
) -> Result<Counters, MeteringError> {
    let mut taken = Counters { counters: BTreeMap::new(), held: HashMap::new() };
    if additions.is_empty() {
        return Ok(taken);
    }
    if transaction.get_database_backend() == DbBackend::Postgres {
        let accounts = array(ArrayType::Uuid, additions.keys().map(|key| Value::from(key.0)).collect());
        let meters = array(ArrayType::String, additions.keys().map(|key| Value::from(key.1.clone())).collect());
        let months = array(ArrayType::String, additions.keys().map(|key| Value::from(key.2.clone())).collect());
        let sums = array(
            ArrayType::Decimal,
            additions.values().map(|sum| Value::from(sum.unwrap_or(Decimal::ZERO))).collect(),
        );
        let rows = transaction
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO usage_counters AS c (tenant_id, account_id, meter_code, month, quantity) \
                 SELECT $1, v.a, v.m, v.mo, v.q FROM UNNEST($2::uuid[], $3::text[], $4::text[], $5::numeric[]) \
                 AS v(a, m, mo, q) ORDER BY v.a, v.m, v.mo \
                 ON CONFLICT (tenant_id, account_id, meter_code, month) \
                 DO UPDATE SET quantity = c.quantity + EXCLUDED.quantity \
                 RETURNING c.account_id, c.meter_code, c.month, c.quantity",
                [tenant.0.into(), accounts, meters, months, sums],
            ))
            .await?;
        for row in rows {
            let key: CounterKey =
                (row.try_get("", "account_id")?, row.try_get("", "meter_code")?, row.try_get("", "month")?);
            let quantity: Decimal = row.try_get("", "quantity")?;
            let added = additions.get(&key).copied().flatten().unwrap_or(Decimal::ZERO);
            taken.counters.insert(key.clone(), quantity - added);
            taken.held.insert(key, quantity);
        }
        return Ok(taken);
    }
    let accounts: BTreeSet<Uuid> = additions.keys().map(|key| key.0).collect();
    let accounts: Vec<Uuid> = accounts.into_iter().collect();
    for chunk in accounts.chunks(500) {
        for row in counter::Entity::find()
            .filter(counter::Column::TenantId.eq(tenant.0))
            .filter(counter::Column::AccountId.is_in(chunk.to_vec()))
            .all(transaction)
            .await?
        {
            let key = (row.account_id, row.meter_code, row.month);
            if additions.contains_key(&key) {
                taken.counters.insert(key.clone(), row.quantity.0);
                taken.held.insert(key, row.quantity.0);
            }
        }
    }
    Ok(taken)
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
                stored.account_id.into(),
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
            account_id: Set(stored.account_id),
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

/// Writes the counters whose priced value is not what the transaction
/// holds (on PostgreSQL, only where pricing refused an event; on SQLite,
/// every counter the batch advanced).
async fn write_counters(
    transaction: &DatabaseTransaction,
    tenant: TenantId,
    counters: &BTreeMap<CounterKey, Decimal>,
    held: &HashMap<CounterKey, Decimal>,
) -> Result<(), MeteringError> {
    let changed: Vec<(&CounterKey, &Decimal)> =
        counters.iter().filter(|(key, value)| held.get(*key) != Some(*value)).collect();
    if changed.is_empty() {
        return Ok(());
    }
    if transaction.get_database_backend() == DbBackend::Postgres {
        let accounts = array(ArrayType::Uuid, changed.iter().map(|(key, _)| Value::from(key.0)).collect());
        let meters = array(ArrayType::String, changed.iter().map(|(key, _)| Value::from(key.1.clone())).collect());
        let months = array(ArrayType::String, changed.iter().map(|(key, _)| Value::from(key.2.clone())).collect());
        let quantities = array(ArrayType::Decimal, changed.iter().map(|(_, value)| Value::from(**value)).collect());
        transaction
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE usage_counters c SET quantity = v.q \
                 FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::numeric[]) AS v(t, a, m, mo, q) \
                 WHERE c.tenant_id = v.t AND c.account_id = v.a AND c.meter_code = v.m AND c.month = v.mo",
                [tenants(tenant, changed.len()), accounts, meters, months, quantities],
            ))
            .await?;
        return Ok(());
    }
    let models: Vec<counter::ActiveModel> = changed
        .into_iter()
        .map(|(key, value)| counter::ActiveModel {
            tenant_id: Set(tenant.0),
            account_id: Set(key.0),
            meter_code: Set(key.1.clone()),
            month: Set(key.2.clone()),
            quantity: Set(Amount(*value)),
        })
        .collect();
    for chunk in models.chunks(rows_per_insert(200)) {
        counter::Entity::insert_many(chunk.to_vec())
            .on_conflict(
                OnConflict::columns([
                    counter::Column::TenantId,
                    counter::Column::AccountId,
                    counter::Column::MeterCode,
                    counter::Column::Month,
                ])
                .update_column(counter::Column::Quantity)
                .to_owned(),
            )
            .exec_without_returning(transaction)
            .await?;
    }
    Ok(())
}

/// Lists lines as not yet drawn, held until `claimed_until`.
async fn insert_lines(
    transaction: &DatabaseTransaction,
    lines: &[Line],
    claimed_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), MeteringError> {
    if lines.is_empty() {
        return Ok(());
    }
    if transaction.get_database_backend() == DbBackend::Postgres {
        let tenants = array(ArrayType::Uuid, lines.iter().map(|line| Value::from(line.tenant.0)).collect());
        let keys = array(ArrayType::String, lines.iter().map(|line| Value::from(line.key.clone())).collect());
        let accounts = array(ArrayType::Uuid, lines.iter().map(|line| Value::from(line.account_id)).collect());
        let meters = array(ArrayType::String, lines.iter().map(|line| Value::from(line.meter_code.clone())).collect());
        transaction
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO usage_lines (tenant_id, draw_key, account_id, meter_code, claimed_until, created_at) \
                 SELECT v.t, v.k, v.a, v.m, $5, $6 FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[]) \
                 AS v(t, k, a, m)",
                [tenants, keys, accounts, meters, claimed_until.into(), now.into()],
            ))
            .await?;
        return Ok(());
    }
    let models: Vec<line::ActiveModel> = lines
        .iter()
        .map(|line| line::ActiveModel {
            tenant_id: Set(line.tenant.0),
            draw_key: Set(line.key.clone()),
            account_id: Set(line.account_id),
            meter_code: Set(line.meter_code.clone()),
            claimed_until: Set(claimed_until),
            created_at: Set(now),
        })
        .collect();
    for chunk in models.chunks(rows_per_insert(200)) {
        line::Entity::insert_many(chunk.to_vec()).exec_without_returning(transaction).await?;
    }
    Ok(())
}

/// Records the wallet's answers. Only PENDING events change, so a late
/// answer never overwrites a final one. On PostgreSQL one statement.
pub async fn settle(
    transaction: &DatabaseTransaction,
    tenant: TenantId,
    settlements: &[(String, Settlement)],
    now: DateTime<Utc>,
) -> Result<(), MeteringError> {
    if settlements.is_empty() {
        return Ok(());
    }
    if transaction.get_database_backend() == DbBackend::Postgres {
        let mut ordered: Vec<&(String, Settlement)> = settlements.iter().collect();
        // In id order, so concurrent recorders take the rows in one order.
        ordered.sort_by(|a, b| a.0.cmp(&b.0));
        let ids = array(ArrayType::String, ordered.iter().map(|(id, _)| Value::from(id.clone())).collect());
        let statuses = array(ArrayType::String, ordered.iter().map(|(_, s)| Value::from(s.status.name())).collect());
        let charged = array(ArrayType::Decimal, ordered.iter().map(|(_, s)| Value::from(s.charged_amount)).collect());
        let uncovered =
            array(ArrayType::Decimal, ordered.iter().map(|(_, s)| Value::from(s.uncovered_amount)).collect());
        let entries = array(ArrayType::String, ordered.iter().map(|(_, s)| Value::from(json(&s.entry_ids))).collect());
        let reasons = array(ArrayType::String, ordered.iter().map(|(_, s)| Value::from(s.reason.clone())).collect());
        transaction
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE usage_events e SET status = v.status, charged_amount = v.charged, uncovered_amount = v.uncovered, \
                 entry_ids = v.entries, reason = v.reason, updated_at = $2 \
                 FROM UNNEST($1::uuid[], $3::text[], $4::text[], $5::numeric[], $6::numeric[], $7::text[], $8::text[]) \
                 AS v(t, id, status, charged, uncovered, entries, reason) \
                 WHERE e.tenant_id = v.t AND e.event_id = v.id AND e.status = 'PENDING'",
                [tenants(tenant, ordered.len()), now.into(), ids, statuses, charged, uncovered, entries, reasons],
            ))
            .await?;
        return Ok(());
    }
    for (event_id, settlement) in settlements {
        event::Entity::update_many()
            .col_expr(event::Column::Status, Expr::value(settlement.status.name()))
            .col_expr(event::Column::ChargedAmount, Expr::value(Amount(settlement.charged_amount)))
            .col_expr(event::Column::UncoveredAmount, Expr::value(Amount(settlement.uncovered_amount)))
            .col_expr(event::Column::EntryIds, Expr::value(json(&settlement.entry_ids)))
            .col_expr(event::Column::Reason, Expr::value(settlement.reason.clone()))
            .col_expr(event::Column::UpdatedAt, Expr::value(now))
            .filter(event::Column::TenantId.eq(tenant.0))
            .filter(event::Column::EventId.eq(event_id.clone()))
            .filter(event::Column::Status.eq(EventStatus::Pending.name()))
            .exec(transaction)
            .await?;
    }
    Ok(())
}
