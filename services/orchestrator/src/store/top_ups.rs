//! Top-ups and their step logs. A runner holds a top-up by a lease and
//! writes its next state only while it still holds it.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction, is_unique_violation};
use reservoir_common::ids::AccountId;
use rust_decimal::Decimal;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::entities::{step_log, top_up};
use super::events::NewEvent;
use super::{Store, corrupt};
use crate::domain::{AutoHistory, Bonus, Outcome, PeriodRollover, Status, Step, Trigger};
use crate::error::OrchestratorError;

/// A top-up as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TopUpRow {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub account_id: AccountId,
    pub trigger: Trigger,
    pub status: Status,
    pub step: Step,
    pub credits: Decimal,
    /// PAID or PROMOTIONAL.
    pub grant_kind: String,
    pub payment_method_id: Option<Uuid>,
    pub reconcile_later: bool,
    pub credits_expire_at: Option<DateTime<Utc>>,
    pub invoice_id: Option<Uuid>,
    pub payment_id: Option<Uuid>,
    pub grant_id: Option<Uuid>,
    pub voucher_id: Option<Uuid>,
    pub voucher_code: Option<String>,
    pub amount: Option<Decimal>,
    pub currency: String,
    pub reason: String,
    /// Attempts at the current step.
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    /// The lease: who holds the top-up writes with the value it set, and a
    /// write with any other value (a lease that ran out and was taken) fails.
    pub claimed_until: DateTime<Utc>,
    pub idempotency_key: String,
    pub request_hash: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// For a recurring period: the previous period's credits to carry over.
    pub rollover: Option<PeriodRollover>,
    /// The bonus given with the purchase.
    pub bonus: Option<Bonus>,
}

/// One line of a top-up's step log.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLine {
    pub step: Step,
    pub outcome: Outcome,
    pub attempt: u32,
    pub detail: String,
    pub at: DateTime<Utc>,
}

pub(super) fn top_up_from_row(row: top_up::Model) -> Result<TopUpRow, OrchestratorError> {
    Ok(TopUpRow {
        id: row.id,
        tenant_id: TenantId(row.tenant_id),
        account_id: AccountId(row.account_id),
        trigger: Trigger::from_name(&row.trigger_kind).ok_or_else(|| corrupt("trigger"))?,
        status: Status::from_name(&row.status).ok_or_else(|| corrupt("status"))?,
        step: Step::from_name(&row.step).ok_or_else(|| corrupt("step"))?,
        credits: row.credits.0,
        grant_kind: row.grant_kind,
        payment_method_id: row.payment_method_id,
        reconcile_later: row.reconcile_later,
        credits_expire_at: row.credits_expire_at,
        invoice_id: row.invoice_id,
        payment_id: row.payment_id,
        grant_id: row.grant_id,
        voucher_id: row.voucher_id,
        voucher_code: row.voucher_code,
        amount: row.amount.map(|amount| amount.0),
        currency: row.currency,
        reason: row.reason,
        attempts: u32::try_from(row.attempts).unwrap_or(0),
        next_attempt_at: row.next_attempt_at,
        claimed_until: row.claimed_until,
        idempotency_key: row.idempotency_key,
        request_hash: row.request_hash,
        created_at: row.created_at,
        updated_at: row.updated_at,
        rollover: row.rollover.as_deref().map(serde_json::from_str).transpose().map_err(|_| corrupt("rollover"))?,
        bonus: row.bonus.as_deref().map(serde_json::from_str).transpose().map_err(|_| corrupt("bonus"))?,
    })
}

fn top_up_model(row: &TopUpRow, claimed_until: DateTime<Utc>) -> top_up::ActiveModel {
    top_up::ActiveModel {
        id: Set(row.id),
        tenant_id: Set(row.tenant_id.0),
        account_id: Set(row.account_id.0),
        trigger_kind: Set(row.trigger.name().to_owned()),
        status: Set(row.status.name().to_owned()),
        step: Set(row.step.name().to_owned()),
        credits: Set(Amount(row.credits)),
        grant_kind: Set(row.grant_kind.clone()),
        payment_method_id: Set(row.payment_method_id),
        reconcile_later: Set(row.reconcile_later),
        credits_expire_at: Set(row.credits_expire_at),
        invoice_id: Set(row.invoice_id),
        payment_id: Set(row.payment_id),
        grant_id: Set(row.grant_id),
        voucher_id: Set(row.voucher_id),
        voucher_code: Set(row.voucher_code.clone()),
        amount: Set(row.amount.map(Amount)),
        currency: Set(row.currency.clone()),
        reason: Set(row.reason.clone()),
        attempts: Set(i32::try_from(row.attempts).unwrap_or(i32::MAX)),
        next_attempt_at: Set(row.next_attempt_at),
        claimed_until: Set(claimed_until),
        idempotency_key: Set(row.idempotency_key.clone()),
        request_hash: Set(row.request_hash.clone()),
        created_at: Set(row.created_at),
        updated_at: Set(row.updated_at),
        rollover: Set(row.rollover.as_ref().map(super::json)),
        bonus: Set(row.bonus.as_ref().map(super::json)),
    }
}

impl Store {
    async fn append_step(
        connection: &impl ConnectionTrait,
        top_up_id: Uuid,
        line: &StepLine,
    ) -> Result<(), OrchestratorError> {
        let last: Option<i32> = step_log::Entity::find()
            .select_only()
            .column_as(step_log::Column::Position.max(), "position")
            .filter(step_log::Column::TopUpId.eq(top_up_id))
            .into_tuple::<Option<i32>>()
            .one(connection)
            .await?
            .flatten();
        step_log::Entity::insert(step_log::ActiveModel {
            top_up_id: Set(top_up_id),
            position: Set(last.unwrap_or(0) + 1),
            step: Set(line.step.name().to_owned()),
            outcome: Set(line.outcome.name().to_owned()),
            attempt: Set(i32::try_from(line.attempt).unwrap_or(i32::MAX)),
            detail: Set(line.detail.clone()),
            at: Set(line.at),
        })
        .exec_without_returning(connection)
        .await?;
        Ok(())
    }

    /// Stores a new top-up and its first log line, held by its creator for
    /// `lease`. `Ok(None)` when its key (or, for an automatic one, the one
    /// in flight for the account) is taken; the caller reads what is there.
    pub async fn insert_top_up(
        &self,
        row: &TopUpRow,
        line: &StepLine,
        claimed_until: DateTime<Utc>,
    ) -> Result<Option<TopUpRow>, OrchestratorError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        match Self::insert_in(&transaction, row, line, claimed_until).await? {
            true => {
                transaction.commit().await?;
                Ok(Some(TopUpRow { claimed_until, ..row.clone() }))
            }
            false => Ok(None),
        }
    }

    pub(super) async fn insert_in(
        connection: &impl ConnectionTrait,
        row: &TopUpRow,
        line: &StepLine,
        claimed_until: DateTime<Utc>,
    ) -> Result<bool, OrchestratorError> {
        let inserted =
            top_up::Entity::insert(top_up_model(row, claimed_until)).exec_without_returning(connection).await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => return Ok(false),
            Err(error) => return Err(error.into()),
        }
        Self::append_step(connection, row.id, line).await?;
        Ok(true)
    }

    /// Writes a top-up's new state, a line of its log and any event, in one
    /// transaction, and renews the lease to `claimed_until`, if it is still
    /// at `from` and this runner still holds it (its lease may have run out
    /// and been taken by another).
    pub async fn save(
        &self,
        row: &mut TopUpRow,
        from: Step,
        line: &StepLine,
        event: Option<&NewEvent>,
        claimed_until: DateTime<Utc>,
    ) -> Result<bool, OrchestratorError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let mut model = top_up_model(row, claimed_until);
        model.id = sea_orm::ActiveValue::Unchanged(row.id);
        model.tenant_id = sea_orm::ActiveValue::NotSet;
        model.idempotency_key = sea_orm::ActiveValue::NotSet;
        model.request_hash = sea_orm::ActiveValue::NotSet;
        model.created_at = sea_orm::ActiveValue::NotSet;
        let updated = top_up::Entity::update_many()
            .set(model)
            .filter(top_up::Column::Id.eq(row.id))
            .filter(top_up::Column::Step.eq(from.name()))
            .filter(top_up::Column::ClaimedUntil.eq(row.claimed_until))
            .exec(&transaction)
            .await?;
        if updated.rows_affected != 1 {
            return Ok(false);
        }
        Self::append_step(&transaction, row.id, line).await?;
        if let Some(event) = event {
            Self::emit(&transaction, row.tenant_id, event, line.at).await?;
        }
        Self::count_declines(&transaction, row).await?;
        transaction.commit().await?;
        row.claimed_until = claimed_until;
        Ok(true)
    }

    pub async fn top_up(&self, tenant: TenantId, id: Uuid) -> Result<Option<TopUpRow>, OrchestratorError> {
        let row = top_up::Entity::find_by_id(id).filter(top_up::Column::TenantId.eq(tenant.0)).one(&self.db).await?;
        row.map(top_up_from_row).transpose()
    }

    pub async fn top_up_by_key(&self, tenant: TenantId, key: &str) -> Result<Option<TopUpRow>, OrchestratorError> {
        let row = top_up::Entity::find()
            .filter(top_up::Column::TenantId.eq(tenant.0))
            .filter(top_up::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await?;
        row.map(top_up_from_row).transpose()
    }

    pub async fn steps(&self, top_up_id: Uuid) -> Result<Vec<StepLine>, OrchestratorError> {
        let rows = step_log::Entity::find()
            .filter(step_log::Column::TopUpId.eq(top_up_id))
            .order_by_asc(step_log::Column::Position)
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(StepLine {
                    step: Step::from_name(&row.step).ok_or_else(|| corrupt("step"))?,
                    outcome: Outcome::from_name(&row.outcome).ok_or_else(|| corrupt("outcome"))?,
                    attempt: u32::try_from(row.attempt).unwrap_or(0),
                    detail: row.detail,
                    at: row.at,
                })
            })
            .collect()
    }

    /// One page of top-ups, newest first.
    pub async fn list(
        &self,
        tenant: TenantId,
        account_id: Option<AccountId>,
        status: Option<Status>,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<TopUpRow>, OrchestratorError> {
        let mut query = top_up::Entity::find().filter(top_up::Column::TenantId.eq(tenant.0));
        if let Some(account_id) = account_id {
            query = query.filter(top_up::Column::AccountId.eq(account_id.0));
        }
        if let Some(status) = status {
            query = query.filter(top_up::Column::Status.eq(status.name()));
        }
        if let Some(before) = before {
            query = query.filter(top_up::Column::Id.lt(before));
        }
        let rows = query.order_by_desc(top_up::Column::Id).limit(limit).all(&self.db).await?;
        rows.into_iter().map(top_up_from_row).collect()
    }

    /// Takes the lease of a top-up that nobody holds. True when this caller has it.
    pub async fn claim(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        claimed_until: DateTime<Utc>,
    ) -> Result<bool, OrchestratorError> {
        let result = top_up::Entity::update_many()
            .col_expr(top_up::Column::ClaimedUntil, Expr::value(claimed_until))
            .filter(top_up::Column::Id.eq(id))
            .filter(top_up::Column::ClaimedUntil.lte(now))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Lets go of a top-up's lease, if this runner still holds it.
    pub async fn release(&self, row: &TopUpRow, now: DateTime<Utc>) -> Result<(), OrchestratorError> {
        top_up::Entity::update_many()
            .col_expr(top_up::Column::ClaimedUntil, Expr::value(now))
            .filter(top_up::Column::Id.eq(row.id))
            .filter(top_up::Column::ClaimedUntil.eq(row.claimed_until))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Unfinished top-ups whose next attempt is due and that nobody holds.
    pub async fn runnable(&self, now: DateTime<Utc>, limit: u64) -> Result<Vec<TopUpRow>, OrchestratorError> {
        let rows = top_up::Entity::find()
            .filter(top_up::Column::Status.is_in([Status::Pending.name(), Status::RequiresAction.name()]))
            .filter(top_up::Column::Step.ne(Step::Done.name()))
            .filter(top_up::Column::NextAttemptAt.lte(now))
            .filter(top_up::Column::ClaimedUntil.lte(now))
            .order_by_asc(top_up::Column::NextAttemptAt)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(top_up_from_row).collect()
    }

    /// How many top-ups are unfinished, by state, for the saga gauge (ended
    /// ones are counted as they end).
    pub async fn count_by_status(&self) -> Result<Vec<(String, i64)>, OrchestratorError> {
        Ok(top_up::Entity::find()
            .filter(top_up::Column::Status.is_in([Status::Pending.name(), Status::RequiresAction.name()]))
            .select_only()
            .column(top_up::Column::Status)
            .column_as(top_up::Column::Id.count(), "count")
            .group_by(top_up::Column::Status)
            .into_tuple::<(String, i64)>()
            .all(&self.db)
            .await?)
    }

    /// Wakes the top-up waiting for a payment, so the next pass looks at it.
    pub async fn wake_for_payment(&self, payment_id: Uuid, now: DateTime<Utc>) -> Result<(), OrchestratorError> {
        top_up::Entity::update_many()
            .col_expr(top_up::Column::NextAttemptAt, Expr::value(now))
            .filter(top_up::Column::PaymentId.eq(payment_id))
            .filter(top_up::Column::Step.eq(Step::AwaitPayment.name()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Tenants with a top-up waiting for a payment.
    pub async fn tenants_awaiting_payments(&self) -> Result<Vec<TenantId>, OrchestratorError> {
        let rows: Vec<Uuid> = top_up::Entity::find()
            .select_only()
            .column(top_up::Column::TenantId)
            .filter(top_up::Column::Step.eq(Step::AwaitPayment.name()))
            .distinct()
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(TenantId).collect())
    }

    /// What an account's automatic top-ups came to today and this month.
    pub async fn auto_history(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        day_start: DateTime<Utc>,
        month_start: DateTime<Utc>,
    ) -> Result<AutoHistory, OrchestratorError> {
        let rows = top_up::Entity::find()
            .filter(top_up::Column::TenantId.eq(tenant.0))
            .filter(top_up::Column::AccountId.eq(account_id.0))
            .filter(top_up::Column::TriggerKind.eq(Trigger::AutoReplenish.name()))
            .filter(top_up::Column::CreatedAt.gte(month_start.min(day_start)))
            .all(&self.db)
            .await?;
        let mut history = AutoHistory::default();
        for row in rows {
            if row.created_at >= day_start {
                history.top_ups_today += 1;
            }
            if row.created_at >= month_start && row.status != Status::Failed.name() {
                history.credits_this_month += row.credits.0;
            }
        }
        Ok(history)
    }
}
