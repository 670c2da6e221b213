//! Payment methods: added under an idempotency key, never changed after.

use reservoir_common::auth::TenantId;
use reservoir_common::db::{WriteTransaction, is_unique_violation};
use reservoir_common::ids::AccountId;
use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::entities::payment_method;
use super::{PaymentMethodRow, Store, corrupt, refuse};
use crate::domain::{MethodKind, Refusal};
use crate::error::PaymentsError;

fn method_from_row(row: payment_method::Model) -> Result<PaymentMethodRow, PaymentsError> {
    Ok(PaymentMethodRow {
        kind: MethodKind::from_name(&row.kind).ok_or_else(|| corrupt("payment method kind"))?,
        id: row.id,
        account_id: AccountId(row.account_id),
        gateway_token: row.gateway_token,
        label: row.label,
        created_at: row.created_at,
    })
}

impl Store {
    /// Stores a payment method and the answer for its idempotency key in one
    /// transaction; `false` when a concurrent call took the key first.
    pub async fn add_payment_method(
        &self,
        tenant: TenantId,
        method: &PaymentMethodRow,
        methods_max: u64,
        key: &str,
        request_hash: &str,
    ) -> Result<bool, PaymentsError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let existing = payment_method::Entity::find()
            .filter(payment_method::Column::TenantId.eq(tenant.0))
            .filter(payment_method::Column::AccountId.eq(method.account_id.0))
            .count(&transaction)
            .await?;
        if existing >= methods_max {
            return refuse(transaction, Refusal::PaymentMethodLimit.into()).await;
        }
        match Self::record(&transaction, tenant, key, "AddPaymentMethod", request_hash, &method.id, method.created_at)
            .await
        {
            Ok(()) => {}
            Err(error) if is_unique_violation(&error) => {
                transaction.rollback().await?;
                return Ok(false);
            }
            Err(error) => return Err(error.into()),
        }
        payment_method::Entity::insert(payment_method::ActiveModel {
            id: Set(method.id),
            tenant_id: Set(tenant.0),
            account_id: Set(method.account_id.0),
            kind: Set(method.kind.name().to_owned()),
            gateway_token: Set(method.gateway_token.clone()),
            label: Set(method.label.clone()),
            created_at: Set(method.created_at),
        })
        .exec_without_returning(&transaction)
        .await?;
        transaction.commit().await?;
        Ok(true)
    }

    pub async fn payment_method(&self, tenant: TenantId, id: Uuid) -> Result<Option<PaymentMethodRow>, PaymentsError> {
        let row = payment_method::Entity::find_by_id(id)
            .filter(payment_method::Column::TenantId.eq(tenant.0))
            .one(&self.db)
            .await?;
        row.map(method_from_row).transpose()
    }

    /// An account's payment methods, newest first, at most `limit`.
    pub async fn payment_methods(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        limit: u64,
    ) -> Result<Vec<PaymentMethodRow>, PaymentsError> {
        let rows = payment_method::Entity::find()
            .filter(payment_method::Column::TenantId.eq(tenant.0))
            .filter(payment_method::Column::AccountId.eq(account_id.0))
            .order_by_desc(payment_method::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(method_from_row).collect()
    }
}
