//! Auto-replenish settings, and the count of declined automatic charges
//! that pauses them.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::Amount;
use reservoir_common::ids::AccountId;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use super::entities::auto_replenish;
use super::events::NewEvent;
use super::top_ups::TopUpRow;
use super::{Store, corrupt};
use crate::domain::{Status, Step, Strategy, Trigger};
use crate::error::OrchestratorError;

/// An account's auto-replenish settings as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoReplenishRow {
    pub tenant_id: TenantId,
    pub account_id: AccountId,
    pub settings: crate::domain::AutoReplenish,
    pub payment_method_id: Uuid,
    pub enabled: bool,
    pub paused: bool,
    pub consecutive_declines: u32,
    pub updated_at: DateTime<Utc>,
}

fn auto_from_row(row: auto_replenish::Model) -> Result<AutoReplenishRow, OrchestratorError> {
    let strategy = match row.strategy.as_str() {
        "FIXED" => Strategy::Fixed(row.strategy_amount.0),
        "TO_TARGET" => Strategy::ToTarget(row.strategy_amount.0),
        _ => return Err(corrupt("auto-replenish strategy")),
    };
    Ok(AutoReplenishRow {
        tenant_id: TenantId(row.tenant_id),
        account_id: AccountId(row.account_id),
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

impl Store {
    pub async fn save_auto_replenish(&self, row: &AutoReplenishRow) -> Result<(), OrchestratorError> {
        let (strategy, amount) = match row.settings.strategy {
            Strategy::Fixed(amount) => ("FIXED", amount),
            Strategy::ToTarget(target) => ("TO_TARGET", target),
        };
        auto_replenish::Entity::insert(auto_replenish::ActiveModel {
            tenant_id: Set(row.tenant_id.0),
            account_id: Set(row.account_id.0),
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
        account_id: AccountId,
    ) -> Result<Option<AutoReplenishRow>, OrchestratorError> {
        let row = auto_replenish::Entity::find_by_id((tenant.0, account_id.0)).one(&self.db).await?;
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
        account_id: AccountId,
        now: DateTime<Utc>,
    ) -> Result<(), OrchestratorError> {
        let Some(row) = auto_replenish::Entity::find_by_id((tenant.0, account_id.0)).one(transaction).await? else {
            return Ok(());
        };
        let declines = row.consecutive_declines.saturating_add(1);
        let pause = !row.paused && crate::domain::pauses_after(u32::try_from(declines).unwrap_or(u32::MAX));
        auto_replenish::Entity::update_many()
            .col_expr(auto_replenish::Column::ConsecutiveDeclines, Expr::value(declines))
            .col_expr(auto_replenish::Column::Paused, Expr::value(row.paused || pause))
            .col_expr(auto_replenish::Column::UpdatedAt, Expr::value(now))
            .filter(auto_replenish::Column::TenantId.eq(tenant.0))
            .filter(auto_replenish::Column::AccountId.eq(account_id.0))
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
    pub(super) async fn count_declines(
        connection: &impl ConnectionTrait,
        row: &TopUpRow,
    ) -> Result<(), OrchestratorError> {
        if row.trigger != Trigger::AutoReplenish || row.step != Step::Done {
            return Ok(());
        }
        match row.status {
            Status::Succeeded => {
                auto_replenish::Entity::update_many()
                    .col_expr(auto_replenish::Column::ConsecutiveDeclines, Expr::value(0))
                    .filter(auto_replenish::Column::TenantId.eq(row.tenant_id.0))
                    .filter(auto_replenish::Column::AccountId.eq(row.account_id.0))
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
}
