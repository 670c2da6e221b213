//! Credit blocks: whether the wallet should hold an account's credit
//! blocked (its statement is overdue), by generation, and whether it does.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::ids::AccountId;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::Store;
use super::entities::{credit_block, invoice};
use crate::domain::{InvoiceKind, InvoiceStatus};
use crate::error::InvoicingError;

/// A credit block invoicing wants the wallet to hold, and whether it does.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditBlock {
    pub tenant_id: TenantId,
    pub account_id: AccountId,
    pub blocked: bool,
    pub generation: i64,
    pub applied: bool,
}

impl Store {
    /// Accounts with an unpaid statement past its due date whose overdraft
    /// is a credit limit: their credit must be blocked.
    pub async fn overdue_credit_accounts(
        &self,
        now: DateTime<Utc>,
    ) -> Result<std::collections::BTreeSet<(TenantId, AccountId)>, InvoicingError> {
        let rows: Vec<(uuid::Uuid, uuid::Uuid)> = invoice::Entity::find()
            .select_only()
            .column(invoice::Column::TenantId)
            .column(invoice::Column::AccountId)
            .filter(invoice::Column::Kind.eq(InvoiceKind::Statement.name()))
            .filter(invoice::Column::Status.is_in([InvoiceStatus::Open.name(), InvoiceStatus::Uncollectible.name()]))
            .filter(invoice::Column::OverdraftPolicy.eq("CREDIT_LIMIT"))
            .filter(invoice::Column::DueAt.lte(now))
            .distinct()
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|(tenant, account)| (TenantId(tenant), AccountId(account))).collect())
    }

    pub async fn credit_blocks(&self) -> Result<Vec<CreditBlock>, InvoicingError> {
        let rows = credit_block::Entity::find().order_by_asc(credit_block::Column::UpdatedAt).all(&self.db).await?;
        Ok(rows
            .into_iter()
            .map(|row| CreditBlock {
                tenant_id: TenantId(row.tenant_id),
                account_id: AccountId(row.account_id),
                blocked: row.blocked,
                generation: row.generation,
                applied: row.applied,
            })
            .collect())
    }

    /// Records that an account's credit should be (un)blocked: a new
    /// generation, not yet applied.
    pub async fn want_credit_block(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        blocked: bool,
        now: DateTime<Utc>,
    ) -> Result<(), InvoicingError> {
        credit_block::Entity::insert(credit_block::ActiveModel {
            tenant_id: Set(tenant.0),
            account_id: Set(account_id.0),
            blocked: Set(blocked),
            generation: Set(1),
            applied: Set(false),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::columns([credit_block::Column::TenantId, credit_block::Column::AccountId])
                .value(credit_block::Column::Blocked, Expr::value(blocked))
                .value(
                    credit_block::Column::Generation,
                    Expr::col((credit_block::Entity, credit_block::Column::Generation)).add(1),
                )
                .value(credit_block::Column::Applied, Expr::value(false))
                .value(credit_block::Column::UpdatedAt, Expr::value(now))
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// The wallet holds the block of `generation` now. False when a newer
    /// generation was written since.
    pub async fn credit_block_applied(&self, block: &CreditBlock) -> Result<bool, InvoicingError> {
        let result = credit_block::Entity::update_many()
            .col_expr(credit_block::Column::Applied, Expr::value(true))
            .filter(credit_block::Column::TenantId.eq(block.tenant_id.0))
            .filter(credit_block::Column::AccountId.eq(block.account_id.0))
            .filter(credit_block::Column::Generation.eq(block.generation))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }
}
