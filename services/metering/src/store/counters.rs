//! The monthly usage counters events are priced by: advanced one event at
//! a time for a settlement, taken and written a batch at a time for
//! ingestion.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, rows_per_insert};
use reservoir_common::ids::AccountId;
use rust_decimal::Decimal;
use sea_orm::sea_query::{ArrayType, Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    QuerySelect, Statement, Value,
};
use uuid::Uuid;

use super::entities::counter;
use super::usage::{array, tenants};
use super::{NewEvent, Store, StoredEvent};
use crate::domain::month_of;
use crate::error::MeteringError;

impl Store {
    /// Advances the account's monthly usage counter of a meter by `quantity`
    /// and returns the usage before it. The counter row is locked (created
    /// first if missing), so concurrent writers of one counter take turns.
    pub(super) async fn advance_counter(
        connection: &impl ConnectionTrait,
        tenant: TenantId,
        account_id: AccountId,
        meter_code: &str,
        month: &str,
        quantity: Decimal,
    ) -> Result<Decimal, MeteringError> {
        let key = (tenant.0, account_id.0, meter_code.to_owned(), month.to_owned());
        counter::Entity::insert(counter::ActiveModel {
            tenant_id: Set(tenant.0),
            account_id: Set(account_id.0),
            meter_code: Set(meter_code.to_owned()),
            month: Set(month.to_owned()),
            quantity: Set(Amount(Decimal::ZERO)),
        })
        .on_conflict(
            OnConflict::columns([
                counter::Column::TenantId,
                counter::Column::AccountId,
                counter::Column::MeterCode,
                counter::Column::Month,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(connection)
        .await?;
        let mut query = counter::Entity::find_by_id(key);
        if connection.get_database_backend() == DbBackend::Postgres {
            query = query.lock_exclusive();
        }
        let before = query.one(connection).await?.map_or(Decimal::ZERO, |row| row.quantity.0);
        let after = before.checked_add(quantity).ok_or_else(|| MeteringError::field("quantity", "too large"))?;
        counter::Entity::update_many()
            .col_expr(counter::Column::Quantity, Expr::value(Amount(after)))
            .filter(counter::Column::TenantId.eq(tenant.0))
            .filter(counter::Column::AccountId.eq(account_id.0))
            .filter(counter::Column::MeterCode.eq(meter_code))
            .filter(counter::Column::Month.eq(month))
            .exec(connection)
            .await?;
        Ok(before)
    }

    /// The account's usage of a meter in a month so far.
    pub async fn usage_so_far(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        meter_code: &str,
        month: &str,
    ) -> Result<Decimal, MeteringError> {
        let key = (tenant.0, account_id.0, meter_code.to_owned(), month.to_owned());
        Ok(counter::Entity::find_by_id(key).one(&self.db).await?.map_or(Decimal::ZERO, |row| row.quantity.0))
    }
}

/// A counter's key: account, meter, month.
pub(super) type CounterKey = (AccountId, String, String);

/// A counter's key for an event.
pub(super) fn counter_key(event: &NewEvent) -> CounterKey {
    (event.account_id, event.meter_code.clone(), month_of(event.occurred_at))
}

/// What the new events among `events` add to each counter, should every one
/// be priced, each event given with what it is assumed to add (`None` where
/// the sum would overflow: that counter is taken unchanged and written once
/// the events are priced).
pub(super) fn additions<'a>(
    events: impl Iterator<Item = (&'a NewEvent, Decimal)>,
    known: &HashMap<String, StoredEvent>,
) -> BTreeMap<CounterKey, Option<Decimal>> {
    let mut additions: BTreeMap<CounterKey, Option<Decimal>> = BTreeMap::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (event, addition) in events.filter(|(event, _)| !known.contains_key(&event.event_id)) {
        // Every counter an event may advance is taken, a repeated id's too
        // (it is new again should pricing refuse its first occurrence).
        let sum = additions.entry(counter_key(event)).or_insert(Some(Decimal::ZERO));
        if seen.insert(event.event_id.as_str()) {
            *sum = sum.and_then(|sum| sum.checked_add(addition));
        }
    }
    additions
}

/// A batch's monthly counters once taken: as they stood before the batch
/// (to price its events from), and as its transaction holds them now (what
/// [`write_counters`] compares the priced counters with).
pub(super) struct Counters {
    pub(super) counters: BTreeMap<CounterKey, Decimal>,
    pub(super) held: HashMap<CounterKey, Decimal>,
}

/// Takes the counters of `additions` for the transaction. On PostgreSQL one
/// statement creates the missing ones, locks them in key order (so batches
/// never deadlock) and adds to each what the batch's new events would add,
/// so a batch whose events are all priced writes its counters once; an event
/// pricing refuses is taken back by [`write_counters`]. SQLite has one
/// writer at a time: its counters are read as they stand.
pub(super) async fn take_counters(
    transaction: &DatabaseTransaction,
    tenant: TenantId,
    additions: BTreeMap<CounterKey, Option<Decimal>>,
) -> Result<Counters, MeteringError> {
    let mut taken = Counters { counters: BTreeMap::new(), held: HashMap::new() };
    if additions.is_empty() {
        return Ok(taken);
    }
    if transaction.get_database_backend() == DbBackend::Postgres {
        let accounts = array(ArrayType::Uuid, additions.keys().map(|key| Value::from(key.0.0)).collect());
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
                (AccountId(row.try_get("", "account_id")?), row.try_get("", "meter_code")?, row.try_get("", "month")?);
            let quantity: Decimal = row.try_get("", "quantity")?;
            let added = additions.get(&key).copied().flatten().unwrap_or(Decimal::ZERO);
            taken.counters.insert(key.clone(), quantity - added);
            taken.held.insert(key, quantity);
        }
        return Ok(taken);
    }
    let accounts: BTreeSet<Uuid> = additions.keys().map(|key| key.0.0).collect();
    let accounts: Vec<Uuid> = accounts.into_iter().collect();
    for chunk in accounts.chunks(500) {
        for row in counter::Entity::find()
            .filter(counter::Column::TenantId.eq(tenant.0))
            .filter(counter::Column::AccountId.is_in(chunk.to_vec()))
            .all(transaction)
            .await?
        {
            let key = (AccountId(row.account_id), row.meter_code, row.month);
            if additions.contains_key(&key) {
                taken.counters.insert(key.clone(), row.quantity.0);
                taken.held.insert(key, row.quantity.0);
            }
        }
    }
    Ok(taken)
}

/// Writes the counters whose priced value is not what the transaction
/// holds (on PostgreSQL, only where pricing refused an event; on SQLite,
/// every counter the batch advanced).
pub(super) async fn write_counters(
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
        let accounts = array(ArrayType::Uuid, changed.iter().map(|(key, _)| Value::from(key.0.0)).collect());
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
            account_id: Set(key.0.0),
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
