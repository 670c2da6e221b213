//! The wallet unit (code and scale) of each account metering has seen.

use reservoir_common::auth::TenantId;
use reservoir_common::ids::AccountId;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};

use super::Store;
use super::entities::account;
use crate::error::MeteringError;

impl Store {
    /// The remembered wallet unit (code, scale) of an account.
    pub async fn account_unit(
        &self,
        tenant: TenantId,
        account_id: AccountId,
    ) -> Result<Option<(String, u32)>, MeteringError> {
        let row = account::Entity::find_by_id((tenant.0, account_id.0)).one(&self.db).await?;
        Ok(row.map(|row| (row.unit_code, u32::try_from(row.unit_scale).unwrap_or(0))))
    }

    /// The remembered wallet scales of those of `accounts` metering has seen.
    pub async fn account_units(
        &self,
        tenant: TenantId,
        accounts: &[AccountId],
    ) -> Result<Vec<(AccountId, u32)>, MeteringError> {
        let mut found = Vec::with_capacity(accounts.len());
        for chunk in accounts.chunks(1_000) {
            let rows = account::Entity::find()
                .filter(account::Column::TenantId.eq(tenant.0))
                .filter(account::Column::AccountId.is_in(chunk.iter().map(|account| account.0)))
                .all(&self.db)
                .await?;
            found.extend(
                rows.into_iter().map(|row| (AccountId(row.account_id), u32::try_from(row.unit_scale).unwrap_or(0))),
            );
        }
        Ok(found)
    }

    /// Remembers many accounts' units at once.
    pub async fn remember_accounts(
        &self,
        tenant: TenantId,
        units: &[(AccountId, String, u32)],
    ) -> Result<(), MeteringError> {
        for chunk in units.chunks(500) {
            let models: Vec<account::ActiveModel> = chunk
                .iter()
                .map(|(account_id, code, scale)| account::ActiveModel {
                    tenant_id: Set(tenant.0),
                    account_id: Set(account_id.0),
                    unit_code: Set(code.clone()),
                    unit_scale: Set(i32::try_from(*scale).unwrap_or(0)),
                })
                .collect();
            account::Entity::insert_many(models)
                .on_conflict(
                    OnConflict::columns([account::Column::TenantId, account::Column::AccountId])
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&self.db)
                .await?;
        }
        Ok(())
    }

    pub async fn remember_account(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        unit_code: &str,
        scale: u32,
    ) -> Result<(), MeteringError> {
        account::Entity::insert(account::ActiveModel {
            tenant_id: Set(tenant.0),
            account_id: Set(account_id.0),
            unit_code: Set(unit_code.to_owned()),
            unit_scale: Set(i32::try_from(scale).unwrap_or(0)),
        })
        .on_conflict(
            OnConflict::columns([account::Column::TenantId, account::Column::AccountId]).do_nothing().to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }
}
