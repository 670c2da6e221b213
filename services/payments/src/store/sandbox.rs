//! The sandbox gateway's own ledger. It lives in payments' database for
//! convenience only: payments never reads it, the sandbox alone does, as it
//! would keep its books in a processor of its own.

use chrono::{DateTime, Utc};
use reservoir_common::db::{Amount, WriteTransaction, is_unique_violation};
use rust_decimal::Decimal;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};

use super::entities::sandbox_charge;
use super::{Store, corrupt};
use crate::error::PaymentsError;

/// Refunds of one charge the sandbox adds up; a charge is refunded a few
/// times at most, so this bound is never reached in practice.
const REFUNDS_PER_CHARGE_MAX: u64 = 1_000;

/// What the sandbox was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxOperation {
    Charge,
    Refund,
}

impl SandboxOperation {
    fn name(self) -> &'static str {
        match self {
            Self::Charge => "CHARGE",
            Self::Refund => "REFUND",
        }
    }
}

/// What the sandbox did for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxOutcome {
    Succeeded,
    Declined,
    Pending,
}

impl SandboxOutcome {
    fn name(self) -> &'static str {
        match self {
            Self::Succeeded => "SUCCEEDED",
            Self::Declined => "DECLINED",
            Self::Pending => "PENDING",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Succeeded, Self::Declined, Self::Pending].into_iter().find(|outcome| outcome.name() == name)
    }
}

/// A charge or refund the sandbox made (or declined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    pub outcome: SandboxOutcome,
    /// The sandbox's reference; empty when declined.
    pub reference: String,
    /// The decline code; empty otherwise.
    pub code: String,
    pub amount: Decimal,
    pub currency: String,
    /// For a refund, the reference of its charge.
    pub parent_reference: String,
}

/// One call for a key: how many calls the key has had, this one included,
/// and what was done for it, if anything yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxCall {
    pub calls: u32,
    pub recorded: Option<SandboxRecord>,
}

fn record_from_row(row: sandbox_charge::Model) -> Result<Option<SandboxRecord>, PaymentsError> {
    let Some(outcome) = row.outcome else {
        return Ok(None);
    };
    Ok(Some(SandboxRecord {
        outcome: SandboxOutcome::from_name(&outcome).ok_or_else(|| corrupt("sandbox outcome"))?,
        reference: row.reference,
        code: row.code,
        amount: row.amount.map(|amount| amount.0).unwrap_or_default(),
        currency: row.currency,
        parent_reference: row.parent_reference,
    }))
}

impl Store {
    /// Counts a call for a key and returns the count with what was recorded for it.
    pub async fn sandbox_call(
        &self,
        operation: SandboxOperation,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<SandboxCall, PaymentsError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let counted = sandbox_charge::Entity::update_many()
            .col_expr(sandbox_charge::Column::Calls, Expr::col(sandbox_charge::Column::Calls).add(1))
            .col_expr(sandbox_charge::Column::UpdatedAt, Expr::value(now))
            .filter(sandbox_charge::Column::Operation.eq(operation.name()))
            .filter(sandbox_charge::Column::IdempotencyKey.eq(key))
            .exec(&transaction)
            .await?
            .rows_affected;
        if counted == 0 {
            let inserted = sandbox_charge::Entity::insert(sandbox_charge::ActiveModel {
                operation: Set(operation.name().to_owned()),
                idempotency_key: Set(key.to_owned()),
                calls: Set(1),
                outcome: Set(None),
                reference: Set(String::new()),
                code: Set(String::new()),
                amount: Set(None),
                currency: Set(String::new()),
                parent_reference: Set(String::new()),
                created_at: Set(now),
                updated_at: Set(now),
            })
            .exec_without_returning(&transaction)
            .await;
            match inserted {
                Ok(_) => {}
                // The first two calls of a key raced; the caller retries as after any transient failure.
                Err(error) if is_unique_violation(&error) => {
                    return Err(PaymentsError::Conflict("two first calls of one sandbox key".into()));
                }
                Err(error) => return Err(error.into()),
            }
        }
        let row = sandbox_charge::Entity::find_by_id((operation.name().to_owned(), key.to_owned()))
            .one(&transaction)
            .await?
            .ok_or_else(|| PaymentsError::internal("a sandbox call vanished"))?;
        transaction.commit().await?;
        Ok(SandboxCall {
            calls: u32::try_from(row.calls).map_err(|_| corrupt("sandbox call count"))?,
            recorded: record_from_row(row)?,
        })
    }

    /// Records what the sandbox did for a key, unless a concurrent call
    /// recorded something first; either way returns what stands.
    pub async fn sandbox_record(
        &self,
        operation: SandboxOperation,
        key: &str,
        record: &SandboxRecord,
        now: DateTime<Utc>,
    ) -> Result<SandboxRecord, PaymentsError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        sandbox_charge::Entity::update_many()
            .col_expr(sandbox_charge::Column::Outcome, Expr::value(Some(record.outcome.name())))
            .col_expr(sandbox_charge::Column::Reference, Expr::value(record.reference.clone()))
            .col_expr(sandbox_charge::Column::Code, Expr::value(record.code.clone()))
            .col_expr(sandbox_charge::Column::Amount, Expr::value(Some(Amount(record.amount))))
            .col_expr(sandbox_charge::Column::Currency, Expr::value(record.currency.clone()))
            .col_expr(sandbox_charge::Column::ParentReference, Expr::value(record.parent_reference.clone()))
            .col_expr(sandbox_charge::Column::UpdatedAt, Expr::value(now))
            .filter(sandbox_charge::Column::Operation.eq(operation.name()))
            .filter(sandbox_charge::Column::IdempotencyKey.eq(key))
            .filter(sandbox_charge::Column::Outcome.is_null())
            .exec(&transaction)
            .await?;
        let row = sandbox_charge::Entity::find_by_id((operation.name().to_owned(), key.to_owned()))
            .one(&transaction)
            .await?
            .ok_or_else(|| PaymentsError::internal("a sandbox call vanished"))?;
        transaction.commit().await?;
        record_from_row(row)?.ok_or_else(|| PaymentsError::internal("a sandbox record was not kept"))
    }

    /// The charge the sandbox gave `reference`.
    pub async fn sandbox_charge_by_reference(&self, reference: &str) -> Result<Option<SandboxRecord>, PaymentsError> {
        let row = sandbox_charge::Entity::find()
            .filter(sandbox_charge::Column::Operation.eq(SandboxOperation::Charge.name()))
            .filter(sandbox_charge::Column::Reference.eq(reference))
            .one(&self.db)
            .await?;
        Ok(row.map(record_from_row).transpose()?.flatten())
    }

    /// What the sandbox refunded of the charge `reference` so far.
    pub async fn sandbox_refunded(&self, reference: &str) -> Result<Decimal, PaymentsError> {
        let rows = sandbox_charge::Entity::find()
            .filter(sandbox_charge::Column::Operation.eq(SandboxOperation::Refund.name()))
            .filter(sandbox_charge::Column::ParentReference.eq(reference))
            .filter(sandbox_charge::Column::Outcome.eq(SandboxOutcome::Succeeded.name()))
            .limit(REFUNDS_PER_CHARGE_MAX)
            .all(&self.db)
            .await?;
        rows.iter().try_fold(Decimal::ZERO, |total, row| {
            total
                .checked_add(row.amount.map(|amount| amount.0).unwrap_or_default())
                .ok_or_else(|| corrupt("sandbox refund total"))
        })
    }

    /// How many charges the sandbox made for a key.
    #[cfg(feature = "test-hooks")]
    pub async fn sandbox_successful_charges(&self, key: &str) -> Result<u64, PaymentsError> {
        use sea_orm::PaginatorTrait;
        Ok(sandbox_charge::Entity::find()
            .filter(sandbox_charge::Column::Operation.eq(SandboxOperation::Charge.name()))
            .filter(sandbox_charge::Column::IdempotencyKey.eq(key))
            .filter(sandbox_charge::Column::Outcome.eq(SandboxOutcome::Succeeded.name()))
            .count(&self.db)
            .await?)
    }
}
