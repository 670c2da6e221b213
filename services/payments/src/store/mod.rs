//! Payments' persistence. Every change is written in one transaction with
//! the outbox event that announces it, and the outbox numbers its events
//! from a one-row counter in that same transaction, so a consumer reading
//! in sequence order never skips an event that commits later.

mod entities;
mod fraud;
mod methods;
pub mod migrations;
mod payments;
mod refunds;
mod sandbox;
mod vouchers;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::replay::{self, Call, OnSameKey};
use reservoir_common::db::{Amount, Database};
use reservoir_common::idempotency::Replayed;
use reservoir_common::ids::AccountId;
use reservoir_common::settings::DatabaseSettings;
use rust_decimal::Decimal;
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};
use sea_orm_migration::MigratorTrait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use uuid::Uuid;

use self::entities::event;
pub use self::fraud::FraudDecisionRow;
pub use self::payments::PaymentFilter;
pub use self::refunds::{BeganRefund, NewRefund, RefundFinish};
pub use self::sandbox::{SandboxCall, SandboxOperation, SandboxOutcome, SandboxRecord};
pub use self::vouchers::{IssuedVoucher, Redeemed, VouchersIssued};
use crate::domain::{AttemptOutcome, Channel, EventType, MethodKind, PaymentStatus, RefundStatus};
use crate::error::PaymentsError;

/// A payment method as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentMethodRow {
    pub id: Uuid,
    pub account_id: AccountId,
    pub kind: MethodKind,
    /// Empty for a bank transfer.
    pub gateway_token: String,
    pub label: String,
    pub created_at: DateTime<Utc>,
}

/// A payment as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentRow {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub account_id: AccountId,
    pub invoice_id: Uuid,
    pub payment_method_id: Option<Uuid>,
    pub channel: Channel,
    /// The method's token when the payment was made; empty when manual.
    pub gateway_token: String,
    pub amount: Decimal,
    pub currency: String,
    pub status: PaymentStatus,
    pub idempotency_key: String,
    pub request_hash: String,
    pub gateway_reference: String,
    pub external_transaction_id: String,
    pub failure_code: String,
    /// Refunds succeeded or in flight: what may not be refunded again.
    pub refunded_amount: Decimal,
    pub metadata: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One gateway call of a payment.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub number: u32,
    pub outcome: AttemptOutcome,
    pub gateway_reference: String,
    pub code: String,
    pub attempted_at: DateTime<Utc>,
}

/// A refund as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundRow {
    pub id: Uuid,
    pub payment_id: Uuid,
    pub idempotency_key: String,
    pub request_hash: String,
    pub amount: Decimal,
    pub reason: String,
    pub channel: Channel,
    pub status: RefundStatus,
    pub gateway_reference: String,
    /// The gateway's code when it declined the refund.
    pub code: String,
    pub created_at: DateTime<Utc>,
}

/// A payment with its attempts, oldest first, and its succeeded refunds.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentRecord {
    pub payment: PaymentRow,
    pub attempts: Vec<AttemptRow>,
    pub refunds: Vec<RefundRow>,
}

/// A voucher batch as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct VoucherBatchRow {
    pub id: Uuid,
    pub count: u32,
    pub value: Decimal,
    pub unit_code: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A voucher as stored: everything but its code, of which only a digest is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct VoucherRow {
    pub id: Uuid,
    pub batch_id: Uuid,
    pub value: Decimal,
    pub unit_code: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub redeemed_by: Option<AccountId>,
    pub redeemed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// An outbox event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub sequence: u64,
    pub event_type: EventType,
    pub account_id: AccountId,
    pub payment_id: Option<Uuid>,
    pub invoice_id: Option<Uuid>,
    pub amount: Decimal,
    pub currency: String,
    pub voucher_id: Option<Uuid>,
    pub refund_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

/// An event to append to the outbox.
struct NewEvent {
    event_type: EventType,
    account_id: AccountId,
    payment_id: Option<Uuid>,
    invoice_id: Option<Uuid>,
    amount: Decimal,
    currency: String,
    voucher_id: Option<Uuid>,
    refund_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
}

impl NewEvent {
    /// An event about a payment; `amount` is the payment's or a refund's.
    fn of_payment(event_type: EventType, payment: &PaymentRow, amount: Decimal, occurred_at: DateTime<Utc>) -> Self {
        Self {
            event_type,
            account_id: payment.account_id,
            payment_id: Some(payment.id),
            invoice_id: Some(payment.invoice_id),
            amount,
            currency: payment.currency.clone(),
            voucher_id: None,
            refund_id: None,
            occurred_at,
        }
    }
}

#[derive(Clone)]
pub struct Store {
    database: Database,
    db: DatabaseConnection,
    /// Woken after every commit that wrote events, so this process's event
    /// streams send them at once instead of at their next poll.
    events_written: Arc<Notify>,
}

fn corrupt(what: &str) -> PaymentsError {
    PaymentsError::internal(format!("stored {what} is not valid"))
}

use reservoir_common::db::json;

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Rolls back a write transaction and answers `error`: a refusal leaves
/// nothing behind.
async fn refuse<T>(transaction: DatabaseTransaction, error: PaymentsError) -> Result<T, PaymentsError> {
    transaction.rollback().await?;
    Err(error)
}

fn event_from_row(row: event::Model) -> Result<EventRow, PaymentsError> {
    Ok(EventRow {
        sequence: u64::try_from(row.sequence).map_err(|_| corrupt("event sequence"))?,
        event_type: EventType::from_name(&row.event_type).ok_or_else(|| corrupt("event type"))?,
        account_id: AccountId(row.account_id),
        payment_id: row.payment_id,
        invoice_id: row.invoice_id,
        amount: row.amount.0,
        currency: row.currency,
        voucher_id: row.voucher_id,
        refund_id: row.refund_id,
        occurred_at: row.occurred_at,
    })
}

impl Store {
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, PaymentsError> {
        let database = Database::connect(settings).await?;
        Ok(Self { db: database.connection().clone(), database, events_written: Arc::new(Notify::new()) })
    }

    /// The connection pool, for its figures.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Notified after each commit that wrote events.
    pub fn events_written(&self) -> Arc<Notify> {
        self.events_written.clone()
    }

    pub async fn migrate(&self) -> Result<(), PaymentsError> {
        self.database
            .migrate_exclusively(|connection| async move {
                migrations::Migrator::up(&connection, None).await.map_err(PaymentsError::from)
            })
            .await
    }

    // ---- outbox ------------------------------------------------------------------

    /// Appends an event in the caller's transaction. Its sequence comes from
    /// the counter row, which stays locked until the transaction ends: events
    /// are numbered in commit order.
    async fn append_event(
        connection: &impl ConnectionTrait,
        tenant: TenantId,
        event: NewEvent,
    ) -> Result<(), PaymentsError> {
        let statement = Statement::from_string(
            connection.get_database_backend(),
            "UPDATE event_sequence SET last_sequence = last_sequence + 1 WHERE id = 1 RETURNING last_sequence",
        );
        let row = connection
            .query_one_raw(statement)
            .await?
            .ok_or_else(|| PaymentsError::internal("the event sequence row is missing"))?;
        let sequence: i64 = row.try_get("", "last_sequence")?;
        event::Entity::insert(event::ActiveModel {
            sequence: Set(sequence),
            tenant_id: Set(tenant.0),
            event_type: Set(event.event_type.name().to_owned()),
            account_id: Set(event.account_id.0),
            payment_id: Set(event.payment_id),
            invoice_id: Set(event.invoice_id),
            amount: Set(Amount(event.amount)),
            currency: Set(event.currency),
            voucher_id: Set(event.voucher_id),
            refund_id: Set(event.refund_id),
            occurred_at: Set(event.occurred_at),
        })
        .exec_without_returning(connection)
        .await?;
        Ok(())
    }

    /// Wakes this process's event streams after a commit that wrote events.
    fn announce_events(&self) {
        self.events_written.notify_waiters();
    }

    /// The tenant's events after `after_sequence`, oldest first.
    pub async fn events_after(
        &self,
        tenant: TenantId,
        after_sequence: u64,
        limit: u64,
    ) -> Result<Vec<EventRow>, PaymentsError> {
        let rows = event::Entity::find()
            .filter(event::Column::TenantId.eq(tenant.0))
            .filter(event::Column::Sequence.gt(to_i64(after_sequence)))
            .order_by_asc(event::Column::Sequence)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(event_from_row).collect()
    }

    // ---- idempotency -------------------------------------------------------------

    /// The answer recorded for a key, if any: the record of it this store
    /// keeps (`T`, serialized as JSON), or, for a record from before that,
    /// the encoded response. The key used for another method or another
    /// request is refused.
    pub async fn replay<T: DeserializeOwned>(
        &self,
        tenant: TenantId,
        key: &str,
        method: &str,
        request_hash: &str,
    ) -> Result<Option<Replayed<T>>, PaymentsError> {
        Ok(replay::replay(&self.db, Call { tenant, key, method, request_hash }).await?)
    }

    /// Records what rebuilds an answer in the caller's transaction. A key
    /// recorded meanwhile by a concurrent call fails it with a unique
    /// violation.
    async fn record(
        connection: &impl ConnectionTrait,
        tenant: TenantId,
        key: &str,
        method: &str,
        request_hash: &str,
        answer: &impl Serialize,
        now: DateTime<Utc>,
    ) -> Result<(), sea_orm::DbErr> {
        replay::record(connection, Call { tenant, key, method, request_hash }, answer, now, OnSameKey::Fail).await
    }
}
