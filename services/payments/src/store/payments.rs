//! Payments with their attempts (payment methods are in `methods.rs`,
//! refunds in `refunds.rs`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction, is_unique_violation};
use reservoir_common::ids::AccountId;
use rust_decimal::Decimal;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::entities::{attempt, payment, refund};
use super::refunds::refund_from_row;
use super::{AttemptRow, NewEvent, PaymentRecord, PaymentRow, RefundRow, Store, corrupt, json, refuse};
use crate::domain::{
    AttemptOutcome, Channel, ChargeStep, Confirmation, EventType, PaymentStatus, RefundStatus, charge_step,
    confirmation,
};
use crate::error::PaymentsError;

/// Which payments a list holds; `None` matches every value.
#[derive(Debug, Clone, Default)]
pub struct PaymentFilter {
    pub account_id: Option<AccountId>,
    pub invoice_id: Option<Uuid>,
    pub status: Option<PaymentStatus>,
}

fn payment_from_row(row: payment::Model) -> Result<PaymentRow, PaymentsError> {
    Ok(PaymentRow {
        channel: Channel::from_name(&row.channel).ok_or_else(|| corrupt("payment channel"))?,
        status: PaymentStatus::from_name(&row.status).ok_or_else(|| corrupt("payment status"))?,
        metadata: serde_json::from_str(&row.metadata).map_err(|_| corrupt("payment metadata"))?,
        id: row.id,
        tenant_id: TenantId(row.tenant_id),
        account_id: AccountId(row.account_id),
        invoice_id: row.invoice_id,
        payment_method_id: row.payment_method_id,
        gateway_token: row.gateway_token,
        amount: row.amount.0,
        currency: row.currency,
        idempotency_key: row.idempotency_key,
        request_hash: row.request_hash,
        gateway_reference: row.gateway_reference,
        external_transaction_id: row.external_transaction_id,
        failure_code: row.failure_code,
        refunded_amount: row.refunded_amount.0,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn attempt_from_row(row: attempt::Model) -> Result<AttemptRow, PaymentsError> {
    Ok(AttemptRow {
        number: u32::try_from(row.number).map_err(|_| corrupt("attempt number"))?,
        outcome: AttemptOutcome::from_name(&row.outcome).ok_or_else(|| corrupt("attempt outcome"))?,
        gateway_reference: row.gateway_reference,
        code: row.code,
        attempted_at: row.attempted_at,
    })
}

/// A payment row locked for the rest of the transaction (on PostgreSQL;
/// SQLite's one writer needs no row lock), seen only by its tenant.
pub(super) async fn lock_payment(
    connection: &impl ConnectionTrait,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<PaymentRow>, PaymentsError> {
    let row = payment::Entity::find_by_id(id)
        .filter(payment::Column::TenantId.eq(tenant.0))
        .lock_exclusive()
        .one(connection)
        .await?;
    row.map(payment_from_row).transpose()
}

impl Store {
    pub async fn payment_by_key(&self, tenant: TenantId, key: &str) -> Result<Option<PaymentRow>, PaymentsError> {
        let row = payment::Entity::find()
            .filter(payment::Column::TenantId.eq(tenant.0))
            .filter(payment::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await?;
        row.map(payment_from_row).transpose()
    }

    pub async fn payment_row(&self, tenant: TenantId, id: Uuid) -> Result<Option<PaymentRow>, PaymentsError> {
        let row = payment::Entity::find_by_id(id).filter(payment::Column::TenantId.eq(tenant.0)).one(&self.db).await?;
        row.map(payment_from_row).transpose()
    }

    /// Stores a new payment, with its PAYMENT_PENDING event when it starts
    /// pending, or its PAYMENT_HELD_FOR_REVIEW event and HELD decision when
    /// a rule (`held_by`) holds it; `false` when a concurrent call stored
    /// one under its key first.
    pub async fn insert_payment(
        &self,
        new: &PaymentRow,
        held_by: Option<crate::domain::fraud::ChargeRule>,
    ) -> Result<bool, PaymentsError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let inserted = payment::Entity::insert(payment::ActiveModel {
            id: Set(new.id),
            tenant_id: Set(new.tenant_id.0),
            account_id: Set(new.account_id.0),
            invoice_id: Set(new.invoice_id),
            payment_method_id: Set(new.payment_method_id),
            channel: Set(new.channel.name().to_owned()),
            gateway_token: Set(new.gateway_token.clone()),
            amount: Set(Amount(new.amount)),
            currency: Set(new.currency.clone()),
            status: Set(new.status.name().to_owned()),
            idempotency_key: Set(new.idempotency_key.clone()),
            request_hash: Set(new.request_hash.clone()),
            gateway_reference: Set(new.gateway_reference.clone()),
            external_transaction_id: Set(new.external_transaction_id.clone()),
            failure_code: Set(new.failure_code.clone()),
            refunded_amount: Set(Amount(Decimal::ZERO)),
            metadata: Set(json(&new.metadata)),
            created_at: Set(new.created_at),
            updated_at: Set(new.updated_at),
        })
        .exec_without_returning(&transaction)
        .await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                transaction.rollback().await?;
                return Ok(false);
            }
            Err(error) => return Err(error.into()),
        }
        // Only a manual or a held payment starts in a status worth announcing.
        let announced = new.status == PaymentStatus::Pending;
        if let Some(rule) = held_by {
            let decision = super::fraud::Decision { payment: new, made: true, rule, decision: "HELD", reason: "" };
            super::fraud::record_decision(&transaction, &decision, new.created_at).await?;
            let event = NewEvent::of_payment(EventType::PaymentHeldForReview, new, new.amount, new.created_at);
            Self::append_event(&transaction, new.tenant_id, event).await?;
        } else if announced {
            let event = NewEvent::of_payment(EventType::PaymentPending, new, new.amount, new.created_at);
            Self::append_event(&transaction, new.tenant_id, event).await?;
        }
        transaction.commit().await?;
        if announced {
            self.announce_events();
        }
        Ok(true)
    }

    /// Records what one gateway call answered, the payment's new status and
    /// its event, in one transaction. A payment another call settled
    /// meanwhile is left as it is and returned.
    pub async fn record_attempt(
        &self,
        tenant: TenantId,
        payment_id: Uuid,
        outcome: AttemptOutcome,
        gateway_reference: &str,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<PaymentRow, PaymentsError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let Some(mut payment) = lock_payment(&transaction, tenant, payment_id).await? else {
            return refuse(transaction, PaymentsError::NotFound("payment")).await;
        };
        if charge_step(payment.status) != ChargeStep::Attempt {
            transaction.rollback().await?;
            return Ok(payment);
        }
        let next = outcome.status();
        if !payment.status.can_become(next) {
            let error = PaymentsError::internal(format!("a {:?} payment cannot become {next:?}", payment.status));
            return refuse(transaction, error).await;
        }
        let last = attempt::Entity::find()
            .filter(attempt::Column::PaymentId.eq(payment_id))
            .order_by_desc(attempt::Column::Number)
            .one(&transaction)
            .await?;
        let number = last.map_or(1, |row| row.number.saturating_add(1));
        attempt::Entity::insert(attempt::ActiveModel {
            payment_id: Set(payment_id),
            number: Set(number),
            outcome: Set(outcome.name().to_owned()),
            gateway_reference: Set(gateway_reference.to_owned()),
            code: Set(code.to_owned()),
            attempted_at: Set(now),
        })
        .exec_without_returning(&transaction)
        .await?;
        let previous = payment.status;
        payment.status = next;
        if !gateway_reference.is_empty() {
            payment.gateway_reference = gateway_reference.to_owned();
        }
        payment.failure_code = code.to_owned();
        payment.updated_at = now;
        payment::Entity::update_many()
            .col_expr(payment::Column::Status, Expr::value(next.name()))
            .col_expr(payment::Column::GatewayReference, Expr::value(payment.gateway_reference.clone()))
            .col_expr(payment::Column::FailureCode, Expr::value(payment.failure_code.clone()))
            .col_expr(payment::Column::UpdatedAt, Expr::value(now))
            .filter(payment::Column::Id.eq(payment_id))
            .exec(&transaction)
            .await?;
        // One event per change of status: a failure after a failure is
        // another attempt of the same FAILED payment, not news.
        let announced = match EventType::of_status(next) {
            Some(event_type) if next != previous => {
                let event = NewEvent::of_payment(event_type, &payment, payment.amount, now);
                Self::append_event(&transaction, tenant, event).await?;
                true
            }
            _ => false,
        };
        transaction.commit().await?;
        if announced {
            self.announce_events();
        }
        Ok(payment)
    }

    /// Confirms a pending payment with the id of the money received, with
    /// its PAYMENT_CONFIRMED event; the same id again answers it unchanged.
    pub async fn confirm_payment(
        &self,
        tenant: TenantId,
        payment_id: Uuid,
        external_transaction_id: &str,
        now: DateTime<Utc>,
    ) -> Result<PaymentRow, PaymentsError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let Some(mut payment) = lock_payment(&transaction, tenant, payment_id).await? else {
            return refuse(transaction, PaymentsError::NotFound("payment")).await;
        };
        // A held payment waits for ReviewPayment: no money arrives on its own.
        if payment.failure_code == crate::domain::fraud::HELD_CODE {
            return refuse(transaction, crate::domain::Refusal::PaymentHeldForReview.into()).await;
        }
        match confirmation(payment.status, &payment.external_transaction_id, external_transaction_id) {
            Ok(Confirmation::Unchanged) => {
                transaction.rollback().await?;
                return Ok(payment);
            }
            Ok(Confirmation::Confirm) => {}
            Err(refusal) => return refuse(transaction, refusal.into()).await,
        }
        payment.status = PaymentStatus::Succeeded;
        payment.external_transaction_id = external_transaction_id.to_owned();
        payment.updated_at = now;
        payment::Entity::update_many()
            .col_expr(payment::Column::Status, Expr::value(PaymentStatus::Succeeded.name()))
            .col_expr(payment::Column::ExternalTransactionId, Expr::value(external_transaction_id))
            .col_expr(payment::Column::UpdatedAt, Expr::value(now))
            .filter(payment::Column::Id.eq(payment_id))
            .exec(&transaction)
            .await?;
        let event = NewEvent::of_payment(EventType::PaymentConfirmed, &payment, payment.amount, now);
        Self::append_event(&transaction, tenant, event).await?;
        transaction.commit().await?;
        self.announce_events();
        Ok(payment)
    }

    /// A payment with its attempts and succeeded refunds.
    pub async fn payment(&self, tenant: TenantId, id: Uuid) -> Result<Option<PaymentRecord>, PaymentsError> {
        let Some(payment) = self.payment_row(tenant, id).await? else {
            return Ok(None);
        };
        Ok(self.records(vec![payment]).await?.pop())
    }

    /// Payments matching `filter`, newest first, before the payment `before`
    /// (ids are time-ordered), at most `limit`.
    pub async fn payments_page(
        &self,
        tenant: TenantId,
        filter: &PaymentFilter,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<PaymentRecord>, PaymentsError> {
        let mut query = payment::Entity::find().filter(payment::Column::TenantId.eq(tenant.0));
        if let Some(account_id) = filter.account_id {
            query = query.filter(payment::Column::AccountId.eq(account_id.0));
        }
        if let Some(invoice_id) = filter.invoice_id {
            query = query.filter(payment::Column::InvoiceId.eq(invoice_id));
        }
        if let Some(status) = filter.status {
            query = query.filter(payment::Column::Status.eq(status.name()));
        }
        if let Some(before) = before {
            query = query.filter(payment::Column::Id.lt(before));
        }
        let rows = query.order_by_desc(payment::Column::Id).limit(limit).all(&self.db).await?;
        let payments = rows.into_iter().map(payment_from_row).collect::<Result<Vec<_>, _>>()?;
        self.records(payments).await
    }

    /// The attempts and succeeded refunds of payments, in their order.
    async fn records(&self, payments: Vec<PaymentRow>) -> Result<Vec<PaymentRecord>, PaymentsError> {
        let ids: Vec<Uuid> = payments.iter().map(|payment| payment.id).collect();
        let mut attempts: BTreeMap<Uuid, Vec<AttemptRow>> = BTreeMap::new();
        let mut refunds: BTreeMap<Uuid, Vec<RefundRow>> = BTreeMap::new();
        // Pages hold at most 1,000 payments; 500 ids keep each IN list short.
        for chunk in ids.chunks(500) {
            let rows = attempt::Entity::find()
                .filter(attempt::Column::PaymentId.is_in(chunk.to_vec()))
                .order_by_asc(attempt::Column::PaymentId)
                .order_by_asc(attempt::Column::Number)
                .all(&self.db)
                .await?;
            for row in rows {
                attempts.entry(row.payment_id).or_default().push(attempt_from_row(row)?);
            }
            let rows = refund::Entity::find()
                .filter(refund::Column::PaymentId.is_in(chunk.to_vec()))
                .filter(refund::Column::Status.eq(RefundStatus::Succeeded.name()))
                .order_by_asc(refund::Column::Id)
                .all(&self.db)
                .await?;
            for row in rows {
                refunds.entry(row.payment_id).or_default().push(refund_from_row(row)?);
            }
        }
        Ok(payments
            .into_iter()
            .map(|payment| PaymentRecord {
                attempts: attempts.remove(&payment.id).unwrap_or_default(),
                refunds: refunds.remove(&payment.id).unwrap_or_default(),
                payment,
            })
            .collect())
    }
}
