//! Usage events as stored, the wallet's answers recorded on them, and the
//! reads of them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::WriteTransaction;
use reservoir_common::ids::AccountId;
use rust_decimal::Decimal;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entities::event;
use super::{Store, corrupt, lines};
use crate::domain::{EventStatus, UsageRecord};
use crate::error::MeteringError;

/// An accepted usage event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub event_id: String,
    pub account_id: AccountId,
    pub meter_code: String,
    pub quantity: Decimal,
    pub dimensions: BTreeMap<String, String>,
    pub occurred_at: DateTime<Utc>,
    pub status: EventStatus,
    pub amount: Decimal,
    pub charged_amount: Decimal,
    pub uncovered_amount: Decimal,
    pub entry_ids: Vec<String>,
    pub reason: String,
}

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub account_id: AccountId,
    pub meter_code: String,
    pub quantity: Decimal,
    pub dimensions: BTreeMap<String, String>,
    pub occurred_at: DateTime<Utc>,
}

/// What storing an event did.
#[derive(Debug, Clone)]
pub enum Stored {
    /// Stored now, in a line the caller draws.
    New(StoredEvent),
    /// The event id was seen before: what was stored then.
    Duplicate(StoredEvent),
    /// Its charge cannot be computed (the usage or the cost past what an
    /// amount holds): refused on its own, nothing stored, the rest of its
    /// batch stored as if it were not there.
    Unpriced(String),
    /// For a LATEST meter, its month was closed and charged already: refused
    /// on its own, as a late event.
    Closed,
}

/// The wallet's answer for one event's debit.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub status: EventStatus,
    pub charged_amount: Decimal,
    pub uncovered_amount: Decimal,
    pub entry_ids: Vec<String>,
    pub reason: String,
}

pub(crate) fn event_from_row(row: event::Model) -> Result<StoredEvent, MeteringError> {
    Ok(StoredEvent {
        status: EventStatus::from_name(&row.status).ok_or_else(|| corrupt("event status"))?,
        dimensions: serde_json::from_str(&row.dimensions).map_err(|_| corrupt("dimensions"))?,
        entry_ids: serde_json::from_str(&row.entry_ids).map_err(|_| corrupt("entry ids"))?,
        event_id: row.event_id,
        account_id: AccountId(row.account_id),
        meter_code: row.meter_code,
        quantity: row.quantity.0,
        occurred_at: row.occurred_at,
        amount: row.amount.0,
        charged_amount: row.charged_amount.0,
        uncovered_amount: row.uncovered_amount.0,
        reason: row.reason,
    })
}

impl Store {
    /// Records answers for settlement usage (events not drawn in lines). Only
    /// PENDING events change, so a late answer never overwrites a final one.
    pub async fn settle_events(
        &self,
        tenant: TenantId,
        settlements: &[(String, Settlement)],
        now: DateTime<Utc>,
    ) -> Result<(), MeteringError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        lines::settle(&transaction, tenant, settlements, now).await?;
        transaction.commit().await?;
        Ok(())
    }

    pub async fn event(&self, tenant: TenantId, event_id: &str) -> Result<Option<StoredEvent>, MeteringError> {
        let row = event::Entity::find_by_id((tenant.0, event_id.to_owned())).one(&self.db).await?;
        row.map(event_from_row).transpose()
    }

    /// An account's events in a time range, for reports.
    pub async fn usage(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        meter_code: Option<&str>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<UsageRecord>, MeteringError> {
        let mut query = event::Entity::find()
            .filter(event::Column::TenantId.eq(tenant.0))
            .filter(event::Column::AccountId.eq(account_id.0))
            .filter(event::Column::OccurredAt.gte(start))
            .filter(event::Column::OccurredAt.lt(end));
        if let Some(code) = meter_code {
            query = query.filter(event::Column::MeterCode.eq(code));
        }
        let rows = query.order_by_asc(event::Column::OccurredAt).all(&self.db).await?;
        rows.into_iter()
            .map(|row| {
                let stored = event_from_row(row)?;
                Ok(UsageRecord {
                    meter_code: stored.meter_code,
                    occurred_at: stored.occurred_at,
                    quantity: stored.quantity,
                    status: stored.status,
                    amount: stored.amount,
                    charged_amount: stored.charged_amount,
                    uncovered_amount: stored.uncovered_amount,
                    dimensions: stored.dimensions,
                })
            })
            .collect()
    }
}
