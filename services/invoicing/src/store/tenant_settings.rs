//! A tenant's invoicing settings: payment terms, and whether (and up to
//! which month) its months are billed automatically.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};

use super::Store;
use super::entities::tenant_settings;
use crate::domain::Month;
use crate::error::InvoicingError;

/// A tenant's invoicing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSettings {
    pub payment_due_days: u32,
    pub monthly_cycle: bool,
    pub last_cycle: Option<Month>,
}

impl Store {
    pub async fn settings(&self, tenant: TenantId) -> Result<Option<TenantSettings>, InvoicingError> {
        let row = tenant_settings::Entity::find_by_id(tenant.0).one(&self.db).await?;
        Ok(row.map(|row| TenantSettings {
            payment_due_days: u32::try_from(row.payment_due_days).unwrap_or(0),
            monthly_cycle: row.monthly_cycle,
            last_cycle: Month::parse(&row.last_cycle),
        }))
    }

    pub async fn save_settings(
        &self,
        tenant: TenantId,
        settings: &TenantSettings,
        now: DateTime<Utc>,
    ) -> Result<(), InvoicingError> {
        tenant_settings::Entity::insert(tenant_settings::ActiveModel {
            tenant_id: Set(tenant.0),
            payment_due_days: Set(i32::try_from(settings.payment_due_days).unwrap_or(i32::MAX)),
            monthly_cycle: Set(settings.monthly_cycle),
            last_cycle: Set(settings.last_cycle.map(|month| month.to_string()).unwrap_or_default()),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(tenant_settings::Column::TenantId)
                .update_columns([
                    tenant_settings::Column::PaymentDueDays,
                    tenant_settings::Column::MonthlyCycle,
                    tenant_settings::Column::LastCycle,
                    tenant_settings::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// Records that a tenant's automatic cycle of `month` ran.
    pub async fn cycle_ran(&self, tenant: TenantId, month: Month, now: DateTime<Utc>) -> Result<(), InvoicingError> {
        tenant_settings::Entity::update_many()
            .col_expr(tenant_settings::Column::LastCycle, Expr::value(month.to_string()))
            .col_expr(tenant_settings::Column::UpdatedAt, Expr::value(now))
            .filter(tenant_settings::Column::TenantId.eq(tenant.0))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Tenants whose months are billed automatically.
    pub async fn tenants_with_monthly_cycle(&self) -> Result<Vec<(TenantId, TenantSettings)>, InvoicingError> {
        let rows = tenant_settings::Entity::find()
            .filter(tenant_settings::Column::MonthlyCycle.eq(true))
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                (
                    TenantId(row.tenant_id),
                    TenantSettings {
                        payment_due_days: u32::try_from(row.payment_due_days).unwrap_or(0),
                        monthly_cycle: row.monthly_cycle,
                        last_cycle: Month::parse(&row.last_cycle),
                    },
                )
            })
            .collect())
    }
}
