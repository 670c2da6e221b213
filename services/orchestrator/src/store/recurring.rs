//! Recurring top-ups: each schedule fires a top-up once a period, moved on
//! in the transaction that stores the period's top-up.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction};
use reservoir_common::ids::AccountId;
use rust_decimal::Decimal;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::entities::{recurring, top_up};
use super::top_ups::{StepLine, TopUpRow};
use super::{Store, corrupt};
use crate::domain::{Interval, RolloverPolicy};
use crate::error::OrchestratorError;

/// An account's recurring top-up as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecurringRow {
    pub tenant_id: TenantId,
    pub account_id: AccountId,
    pub credits: Decimal,
    pub interval: Interval,
    /// PAID or GRANTED.
    pub mode: String,
    pub payment_method_id: Option<Uuid>,
    pub credits_expire_after_days: u32,
    pub next_run_at: DateTime<Utc>,
    /// What the periods count from: the first run as configured.
    pub anchor_at: DateTime<Utc>,
    pub enabled: bool,
    pub runs: u64,
    /// What each period carries from the one before; none: nothing happens
    /// at the turn (each period's credits keep their own expiry).
    pub rollover: Option<RolloverPolicy>,
}

fn recurring_from_row(row: recurring::Model) -> Result<RecurringRow, OrchestratorError> {
    Ok(RecurringRow {
        tenant_id: TenantId(row.tenant_id),
        account_id: AccountId(row.account_id),
        credits: row.credits.0,
        interval: Interval::from_name(&row.interval_kind).ok_or_else(|| corrupt("interval"))?,
        mode: row.mode,
        payment_method_id: row.payment_method_id,
        credits_expire_after_days: u32::try_from(row.credits_expire_after_days).unwrap_or(0),
        next_run_at: row.next_run_at,
        anchor_at: row.anchor_at.unwrap_or(row.next_run_at),
        enabled: row.enabled,
        runs: u64::try_from(row.runs).unwrap_or(0),
        rollover: row.rollover.as_deref().map(serde_json::from_str).transpose().map_err(|_| corrupt("rollover"))?,
    })
}

impl Store {
    pub async fn save_recurring(&self, row: &RecurringRow, now: DateTime<Utc>) -> Result<(), OrchestratorError> {
        recurring::Entity::insert(recurring::ActiveModel {
            tenant_id: Set(row.tenant_id.0),
            account_id: Set(row.account_id.0),
            credits: Set(Amount(row.credits)),
            interval_kind: Set(row.interval.name().to_owned()),
            mode: Set(row.mode.clone()),
            payment_method_id: Set(row.payment_method_id),
            credits_expire_after_days: Set(i32::try_from(row.credits_expire_after_days).unwrap_or(i32::MAX)),
            next_run_at: Set(row.next_run_at),
            anchor_at: Set(Some(row.anchor_at)),
            enabled: Set(row.enabled),
            runs: Set(i64::try_from(row.runs).unwrap_or(i64::MAX)),
            updated_at: Set(now),
            rollover: Set(row.rollover.as_ref().map(super::json)),
        })
        .on_conflict(
            OnConflict::columns([recurring::Column::TenantId, recurring::Column::AccountId])
                .update_columns([
                    recurring::Column::Credits,
                    recurring::Column::IntervalKind,
                    recurring::Column::Mode,
                    recurring::Column::PaymentMethodId,
                    recurring::Column::CreditsExpireAfterDays,
                    recurring::Column::NextRunAt,
                    recurring::Column::AnchorAt,
                    recurring::Column::Enabled,
                    recurring::Column::UpdatedAt,
                    recurring::Column::Rollover,
                ])
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    pub async fn recurring(
        &self,
        tenant: TenantId,
        account_id: AccountId,
    ) -> Result<Option<RecurringRow>, OrchestratorError> {
        let row = recurring::Entity::find_by_id((tenant.0, account_id.0)).one(&self.db).await?;
        row.map(recurring_from_row).transpose()
    }

    /// The account's latest recurring period's top-up, whatever became of it.
    pub async fn last_recurring_top_up(
        &self,
        tenant: TenantId,
        account_id: AccountId,
    ) -> Result<Option<Uuid>, OrchestratorError> {
        let row = top_up::Entity::find()
            .filter(top_up::Column::TenantId.eq(tenant.0))
            .filter(top_up::Column::AccountId.eq(account_id.0))
            .filter(top_up::Column::TriggerKind.eq(crate::domain::Trigger::Recurring.name()))
            .order_by_desc(top_up::Column::CreatedAt)
            .one(&self.db)
            .await?;
        Ok(row.map(|row| row.id))
    }

    pub async fn due_recurring(&self, now: DateTime<Utc>, limit: u64) -> Result<Vec<RecurringRow>, OrchestratorError> {
        let rows = recurring::Entity::find()
            .filter(recurring::Column::Enabled.eq(true))
            .filter(recurring::Column::NextRunAt.lte(now))
            .order_by_asc(recurring::Column::NextRunAt)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(recurring_from_row).collect()
    }

    /// Fires one period of a recurring top-up: moves it to its next run and
    /// stores the period's top-up, in one transaction, only if it is still
    /// due at `due` (another replica may have fired it).
    pub async fn fire_recurring(
        &self,
        row: &RecurringRow,
        next_run_at: DateTime<Utc>,
        top_up: &TopUpRow,
        line: &StepLine,
    ) -> Result<bool, OrchestratorError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let moved = recurring::Entity::update_many()
            .col_expr(recurring::Column::NextRunAt, Expr::value(next_run_at))
            .col_expr(recurring::Column::Runs, Expr::value(i64::try_from(row.runs + 1).unwrap_or(i64::MAX)))
            .filter(recurring::Column::TenantId.eq(row.tenant_id.0))
            .filter(recurring::Column::AccountId.eq(row.account_id.0))
            .filter(recurring::Column::NextRunAt.eq(row.next_run_at))
            .filter(recurring::Column::Enabled.eq(true))
            .exec(&transaction)
            .await?;
        if moved.rows_affected != 1 {
            return Ok(false);
        }
        // The period's top-up may exist already (its key is the period's,
        // and a schedule can be set back to a period that fired): the
        // schedule moves on all the same, or it would never fire again.
        let exists = top_up::Entity::find()
            .filter(top_up::Column::TenantId.eq(top_up.tenant_id.0))
            .filter(top_up::Column::IdempotencyKey.eq(top_up.idempotency_key.as_str()))
            .one(&transaction)
            .await?
            .is_some();
        let fired = !exists && Self::insert_in(&transaction, top_up, line, line.at).await?;
        transaction.commit().await?;
        Ok(fired)
    }
}
