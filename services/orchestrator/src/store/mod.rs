//! The orchestrator's persistence. A top-up's state, the line of its step
//! log and any event it emits are written in one transaction, before and
//! after every step; a runner holds a top-up by a lease it takes with a
//! conditional update, so two replicas never run one top-up at once.

mod entities;
pub mod migrations;
mod webhooks;

pub use self::webhooks::{AttemptResult, AttemptRow, DeliveryRow, DeliveryStatus, EndpointRow, WebhookMessage};

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, Database, WriteTransaction, is_unique_violation};
use reservoir_common::settings::DatabaseSettings;
use rust_decimal::Decimal;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use sea_orm_migration::MigratorTrait;
use uuid::Uuid;

use self::entities::{auto_replenish, cursor, event, recurring, step_log, top_up};
use crate::domain::{AutoHistory, Interval, Outcome, Status, Step, Strategy, Trigger};
use crate::error::OrchestratorError;

/// A top-up as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TopUpRow {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub account_id: Uuid,
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

/// An event to emit with a change.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: &'static str,
    pub account_id: Uuid,
    pub top_up_id: Option<Uuid>,
    pub credits: String,
    pub reason: String,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub sequence: u64,
    pub event_type: String,
    pub account_id: Uuid,
    pub top_up_id: Option<Uuid>,
    pub credits: String,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
}

/// An account's auto-replenish settings as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoReplenishRow {
    pub tenant_id: TenantId,
    pub account_id: Uuid,
    pub settings: crate::domain::AutoReplenish,
    pub payment_method_id: Uuid,
    pub enabled: bool,
    pub paused: bool,
    pub consecutive_declines: u32,
    pub updated_at: DateTime<Utc>,
}

/// An account's recurring top-up as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecurringRow {
    pub tenant_id: TenantId,
    pub account_id: Uuid,
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
}

#[derive(Clone)]
pub struct Store {
    database: Database,
    db: DatabaseConnection,
}

fn corrupt(what: &str) -> OrchestratorError {
    OrchestratorError::internal(format!("stored {what} is not valid"))
}

fn top_up_from_row(row: top_up::Model) -> Result<TopUpRow, OrchestratorError> {
    Ok(TopUpRow {
        id: row.id,
        tenant_id: TenantId(row.tenant_id),
        account_id: row.account_id,
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
    })
}

fn top_up_model(row: &TopUpRow, claimed_until: DateTime<Utc>) -> top_up::ActiveModel {
    top_up::ActiveModel {
        id: Set(row.id),
        tenant_id: Set(row.tenant_id.0),
        account_id: Set(row.account_id),
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
    }
}

fn auto_from_row(row: auto_replenish::Model) -> Result<AutoReplenishRow, OrchestratorError> {
    let strategy = match row.strategy.as_str() {
        "FIXED" => Strategy::Fixed(row.strategy_amount.0),
        "TO_TARGET" => Strategy::ToTarget(row.strategy_amount.0),
        _ => return Err(corrupt("auto-replenish strategy")),
    };
    Ok(AutoReplenishRow {
        tenant_id: TenantId(row.tenant_id),
        account_id: row.account_id,
        settings: crate::domain::AutoReplenish {
            threshold: row.threshold.0,
            strategy,
            max_top_ups_per_day: u32::try_from(row.max_top_ups_per_day).unwrap_or(0),
            max_credits_per_month: row.max_credits_per_month.map(|amount| amount.0),
            min_credits: row.min_credits.map(|amount| amount.0),
            max_credits: row.max_credits.map(|amount| amount.0),
            warning_percent: u32::try_from(row.warning_percent).unwrap_or(0),
        },
        payment_method_id: row.payment_method_id,
        enabled: row.enabled,
        paused: row.paused,
        consecutive_declines: u32::try_from(row.consecutive_declines).unwrap_or(0),
        updated_at: row.updated_at,
    })
}

fn recurring_from_row(row: recurring::Model) -> Result<RecurringRow, OrchestratorError> {
    Ok(RecurringRow {
        tenant_id: TenantId(row.tenant_id),
        account_id: row.account_id,
        credits: row.credits.0,
        interval: Interval::from_name(&row.interval_kind).ok_or_else(|| corrupt("interval"))?,
        mode: row.mode,
        payment_method_id: row.payment_method_id,
        credits_expire_after_days: u32::try_from(row.credits_expire_after_days).unwrap_or(0),
        next_run_at: row.next_run_at,
        anchor_at: row.anchor_at.unwrap_or(row.next_run_at),
        enabled: row.enabled,
        runs: u64::try_from(row.runs).unwrap_or(0),
    })
}

impl Store {
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, OrchestratorError> {
        let database = Database::connect(settings).await?;
        Ok(Self { db: database.connection().clone(), database })
    }

    /// The connection pool, for its figures.
    pub fn database(&self) -> &Database {
        &self.database
    }

    pub async fn migrate(&self) -> Result<(), OrchestratorError> {
        self.database
            .migrate_exclusively(|connection| async move {
                migrations::Migrator::up(&connection, None).await.map_err(OrchestratorError::from)
            })
            .await
    }

    // ---- top-ups --------------------------------------------------------------------

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

    async fn emit(
        connection: &impl ConnectionTrait,
        tenant: TenantId,
        new: &NewEvent,
        now: DateTime<Utc>,
    ) -> Result<(), OrchestratorError> {
        let sequence = reservoir_common::outbox::next_sequence(connection, "event_sequence").await?;
        event::Entity::insert(event::ActiveModel {
            sequence: Set(sequence),
            tenant_id: Set(tenant.0),
            event_type: Set(new.event_type.to_owned()),
            account_id: Set(new.account_id),
            top_up_id: Set(new.top_up_id),
            credits: Set(new.credits.clone()),
            reason: Set(new.reason.clone()),
            occurred_at: Set(now),
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

    async fn insert_in(
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
        account_id: Option<Uuid>,
        status: Option<Status>,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<TopUpRow>, OrchestratorError> {
        let mut query = top_up::Entity::find().filter(top_up::Column::TenantId.eq(tenant.0));
        if let Some(account_id) = account_id {
            query = query.filter(top_up::Column::AccountId.eq(account_id));
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
        account_id: Uuid,
        day_start: DateTime<Utc>,
        month_start: DateTime<Utc>,
    ) -> Result<AutoHistory, OrchestratorError> {
        let rows = top_up::Entity::find()
            .filter(top_up::Column::TenantId.eq(tenant.0))
            .filter(top_up::Column::AccountId.eq(account_id))
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

    // ---- auto-replenish ----------------------------------------------------------------

    pub async fn save_auto_replenish(&self, row: &AutoReplenishRow) -> Result<(), OrchestratorError> {
        let (strategy, amount) = match row.settings.strategy {
            Strategy::Fixed(amount) => ("FIXED", amount),
            Strategy::ToTarget(target) => ("TO_TARGET", target),
        };
        auto_replenish::Entity::insert(auto_replenish::ActiveModel {
            tenant_id: Set(row.tenant_id.0),
            account_id: Set(row.account_id),
            threshold: Set(Amount(row.settings.threshold)),
            strategy: Set(strategy.to_owned()),
            strategy_amount: Set(Amount(amount)),
            payment_method_id: Set(row.payment_method_id),
            max_top_ups_per_day: Set(i32::try_from(row.settings.max_top_ups_per_day).unwrap_or(i32::MAX)),
            max_credits_per_month: Set(row.settings.max_credits_per_month.map(Amount)),
            min_credits: Set(row.settings.min_credits.map(Amount)),
            max_credits: Set(row.settings.max_credits.map(Amount)),
            warning_percent: Set(i32::try_from(row.settings.warning_percent).unwrap_or(0)),
            enabled: Set(row.enabled),
            paused: Set(row.paused),
            consecutive_declines: Set(i32::try_from(row.consecutive_declines).unwrap_or(i32::MAX)),
            updated_at: Set(row.updated_at),
        })
        .on_conflict(
            OnConflict::columns([auto_replenish::Column::TenantId, auto_replenish::Column::AccountId])
                .update_columns([
                    auto_replenish::Column::Threshold,
                    auto_replenish::Column::Strategy,
                    auto_replenish::Column::StrategyAmount,
                    auto_replenish::Column::PaymentMethodId,
                    auto_replenish::Column::MaxTopUpsPerDay,
                    auto_replenish::Column::MaxCreditsPerMonth,
                    auto_replenish::Column::MinCredits,
                    auto_replenish::Column::MaxCredits,
                    auto_replenish::Column::WarningPercent,
                    auto_replenish::Column::Enabled,
                    auto_replenish::Column::Paused,
                    auto_replenish::Column::ConsecutiveDeclines,
                    auto_replenish::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    pub async fn auto_replenish(
        &self,
        tenant: TenantId,
        account_id: Uuid,
    ) -> Result<Option<AutoReplenishRow>, OrchestratorError> {
        let row = auto_replenish::Entity::find_by_id((tenant.0, account_id)).one(&self.db).await?;
        row.map(auto_from_row).transpose()
    }

    /// Tenants with an auto-replenish that is on.
    pub async fn tenants_with_auto_replenish(&self) -> Result<Vec<TenantId>, OrchestratorError> {
        let rows: Vec<Uuid> = auto_replenish::Entity::find()
            .select_only()
            .column(auto_replenish::Column::TenantId)
            .filter(auto_replenish::Column::Enabled.eq(true))
            .distinct()
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(TenantId).collect())
    }

    /// Counts a declined automatic charge, pausing auto-replenish (with its
    /// event) at the limit. Answers whether it paused now.
    async fn record_decline(
        transaction: &impl ConnectionTrait,
        tenant: TenantId,
        account_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), OrchestratorError> {
        let Some(row) = auto_replenish::Entity::find_by_id((tenant.0, account_id)).one(transaction).await? else {
            return Ok(());
        };
        let declines = row.consecutive_declines.saturating_add(1);
        let pause = !row.paused && crate::domain::pauses_after(u32::try_from(declines).unwrap_or(u32::MAX));
        auto_replenish::Entity::update_many()
            .col_expr(auto_replenish::Column::ConsecutiveDeclines, Expr::value(declines))
            .col_expr(auto_replenish::Column::Paused, Expr::value(row.paused || pause))
            .col_expr(auto_replenish::Column::UpdatedAt, Expr::value(now))
            .filter(auto_replenish::Column::TenantId.eq(tenant.0))
            .filter(auto_replenish::Column::AccountId.eq(account_id))
            .exec(transaction)
            .await?;
        if pause {
            tracing::warn!(account = %account_id, "auto-replenish paused after declined charges");
            let event = NewEvent {
                event_type: "AUTO_REPLENISH_PAUSED",
                account_id,
                top_up_id: None,
                credits: String::new(),
                reason: format!("{declines} declined charges in a row"),
            };
            Self::emit(transaction, tenant, &event, now).await?;
        }
        Ok(())
    }

    /// What an automatic top-up's end means for auto-replenish, written in
    /// the transaction that ends it, so the next low balance already sees
    /// it: a decline counts (pausing at the limit), a success clears the count.
    async fn count_declines(connection: &impl ConnectionTrait, row: &TopUpRow) -> Result<(), OrchestratorError> {
        if row.trigger != Trigger::AutoReplenish || row.step != Step::Done {
            return Ok(());
        }
        match row.status {
            Status::Succeeded => {
                auto_replenish::Entity::update_many()
                    .col_expr(auto_replenish::Column::ConsecutiveDeclines, Expr::value(0))
                    .filter(auto_replenish::Column::TenantId.eq(row.tenant_id.0))
                    .filter(auto_replenish::Column::AccountId.eq(row.account_id))
                    .exec(connection)
                    .await?;
                Ok(())
            }
            Status::Failed if row.reason.starts_with("DECLINED") => {
                Self::record_decline(connection, row.tenant_id, row.account_id, row.updated_at).await
            }
            _ => Ok(()),
        }
    }

    pub async fn emit_event(
        &self,
        tenant: TenantId,
        event: &NewEvent,
        now: DateTime<Utc>,
    ) -> Result<(), OrchestratorError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        Self::emit(&transaction, tenant, event, now).await?;
        transaction.commit().await?;
        Ok(())
    }

    // ---- recurring top-ups --------------------------------------------------------------

    pub async fn save_recurring(&self, row: &RecurringRow, now: DateTime<Utc>) -> Result<(), OrchestratorError> {
        recurring::Entity::insert(recurring::ActiveModel {
            tenant_id: Set(row.tenant_id.0),
            account_id: Set(row.account_id),
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
        account_id: Uuid,
    ) -> Result<Option<RecurringRow>, OrchestratorError> {
        let row = recurring::Entity::find_by_id((tenant.0, account_id)).one(&self.db).await?;
        row.map(recurring_from_row).transpose()
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
            .filter(recurring::Column::AccountId.eq(row.account_id))
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

    // ---- cursors and events ---------------------------------------------------------------

    pub async fn cursor(&self, tenant: TenantId, source: &str) -> Result<u64, OrchestratorError> {
        let row = cursor::Entity::find_by_id((tenant.0, source.to_owned())).one(&self.db).await?;
        Ok(row.map_or(0, |row| u64::try_from(row.after_sequence).unwrap_or(0)))
    }

    pub async fn save_cursor(&self, tenant: TenantId, source: &str, after: u64) -> Result<(), OrchestratorError> {
        save_cursor_on(&self.db, tenant, source, after).await
    }

    pub async fn events_after(
        &self,
        tenant: TenantId,
        after: u64,
        limit: u64,
    ) -> Result<Vec<StoredEvent>, OrchestratorError> {
        let rows = event::Entity::find()
            .filter(event::Column::TenantId.eq(tenant.0))
            .filter(event::Column::Sequence.gt(i64::try_from(after).unwrap_or(i64::MAX)))
            .order_by_asc(event::Column::Sequence)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| StoredEvent {
                sequence: u64::try_from(row.sequence).unwrap_or(0),
                event_type: row.event_type,
                account_id: row.account_id,
                top_up_id: row.top_up_id,
                credits: row.credits,
                reason: row.reason,
                occurred_at: row.occurred_at,
            })
            .collect())
    }

    /// Whether the database is PostgreSQL, for the few statements that differ.
    pub fn is_postgres(&self) -> bool {
        self.database.backend() == DbBackend::Postgres
    }
}

/// Records how far a tenant's events from `source` have been read, on any
/// connection, so a follower can move its cursor in the transaction that
/// acts on the events.
async fn save_cursor_on(
    connection: &impl ConnectionTrait,
    tenant: TenantId,
    source: &str,
    after: u64,
) -> Result<(), OrchestratorError> {
    cursor::Entity::insert(cursor::ActiveModel {
        tenant_id: Set(tenant.0),
        source: Set(source.to_owned()),
        after_sequence: Set(i64::try_from(after).unwrap_or(i64::MAX)),
    })
    .on_conflict(
        OnConflict::columns([cursor::Column::TenantId, cursor::Column::Source])
            .update_column(cursor::Column::AfterSequence)
            .to_owned(),
    )
    .exec_without_returning(connection)
    .await?;
    Ok(())
}
