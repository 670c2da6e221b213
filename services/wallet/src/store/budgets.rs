//! Shared budgets as stored: one row per child naming its parent, its limit
//! per period and what it drew in the current one, and the parent named on
//! the child's account row (so every load of the child knows it draws on
//! another wallet). Setting or clearing a budget locks the child's row and
//! moves its version on, so a wallet read before the change is never
//! written after it; a shared draw locks both accounts in id order, reads
//! the budget under the child's lock, and writes both wallets, the budget
//! and the replay record in one transaction.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction};
use rust_decimal::Decimal;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entities::{account, budget};
use super::loads::{load, load_pair, lookup, replayed};
use super::{IdempotencyCheck, LoadPlan, Reply, Store};
use crate::domain::{AccountId, AccountStatus, Answer, Budget, BudgetPeriod, DomainError, Wallet};
use crate::error::WalletError;

fn budget_from_row(row: budget::Model) -> Result<Budget, WalletError> {
    Ok(Budget {
        account_id: AccountId(row.account_id),
        parent_id: AccountId(row.parent_id),
        limit: row.limit_amount.map(|amount| amount.0),
        period: BudgetPeriod::from_name(&row.period)
            .ok_or_else(|| WalletError::internal(format!("stored budget period {} is not valid", row.period)))?,
        period_key: row.period_key,
        spent: row.spent.0,
    })
}

async fn budget_on(
    connection: &impl ConnectionTrait,
    tenant: TenantId,
    account: AccountId,
) -> Result<Option<Budget>, WalletError> {
    let row =
        budget::Entity::find_by_id(account.0).filter(budget::Column::TenantId.eq(tenant.0)).one(connection).await?;
    row.map(budget_from_row).transpose()
}

async fn children_on(
    connection: &impl ConnectionTrait,
    tenant: TenantId,
    parent: AccountId,
) -> Result<Vec<Budget>, WalletError> {
    let rows = budget::Entity::find()
        .filter(budget::Column::TenantId.eq(tenant.0))
        .filter(budget::Column::ParentId.eq(parent.0))
        .order_by_asc(budget::Column::CreatedAt)
        .order_by_asc(budget::Column::AccountId)
        .all(connection)
        .await?;
    rows.into_iter().map(budget_from_row).collect()
}

/// Names the parent on the child's row (none to clear it) and moves the
/// child's version on.
async fn set_parent(
    connection: &impl ConnectionTrait,
    child: AccountId,
    parent: Option<AccountId>,
    now: DateTime<Utc>,
) -> Result<(), WalletError> {
    account::Entity::update_many()
        .col_expr(account::Column::ParentId, Expr::value(parent.map(|parent| parent.0)))
        .col_expr(account::Column::Version, Expr::col(account::Column::Version).add(1))
        .col_expr(account::Column::UpdatedAt, Expr::value(now))
        .filter(account::Column::Id.eq(child.0))
        .exec(connection)
        .await?;
    Ok(())
}

impl Store {
    /// An account's budget on its parent, if it has one.
    pub async fn budget(&self, tenant: TenantId, account: AccountId) -> Result<Option<Budget>, WalletError> {
        budget_on(&self.db, tenant, account).await
    }

    /// The budgets of a parent's children, oldest first.
    pub async fn children(&self, tenant: TenantId, parent: AccountId) -> Result<Vec<Budget>, WalletError> {
        children_on(&self.db, tenant, parent).await
    }

    /// Lets `child` draw on `parent` within `limit` per `period`. Both must
    /// be accounts of the tenant with one unit, neither closed; one level
    /// only (a parent is no child, a child no parent). Setting it again for
    /// the same parent and period keeps what was drawn this period; another
    /// parent or period starts counting afresh.
    pub async fn set_budget(
        &self,
        tenant: TenantId,
        child: AccountId,
        parent: AccountId,
        limit: Option<Decimal>,
        period: BudgetPeriod,
        now: DateTime<Utc>,
    ) -> Result<Budget, WalletError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let (child_wallet, parent_wallet) = load_pair(&transaction, tenant, (child, parent), now).await?;
        if child_wallet.account.unit != parent_wallet.account.unit {
            return Err(DomainError::UnitMismatch.into());
        }
        for wallet in [&child_wallet, &parent_wallet] {
            if wallet.account.status == AccountStatus::Closed {
                return Err(DomainError::AccountClosed.into());
            }
        }
        let has_children = budget::Entity::find()
            .filter(budget::Column::TenantId.eq(tenant.0))
            .filter(budget::Column::ParentId.eq(child.0))
            .one(&transaction)
            .await?
            .is_some();
        if parent_wallet.account.parent.is_some() || has_children {
            return Err(DomainError::BudgetNested.into());
        }
        let existing = budget_on(&transaction, tenant, child).await?;
        // The same parent and period keep what was drawn; another starts counting afresh.
        let (period_key, spent) = match &existing {
            Some(budget) if budget.parent_id == parent && budget.period == period => {
                (budget.period_key.clone(), budget.spent)
            }
            _ => (period.key(now), Decimal::ZERO),
        };
        let row = budget::ActiveModel {
            account_id: Set(child.0),
            tenant_id: Set(tenant.0),
            parent_id: Set(parent.0),
            limit_amount: Set(limit.map(Amount)),
            period: Set(period.name().to_owned()),
            period_key: Set(period_key),
            spent: Set(Amount(spent)),
            created_at: Set(now),
            updated_at: Set(now),
        };
        if existing.is_some() {
            let mut row = row;
            row.created_at = sea_orm::ActiveValue::NotSet;
            budget::Entity::update(row).exec(&transaction).await?;
        } else {
            budget::Entity::insert(row).exec_without_returning(&transaction).await?;
        }
        set_parent(&transaction, child, Some(parent), now).await?;
        let budget = budget_on(&transaction, tenant, child)
            .await?
            .ok_or_else(|| WalletError::internal("a budget just written is missing"))?;
        transaction.commit().await?;
        self.cache.forget(tenant, child);
        Ok(budget)
    }

    /// Ends a child's draws on its parent; NOT_FOUND when it has no budget.
    pub async fn clear_budget(
        &self,
        tenant: TenantId,
        child: AccountId,
        now: DateTime<Utc>,
    ) -> Result<(), WalletError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        load(&transaction, tenant, child, &LoadPlan::default(), now, true).await?;
        let deleted = budget::Entity::delete_many()
            .filter(budget::Column::AccountId.eq(child.0))
            .filter(budget::Column::TenantId.eq(tenant.0))
            .exec(&transaction)
            .await?;
        if deleted.rows_affected == 0 {
            return Err(WalletError::NotFound("budget"));
        }
        set_parent(&transaction, child, None, now).await?;
        transaction.commit().await?;
        self.cache.forget(tenant, child);
        Ok(())
    }

    /// A change of a child and its parent in one transaction: both rows
    /// locked in id order, the budget read under the child's lock, the key
    /// checked again, `operate` decides on the child's wallet, the parent's
    /// and the budget, and everything is written together. `None` when the
    /// account has no budget (any more): the caller changes it alone.
    pub async fn mutate_shared(
        &self,
        tenant: TenantId,
        child: AccountId,
        check: &IdempotencyCheck,
        now: DateTime<Utc>,
        operate: impl FnOnce(&mut Wallet, &mut Wallet, &mut Budget) -> Result<Answer, WalletError>,
    ) -> Result<Option<Reply>, WalletError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let Some(seen) = budget_on(&transaction, tenant, child).await? else {
            transaction.rollback().await?;
            return Ok(None);
        };
        let parent = seen.parent_id;
        let (mut child_wallet, mut parent_wallet) = load_pair(&transaction, tenant, (child, parent), now).await?;
        // Read again under the child's lock: a budget set or cleared between
        // the two reads sends the caller round again.
        let budget = budget_on(&transaction, tenant, child).await?;
        let Some(mut budget) = budget.filter(|budget| budget.parent_id == parent) else {
            transaction.rollback().await?;
            return Err(DomainError::DrawsOnParent.into());
        };
        if let Some(recorded) = lookup(&transaction, check).await? {
            transaction.rollback().await?;
            return replayed(&self.db, tenant, recorded).await.map(Some);
        }
        let answer = operate(&mut child_wallet, &mut parent_wallet, &mut budget)?;
        budget::Entity::update_many()
            .col_expr(budget::Column::PeriodKey, Expr::value(budget.period_key.clone()))
            .col_expr(budget::Column::Spent, Expr::value(Amount(budget.spent)))
            .col_expr(budget::Column::UpdatedAt, Expr::value(now))
            .filter(budget::Column::AccountId.eq(child.0))
            .exec(&transaction)
            .await?;
        self.commit_changes(transaction, Some(check), &answer, [&mut child_wallet, &mut parent_wallet]).await?;
        Ok(Some(super::Reply::Answer(Box::new(answer))))
    }
}
