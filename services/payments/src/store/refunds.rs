//! Refunds of payments: begun under the payment's row lock, finished with
//! the gateway's answer.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction, is_unique_violation};
use rust_decimal::Decimal;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::entities::{payment, refund};
use super::payments::lock_payment;
use super::{NewEvent, RefundRow, Store, corrupt, refuse};
use crate::domain::{Channel, EventType, RefundStatus, refund_amount, refunds_through_gateway};
use crate::error::PaymentsError;

/// A refund to begin.
#[derive(Debug, Clone)]
pub struct NewRefund {
    pub id: Uuid,
    pub payment_id: Uuid,
    pub idempotency_key: String,
    pub request_hash: String,
    /// `None` refunds everything not refunded yet.
    pub requested: Option<Decimal>,
    pub reason: String,
}

/// What beginning a refund did.
#[derive(Debug, Clone)]
pub enum BeganRefund {
    /// Stored now: SUCCEEDED when manual, PROCESSING when the gateway is to be asked.
    Began(RefundRow),
    /// A concurrent call with the same key stored this one first.
    Exists(RefundRow),
}

/// The gateway's answer to a refund.
#[derive(Debug, Clone)]
pub enum RefundFinish {
    Succeeded { reference: String },
    Declined { code: String },
}

pub(super) fn refund_from_row(row: refund::Model) -> Result<RefundRow, PaymentsError> {
    Ok(RefundRow {
        channel: Channel::from_name(&row.channel).ok_or_else(|| corrupt("refund channel"))?,
        status: RefundStatus::from_name(&row.status).ok_or_else(|| corrupt("refund status"))?,
        id: row.id,
        payment_id: row.payment_id,
        idempotency_key: row.idempotency_key,
        request_hash: row.request_hash,
        amount: row.amount.0,
        reason: row.reason,
        gateway_reference: row.gateway_reference,
        code: row.code,
        created_at: row.created_at,
    })
}

impl Store {
    pub async fn refund_by_key(&self, tenant: TenantId, key: &str) -> Result<Option<RefundRow>, PaymentsError> {
        let row = refund::Entity::find()
            .filter(refund::Column::TenantId.eq(tenant.0))
            .filter(refund::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await?;
        row.map(refund_from_row).transpose()
    }

    /// Begins a refund under the payment's row lock: checks what may still
    /// be refunded, stores the refund and counts its amount against the
    /// payment. A manual refund is done then, with its event; a gateway one
    /// stays PROCESSING until [`Store::finish_refund`]. A refusal changes nothing.
    pub async fn begin_refund(
        &self,
        tenant: TenantId,
        new: &NewRefund,
        now: DateTime<Utc>,
    ) -> Result<BeganRefund, PaymentsError> {
        let WriteTransaction { transaction, turn } = self.database.begin_write().await?;
        let Some(mut payment) = lock_payment(&transaction, tenant, new.payment_id).await? else {
            return refuse(transaction, PaymentsError::NotFound("payment")).await;
        };
        // A concurrent call with the same key may have committed while this
        // one waited for the lock: its refund is the answer, before any
        // check of what is left to refund.
        let earlier = refund::Entity::find()
            .filter(refund::Column::TenantId.eq(tenant.0))
            .filter(refund::Column::IdempotencyKey.eq(new.idempotency_key.as_str()))
            .one(&transaction)
            .await?;
        if let Some(earlier) = earlier {
            transaction.rollback().await?;
            drop(turn);
            return Ok(BeganRefund::Exists(refund_from_row(earlier)?));
        }
        let amount = match refund_amount(payment.status, payment.amount, payment.refunded_amount, new.requested) {
            Ok(amount) => amount,
            Err(refusal) => return refuse(transaction, refusal.into()).await,
        };
        let channel =
            if refunds_through_gateway(payment.channel, &payment.gateway_reference, &payment.external_transaction_id) {
                Channel::Gateway
            } else {
                Channel::Manual
            };
        let status = if channel == Channel::Gateway { RefundStatus::Processing } else { RefundStatus::Succeeded };
        let row = RefundRow {
            id: new.id,
            payment_id: payment.id,
            idempotency_key: new.idempotency_key.clone(),
            request_hash: new.request_hash.clone(),
            amount,
            reason: new.reason.clone(),
            channel,
            status,
            gateway_reference: String::new(),
            code: String::new(),
            created_at: now,
        };
        let inserted = refund::Entity::insert(refund::ActiveModel {
            id: Set(row.id),
            tenant_id: Set(tenant.0),
            payment_id: Set(row.payment_id),
            idempotency_key: Set(row.idempotency_key.clone()),
            request_hash: Set(row.request_hash.clone()),
            amount: Set(Amount(amount)),
            reason: Set(row.reason.clone()),
            channel: Set(channel.name().to_owned()),
            status: Set(status.name().to_owned()),
            gateway_reference: Set(String::new()),
            code: Set(String::new()),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec_without_returning(&transaction)
        .await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                transaction.rollback().await?;
                drop(turn);
                let existing = self
                    .refund_by_key(tenant, &new.idempotency_key)
                    .await?
                    .ok_or_else(|| PaymentsError::Conflict("a concurrent refund with this key vanished".into()))?;
                return Ok(BeganRefund::Exists(existing));
            }
            Err(error) => return Err(error.into()),
        }
        let refunded = payment
            .refunded_amount
            .checked_add(amount)
            .filter(|refunded| *refunded <= payment.amount)
            .ok_or_else(|| PaymentsError::internal("a refund passed its check but exceeds the payment"))?;
        payment.refunded_amount = refunded;
        payment::Entity::update_many()
            .col_expr(payment::Column::RefundedAmount, Expr::value(Amount(refunded)))
            .col_expr(payment::Column::UpdatedAt, Expr::value(now))
            .filter(payment::Column::Id.eq(payment.id))
            .exec(&transaction)
            .await?;
        let announced = status == RefundStatus::Succeeded;
        if announced {
            let mut event = NewEvent::of_payment(EventType::PaymentRefunded, &payment, amount, now);
            event.refund_id = Some(row.id);
            Self::append_event(&transaction, tenant, event).await?;
        }
        transaction.commit().await?;
        if announced {
            self.announce_events();
        }
        Ok(BeganRefund::Began(row))
    }

    /// Records the gateway's answer to a PROCESSING refund: SUCCEEDED with
    /// its event, or DECLINED with its amount given back to the payment. A
    /// refund already finished by a concurrent call is returned as it is.
    pub async fn finish_refund(
        &self,
        tenant: TenantId,
        refund_id: Uuid,
        finish: &RefundFinish,
        now: DateTime<Utc>,
    ) -> Result<RefundRow, PaymentsError> {
        let WriteTransaction { transaction, turn } = self.database.begin_write().await?;
        let current = refund::Entity::find_by_id(refund_id)
            .filter(refund::Column::TenantId.eq(tenant.0))
            .one(&transaction)
            .await?
            .ok_or(PaymentsError::NotFound("refund"))?;
        // The payment first, as every writer of a refund locks them.
        let Some(mut payment) = lock_payment(&transaction, tenant, current.payment_id).await? else {
            return refuse(transaction, PaymentsError::NotFound("payment")).await;
        };
        let update = refund::Entity::update_many()
            .col_expr(refund::Column::UpdatedAt, Expr::value(now))
            .filter(refund::Column::Id.eq(refund_id))
            .filter(refund::Column::Status.eq(RefundStatus::Processing.name()));
        let update = match finish {
            RefundFinish::Succeeded { reference } => update
                .col_expr(refund::Column::Status, Expr::value(RefundStatus::Succeeded.name()))
                .col_expr(refund::Column::GatewayReference, Expr::value(reference.clone())),
            RefundFinish::Declined { code } => update
                .col_expr(refund::Column::Status, Expr::value(RefundStatus::Declined.name()))
                .col_expr(refund::Column::Code, Expr::value(code.clone())),
        };
        let changed = update.exec(&transaction).await?.rows_affected == 1;
        let amount = current.amount.0;
        let mut announced = false;
        if changed {
            match finish {
                RefundFinish::Succeeded { .. } => {
                    let mut event = NewEvent::of_payment(EventType::PaymentRefunded, &payment, amount, now);
                    event.refund_id = Some(refund_id);
                    Self::append_event(&transaction, tenant, event).await?;
                    announced = true;
                }
                RefundFinish::Declined { .. } => {
                    payment.refunded_amount = payment
                        .refunded_amount
                        .checked_sub(amount)
                        .filter(|rest| !rest.is_sign_negative())
                        .ok_or_else(|| PaymentsError::internal("a declined refund was never counted"))?;
                    payment::Entity::update_many()
                        .col_expr(payment::Column::RefundedAmount, Expr::value(Amount(payment.refunded_amount)))
                        .col_expr(payment::Column::UpdatedAt, Expr::value(now))
                        .filter(payment::Column::Id.eq(payment.id))
                        .exec(&transaction)
                        .await?;
                }
            }
        }
        transaction.commit().await?;
        drop(turn);
        if announced {
            self.announce_events();
        }
        let row =
            refund::Entity::find_by_id(refund_id).one(&self.db).await?.ok_or(PaymentsError::NotFound("refund"))?;
        refund_from_row(row)
    }
}
