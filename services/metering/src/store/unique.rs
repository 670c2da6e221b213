//! The values of a UNIQUE_COUNT meter's dimension each account's month has
//! seen, read and added inside a batch's transaction after its counters are
//! taken: the counter's lock (or SQLite's one writer) keeps two batches from
//! both finding a value new.

use std::collections::{BTreeSet, HashSet};

use reservoir_common::auth::TenantId;
use reservoir_common::db::rows_per_insert;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::counters::CounterKey;
use super::entities::unique_value;
use crate::error::MeteringError;

/// A counted value of one counter.
pub(super) type CountedValue = (CounterKey, String);

/// Which of `candidates` the months have seen already.
pub(super) async fn seen_values(
    transaction: &DatabaseTransaction,
    tenant: TenantId,
    candidates: HashSet<CountedValue>,
) -> Result<HashSet<CountedValue>, MeteringError> {
    let mut seen = HashSet::new();
    if candidates.is_empty() {
        return Ok(seen);
    }
    let accounts: Vec<Uuid> = candidates.iter().map(|(key, _)| key.0.0).collect::<BTreeSet<_>>().into_iter().collect();
    let values: Vec<String> =
        candidates.iter().map(|(_, value)| value.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    // A superset by account and value, narrowed to the exact keys here.
    for chunk in values.chunks(500) {
        let rows = unique_value::Entity::find()
            .filter(unique_value::Column::TenantId.eq(tenant.0))
            .filter(unique_value::Column::AccountId.is_in(accounts.clone()))
            .filter(unique_value::Column::Value.is_in(chunk.to_vec()))
            .all(transaction)
            .await?;
        for row in rows {
            let counted = ((reservoir_common::ids::AccountId(row.account_id), row.meter_code, row.month), row.value);
            if candidates.contains(&counted) {
                seen.insert(counted);
            }
        }
    }
    Ok(seen)
}

/// Records values first seen by a batch's events.
pub(super) async fn insert_values(
    transaction: &DatabaseTransaction,
    tenant: TenantId,
    values: Vec<CountedValue>,
) -> Result<(), MeteringError> {
    let models: Vec<unique_value::ActiveModel> = values
        .into_iter()
        .map(|((account, meter_code, month), value)| unique_value::ActiveModel {
            tenant_id: Set(tenant.0),
            account_id: Set(account.0),
            meter_code: Set(meter_code),
            month: Set(month),
            value: Set(value),
        })
        .collect();
    for chunk in models.chunks(rows_per_insert(100)) {
        unique_value::Entity::insert_many(chunk.to_vec())
            .on_conflict(
                OnConflict::columns([
                    unique_value::Column::TenantId,
                    unique_value::Column::AccountId,
                    unique_value::Column::MeterCode,
                    unique_value::Column::Month,
                    unique_value::Column::Value,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(transaction)
            .await?;
    }
    Ok(())
}
