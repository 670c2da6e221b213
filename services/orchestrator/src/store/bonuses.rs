//! What refunds take back of top-ups' bonuses: one row per refund, recorded
//! once (by the refund's id) with the share it asks, then marked applied
//! with what the wallet took, in the transaction that emits its event.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction};
use rust_decimal::Decimal;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::entities::{clawback, top_up};
use super::events::NewEvent;
use super::{Store, TopUpRow};
use crate::domain::{Bonus, Clawback, clawback_asked};
use crate::error::OrchestratorError;

/// A refund of a top-up's payment, as payments told of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    pub id: Uuid,
    /// The payments event's sequence.
    pub sequence: u64,
    pub amount: Decimal,
    pub at: DateTime<Utc>,
}

fn clawback_from_row(row: clawback::Model) -> Clawback {
    Clawback {
        refund_id: row.refund_id,
        tenant_id: row.tenant_id,
        top_up_id: row.top_up_id,
        sequence: u64::try_from(row.sequence).unwrap_or(0),
        refunded_amount: row.refunded_amount.0,
        asked: row.asked.0,
        clawed_back: row.clawed_back.map(|amount| amount.0),
        refunded_at: row.refunded_at,
        applied_at: row.applied_at,
    }
}

impl Store {
    /// The top-up a payment paid for, if it gave a bonus.
    pub async fn bonus_top_up_by_payment(
        &self,
        tenant: TenantId,
        payment_id: Uuid,
    ) -> Result<Option<TopUpRow>, OrchestratorError> {
        let row = top_up::Entity::find()
            .filter(top_up::Column::TenantId.eq(tenant.0))
            .filter(top_up::Column::PaymentId.eq(payment_id))
            .filter(top_up::Column::Bonus.is_not_null())
            .one(&self.db)
            .await?;
        row.map(super::top_ups::top_up_from_row).transpose()
    }

    /// Tenants with a top-up that gave a bonus: their payments' refunds are followed.
    pub async fn tenants_with_bonuses(&self) -> Result<Vec<TenantId>, OrchestratorError> {
        let rows: Vec<Uuid> = top_up::Entity::find()
            .select_only()
            .column(top_up::Column::TenantId)
            .filter(top_up::Column::Bonus.is_not_null())
            .distinct()
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(TenantId).collect())
    }

    /// Records what a refund asks back of `top_up`'s bonus, once: a refund
    /// told of again (a stream read again, another replica) records nothing
    /// new. Answers the clawback as recorded.
    pub async fn record_refund(
        &self,
        top_up: &TopUpRow,
        bonus: &Bonus,
        refund: &Refund,
    ) -> Result<Clawback, OrchestratorError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let earlier = clawback::Entity::find()
            .filter(clawback::Column::TopUpId.eq(top_up.id))
            .order_by_asc(clawback::Column::Sequence)
            .all(&transaction)
            .await?;
        if let Some(known) = earlier.iter().find(|row| row.refund_id == refund.id) {
            return Ok(clawback_from_row(known.clone()));
        }
        let sequence = i64::try_from(refund.sequence).unwrap_or(i64::MAX);
        let before: Decimal =
            earlier.iter().filter(|row| row.sequence < sequence).map(|row| row.refunded_amount.0).sum();
        let paid = top_up.amount.unwrap_or_default();
        let asked = clawback_asked(bonus.credits, bonus.scale, paid, before, refund.amount);
        let row = clawback::ActiveModel {
            refund_id: Set(refund.id),
            tenant_id: Set(top_up.tenant_id.0),
            top_up_id: Set(top_up.id),
            sequence: Set(sequence),
            refunded_amount: Set(Amount(refund.amount)),
            asked: Set(Amount(asked)),
            clawed_back: Set(None),
            refunded_at: Set(refund.at),
            applied_at: Set(None),
        };
        clawback::Entity::insert(row)
            .on_conflict(OnConflict::column(clawback::Column::RefundId).do_nothing().to_owned())
            .exec_without_returning(&transaction)
            .await?;
        let recorded = clawback::Entity::find_by_id(refund.id)
            .one(&transaction)
            .await?
            .ok_or_else(|| OrchestratorError::internal("a recorded clawback is missing"))?;
        transaction.commit().await?;
        Ok(clawback_from_row(recorded))
    }

    /// A top-up's clawbacks, in the order of their refunds.
    pub async fn clawbacks_of(&self, top_up_id: Uuid) -> Result<Vec<Clawback>, OrchestratorError> {
        let rows = clawback::Entity::find()
            .filter(clawback::Column::TopUpId.eq(top_up_id))
            .order_by_asc(clawback::Column::Sequence)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(clawback_from_row).collect())
    }

    /// Clawbacks the wallet has not taken yet, oldest first.
    pub async fn pending_clawbacks(&self, limit: u64) -> Result<Vec<Clawback>, OrchestratorError> {
        let rows = clawback::Entity::find()
            .filter(clawback::Column::AppliedAt.is_null())
            .order_by_asc(clawback::Column::RefundedAt)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(clawback_from_row).collect())
    }

    /// Marks a clawback applied with what the wallet took, and emits its
    /// event in the same transaction; false (and no event) when another
    /// runner marked it first.
    pub async fn finish_clawback(
        &self,
        clawback: &Clawback,
        clawed_back: Decimal,
        event: &NewEvent,
        now: DateTime<Utc>,
    ) -> Result<bool, OrchestratorError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let updated = clawback::Entity::update_many()
            .col_expr(clawback::Column::ClawedBack, Expr::value(Amount(clawed_back)))
            .col_expr(clawback::Column::AppliedAt, Expr::value(now))
            .filter(clawback::Column::RefundId.eq(clawback.refund_id))
            .filter(clawback::Column::AppliedAt.is_null())
            .exec(&transaction)
            .await?;
        if updated.rows_affected == 0 {
            return Ok(false);
        }
        Self::emit(&transaction, TenantId(clawback.tenant_id), event, now).await?;
        transaction.commit().await?;
        Ok(true)
    }
}
