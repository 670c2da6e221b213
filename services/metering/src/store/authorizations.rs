//! Authorizations: a hold asked for on an estimate, then settled as a usage
//! event of the actual quantity.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction};
use reservoir_common::ids::AccountId;
use rust_decimal::Decimal;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::entities::{authorization, event};
use super::{NewEvent, Settlement, Store, StoredEvent, corrupt, json};
use crate::domain::{AuthorizationStatus, EventStatus, month_of};
use crate::error::MeteringError;

/// An authorization as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationRow {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub idempotency_key: String,
    pub request_hash: String,
    pub account_id: AccountId,
    pub meter_code: String,
    pub dimensions: BTreeMap<String, String>,
    pub estimated_quantity: Decimal,
    pub estimated_amount: Decimal,
    pub hold_id: Option<Uuid>,
    pub status: AuthorizationStatus,
    pub expires_at: DateTime<Utc>,
    pub actual_quantity: Option<Decimal>,
    pub actual_amount: Option<Decimal>,
    pub charged_amount: Option<Decimal>,
    pub uncovered_amount: Option<Decimal>,
}

fn authorization_from_row(row: authorization::Model) -> Result<AuthorizationRow, MeteringError> {
    Ok(AuthorizationRow {
        id: row.id,
        tenant_id: TenantId(row.tenant_id),
        idempotency_key: row.idempotency_key,
        request_hash: row.request_hash,
        account_id: AccountId(row.account_id),
        meter_code: row.meter_code,
        dimensions: serde_json::from_str(&row.dimensions).map_err(|_| corrupt("dimensions"))?,
        estimated_quantity: row.estimated_quantity.0,
        estimated_amount: row.estimated_amount.0,
        hold_id: row.hold_id,
        status: AuthorizationStatus::from_name(&row.status).ok_or_else(|| corrupt("authorization status"))?,
        expires_at: row.expires_at,
        actual_quantity: row.actual_quantity.map(|amount| amount.0),
        actual_amount: row.actual_amount.map(|amount| amount.0),
        charged_amount: row.charged_amount.map(|amount| amount.0),
        uncovered_amount: row.uncovered_amount.map(|amount| amount.0),
    })
}

impl Store {
    pub async fn authorization(&self, tenant: TenantId, id: Uuid) -> Result<Option<AuthorizationRow>, MeteringError> {
        let row = authorization::Entity::find_by_id(id)
            .filter(authorization::Column::TenantId.eq(tenant.0))
            .one(&self.db)
            .await?;
        row.map(authorization_from_row).transpose()
    }

    pub async fn authorization_by_key(
        &self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<AuthorizationRow>, MeteringError> {
        let row = authorization::Entity::find()
            .filter(authorization::Column::TenantId.eq(tenant.0))
            .filter(authorization::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await?;
        row.map(authorization_from_row).transpose()
    }

    /// Stores a new authorization as PENDING before its hold is asked for.
    pub async fn insert_authorization(&self, row: &AuthorizationRow, now: DateTime<Utc>) -> Result<(), MeteringError> {
        authorization::Entity::insert(authorization::ActiveModel {
            id: Set(row.id),
            tenant_id: Set(row.tenant_id.0),
            idempotency_key: Set(row.idempotency_key.clone()),
            request_hash: Set(row.request_hash.clone()),
            account_id: Set(row.account_id.0),
            meter_code: Set(row.meter_code.clone()),
            dimensions: Set(json(&row.dimensions)),
            estimated_quantity: Set(Amount(row.estimated_quantity)),
            estimated_amount: Set(Amount(row.estimated_amount)),
            hold_id: Set(row.hold_id),
            status: Set(row.status.name().to_owned()),
            expires_at: Set(row.expires_at),
            actual_quantity: Set(None),
            actual_amount: Set(None),
            charged_amount: Set(None),
            uncovered_amount: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// Moves an authorization from one status to another; `false` if it was
    /// no longer in `from` (someone else moved it first).
    pub async fn transition_authorization(
        &self,
        id: Uuid,
        from: AuthorizationStatus,
        to: AuthorizationStatus,
        hold_id: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<bool, MeteringError> {
        let mut update = authorization::Entity::update_many()
            .col_expr(authorization::Column::Status, Expr::value(to.name()))
            .col_expr(authorization::Column::UpdatedAt, Expr::value(now))
            .filter(authorization::Column::Id.eq(id))
            .filter(authorization::Column::Status.eq(from.name()));
        if let Some(hold) = hold_id {
            update = update.col_expr(authorization::Column::HoldId, Expr::value(hold));
        }
        Ok(update.exec(&self.db).await?.rows_affected == 1)
    }

    /// Starts settling: in one transaction the actual usage advances the
    /// counter, is stored as a PENDING usage event, and the authorization
    /// becomes SETTLING with its actual quantity and amount.
    pub async fn begin_settlement(
        &self,
        authorization: &AuthorizationRow,
        actual_quantity: Decimal,
        now: DateTime<Utc>,
        price: impl Fn(&NewEvent, Decimal) -> Result<Decimal, MeteringError>,
    ) -> Result<Option<StoredEvent>, MeteringError> {
        let tenant = authorization.tenant_id;
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let current = authorization::Entity::find_by_id(authorization.id).lock_exclusive().one(&transaction).await?;
        if current.as_ref().map(|row| row.status.as_str()) != Some(AuthorizationStatus::Active.name()) {
            return Ok(None);
        }
        let new = NewEvent {
            event_id: settlement_event_id(authorization.id),
            account_id: authorization.account_id,
            meter_code: authorization.meter_code.clone(),
            quantity: actual_quantity,
            dimensions: authorization.dimensions.clone(),
            occurred_at: now,
        };
        let month = month_of(now);
        let before =
            Self::advance_counter(&transaction, tenant, new.account_id, &new.meter_code, &month, actual_quantity)
                .await?;
        let amount = price(&new, before)?;
        event::Entity::insert(event::ActiveModel {
            tenant_id: Set(tenant.0),
            event_id: Set(new.event_id.clone()),
            account_id: Set(new.account_id.0),
            meter_code: Set(new.meter_code.clone()),
            quantity: Set(Amount(actual_quantity)),
            dimensions: Set(json(&new.dimensions)),
            occurred_at: Set(now),
            status: Set(EventStatus::Pending.name().to_owned()),
            amount: Set(Amount(amount)),
            charged_amount: Set(Amount(Decimal::ZERO)),
            uncovered_amount: Set(Amount(Decimal::ZERO)),
            entry_ids: Set("[]".to_owned()),
            reason: Set(String::new()),
            origin: Set("SETTLEMENT".to_owned()),
            claimed_until: Set(now),
            created_at: Set(now),
            updated_at: Set(now),
            draw_key: Set(None),
            draw_position: Set(None),
        })
        .exec_without_returning(&transaction)
        .await?;
        authorization::Entity::update_many()
            .col_expr(authorization::Column::Status, Expr::value(AuthorizationStatus::Settling.name()))
            .col_expr(authorization::Column::ActualQuantity, Expr::value(Amount(actual_quantity)))
            .col_expr(authorization::Column::ActualAmount, Expr::value(Amount(amount)))
            .col_expr(authorization::Column::UpdatedAt, Expr::value(now))
            .filter(authorization::Column::Id.eq(authorization.id))
            .exec(&transaction)
            .await?;
        transaction.commit().await?;
        self.event(tenant, &new.event_id).await
    }

    /// Finishes a settlement: the usage event and the authorization together.
    pub async fn finish_settlement(
        &self,
        authorization: &AuthorizationRow,
        settlement: &Settlement,
        now: DateTime<Utc>,
    ) -> Result<(), MeteringError> {
        let event_id = settlement_event_id(authorization.id);
        self.settle_events(authorization.tenant_id, &[(event_id, settlement.clone())], now).await?;
        authorization::Entity::update_many()
            .col_expr(authorization::Column::Status, Expr::value(AuthorizationStatus::Settled.name()))
            .col_expr(authorization::Column::ChargedAmount, Expr::value(Amount(settlement.charged_amount)))
            .col_expr(authorization::Column::UncoveredAmount, Expr::value(Amount(settlement.uncovered_amount)))
            .col_expr(authorization::Column::UpdatedAt, Expr::value(now))
            .filter(authorization::Column::Id.eq(authorization.id))
            .filter(authorization::Column::Status.eq(AuthorizationStatus::Settling.name()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Authorizations in `status` last touched before `before`.
    pub async fn authorizations_in(
        &self,
        status: AuthorizationStatus,
        before: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<AuthorizationRow>, MeteringError> {
        let rows = authorization::Entity::find()
            .filter(authorization::Column::Status.eq(status.name()))
            .filter(authorization::Column::UpdatedAt.lt(before))
            .order_by_asc(authorization::Column::UpdatedAt)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(authorization_from_row).collect()
    }

    /// ACTIVE authorizations past their expiry become EXPIRED (their wallet
    /// holds expire on their own).
    pub async fn expire_authorizations(&self, now: DateTime<Utc>) -> Result<u64, MeteringError> {
        let result = authorization::Entity::update_many()
            .col_expr(authorization::Column::Status, Expr::value(AuthorizationStatus::Expired.name()))
            .col_expr(authorization::Column::UpdatedAt, Expr::value(now))
            .filter(
                authorization::Column::Status
                    .is_in([AuthorizationStatus::Active, AuthorizationStatus::Pending].map(AuthorizationStatus::name)),
            )
            .filter(authorization::Column::ExpiresAt.lte(now))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }
}

/// Event ids of settlement usage start with this; clients may not use it.
pub const SETTLEMENT_EVENT_PREFIX: &str = "authorization:";

/// The usage event a settlement records.
pub fn settlement_event_id(authorization: Uuid) -> String {
    format!("{SETTLEMENT_EVENT_PREFIX}{authorization}")
}
