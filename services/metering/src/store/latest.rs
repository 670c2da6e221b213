//! The last quantity reported for each account, LATEST meter and month, and
//! the closing of a month once it has ended. Ingestion reads and writes a
//! month's row inside its batch's transaction, after taking the month's
//! counter; closing takes the same counter first, so an event is either in
//! before the month closes (and counted) or refused after (PERIOD_CLOSED),
//! never taken and left out.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction};
use reservoir_common::ids::AccountId;
use rust_decimal::Decimal;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::Store;
use super::counters::{CounterKey, take_counters};
use super::entities::latest_value;
use crate::error::MeteringError;

const OPEN: &str = "OPEN";
const CLOSED: &str = "CLOSED";
const CHARGED: &str = "CHARGED";

/// A month's latest quantity as a batch sees it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Latest {
    pub(super) quantity: Decimal,
    pub(super) occurred_at: DateTime<Utc>,
    pub(super) event_id: String,
    pub(super) dimensions: BTreeMap<String, String>,
    /// Whether events are still taken for the month.
    pub(super) open: bool,
}

/// A month closed: its latest quantity and the dimensions it was reported with.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedMonth {
    pub quantity: Decimal,
    pub dimensions: BTreeMap<String, String>,
}

/// A LATEST meter's month of one account, to be closed and charged.
#[derive(Debug, Clone, PartialEq)]
pub struct MonthToClose {
    pub tenant: TenantId,
    pub account_id: AccountId,
    pub meter_code: String,
    /// `YYYY-MM`.
    pub month: String,
}

impl MonthToClose {
    fn key(&self) -> CounterKey {
        (self.account_id, self.meter_code.clone(), self.month.clone())
    }
}

/// The months of `keys` that have a latest quantity.
pub(super) async fn latest_of(
    transaction: &DatabaseTransaction,
    tenant: TenantId,
    keys: BTreeSet<CounterKey>,
) -> Result<HashMap<CounterKey, Latest>, MeteringError> {
    let mut found = HashMap::new();
    if keys.is_empty() {
        return Ok(found);
    }
    // A superset (accounts × meters × months asked of), narrowed to the keys below.
    let accounts: BTreeSet<uuid::Uuid> = keys.iter().map(|key| key.0.0).collect();
    let meters: BTreeSet<&str> = keys.iter().map(|key| key.1.as_str()).collect();
    let months: BTreeSet<&str> = keys.iter().map(|key| key.2.as_str()).collect();
    let rows = latest_value::Entity::find()
        .filter(latest_value::Column::TenantId.eq(tenant.0))
        .filter(latest_value::Column::AccountId.is_in(accounts))
        .filter(latest_value::Column::MeterCode.is_in(meters))
        .filter(latest_value::Column::Month.is_in(months))
        .all(transaction)
        .await?;
    for row in rows {
        let key = (AccountId(row.account_id), row.meter_code, row.month);
        if keys.contains(&key) {
            let latest = Latest {
                quantity: row.quantity.0,
                occurred_at: row.occurred_at,
                event_id: row.event_id,
                dimensions: serde_json::from_str(&row.dimensions).map_err(|_| super::corrupt("latest dimensions"))?,
                open: row.state == OPEN,
            };
            found.insert(key, latest);
        }
    }
    Ok(found)
}

/// Writes the latest quantities a batch changed (only ever of open months).
pub(super) async fn write_latest(
    transaction: &DatabaseTransaction,
    tenant: TenantId,
    changed: Vec<(CounterKey, Latest)>,
) -> Result<(), MeteringError> {
    for ((account, meter_code, month), latest) in changed {
        latest_value::Entity::insert(latest_value::ActiveModel {
            tenant_id: Set(tenant.0),
            account_id: Set(account.0),
            meter_code: Set(meter_code),
            month: Set(month),
            quantity: Set(Amount(latest.quantity)),
            occurred_at: Set(latest.occurred_at),
            event_id: Set(latest.event_id),
            dimensions: Set(super::json(&latest.dimensions)),
            state: Set(OPEN.to_owned()),
        })
        .on_conflict(
            OnConflict::columns([
                latest_value::Column::TenantId,
                latest_value::Column::AccountId,
                latest_value::Column::MeterCode,
                latest_value::Column::Month,
            ])
            .update_columns([
                latest_value::Column::Quantity,
                latest_value::Column::OccurredAt,
                latest_value::Column::EventId,
                latest_value::Column::Dimensions,
            ])
            .to_owned(),
        )
        .exec_without_returning(transaction)
        .await?;
    }
    Ok(())
}

impl Store {
    /// Months before `month` (`YYYY-MM`) whose latest quantity is not yet charged.
    pub async fn months_to_close(&self, month: &str, limit: u64) -> Result<Vec<MonthToClose>, MeteringError> {
        let rows = latest_value::Entity::find()
            .filter(latest_value::Column::State.ne(CHARGED))
            .filter(latest_value::Column::Month.lt(month))
            .order_by_asc(latest_value::Column::Month)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| MonthToClose {
                tenant: TenantId(row.tenant_id),
                account_id: AccountId(row.account_id),
                meter_code: row.meter_code,
                month: row.month,
            })
            .collect())
    }

    /// Closes a month: no event is taken for it from now on. Returns its
    /// latest quantity, or `None` when it was charged already.
    pub async fn close_month(&self, month: &MonthToClose) -> Result<Option<ClosedMonth>, MeteringError> {
        let (tenant, key) = (month.tenant, &month.key());
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        // The month's counter, as ingestion takes it: a batch with events of
        // the month either committed before this or waits and finds it closed.
        take_counters(&transaction, tenant, [(key.clone(), Some(Decimal::ZERO))].into_iter().collect()).await?;
        let row = latest_value::Entity::find_by_id((tenant.0, key.0.0, key.1.clone(), key.2.clone()))
            .one(&transaction)
            .await?;
        let Some(row) = row.filter(|row| row.state != CHARGED) else {
            transaction.commit().await?;
            return Ok(None);
        };
        if row.state == OPEN {
            set_state(&transaction, tenant, key, CLOSED).await?;
        }
        transaction.commit().await?;
        let dimensions = serde_json::from_str(&row.dimensions).map_err(|_| super::corrupt("latest dimensions"))?;
        Ok(Some(ClosedMonth { quantity: row.quantity.0, dimensions }))
    }

    /// A closed month whose closing event is stored.
    pub async fn month_charged(&self, month: &MonthToClose) -> Result<(), MeteringError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        set_state(&transaction, month.tenant, &month.key(), CHARGED).await?;
        transaction.commit().await?;
        Ok(())
    }
}

async fn set_state(
    transaction: &DatabaseTransaction,
    tenant: TenantId,
    key: &CounterKey,
    state: &str,
) -> Result<(), MeteringError> {
    latest_value::Entity::update_many()
        .col_expr(latest_value::Column::State, Expr::value(state))
        .filter(latest_value::Column::TenantId.eq(tenant.0))
        .filter(latest_value::Column::AccountId.eq(key.0.0))
        .filter(latest_value::Column::MeterCode.eq(key.1.clone()))
        .filter(latest_value::Column::Month.eq(key.2.clone()))
        .exec(transaction)
        .await?;
    Ok(())
}
