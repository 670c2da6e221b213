//! Invoice events, written in the transaction of the change they tell of and
//! numbered from one counter row, so they become visible in sequence order.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::ids::AccountId;
use reservoir_common::outbox::next_sequence;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::event;
use super::{InvoiceRow, Store};
use crate::domain::{InvoiceKind, InvoiceStatus};
use crate::error::InvoicingError;

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct InvoiceEvent {
    pub sequence: u64,
    /// INVOICE_CREATED, INVOICE_FINALIZED, INVOICE_PAID, INVOICE_VOIDED or INVOICE_UNCOLLECTIBLE.
    pub event_type: String,
    pub account_id: AccountId,
    pub invoice_id: uuid::Uuid,
    pub kind: String,
    pub number: Option<u64>,
    pub total: String,
    pub currency: String,
    pub occurred_at: DateTime<Utc>,
}

impl InvoiceEvent {
    /// Whether it tells of a top-up's invoice paid: its credits are in the wallet.
    pub fn is_top_up_paid(&self) -> bool {
        self.event_type == event_type_of(InvoiceStatus::Paid) && self.kind == InvoiceKind::TopUp.name()
    }
}

/// The event an invoice reaching `status` is announced with.
pub fn event_type_of(status: InvoiceStatus) -> &'static str {
    match status {
        InvoiceStatus::Draft => "INVOICE_CREATED",
        InvoiceStatus::Open => "INVOICE_FINALIZED",
        InvoiceStatus::Paid => "INVOICE_PAID",
        InvoiceStatus::Void => "INVOICE_VOIDED",
        InvoiceStatus::Uncollectible => "INVOICE_UNCOLLECTIBLE",
    }
}

impl Store {
    /// Appends the event of `invoice` reaching `status`, on the change's transaction.
    pub(super) async fn emit(
        connection: &impl ConnectionTrait,
        invoice: &InvoiceRow,
        status: InvoiceStatus,
        now: DateTime<Utc>,
    ) -> Result<(), InvoicingError> {
        let sequence = next_sequence(connection, "event_sequence").await?;
        event::Entity::insert(event::ActiveModel {
            sequence: Set(sequence),
            tenant_id: Set(invoice.tenant_id.0),
            event_type: Set(event_type_of(status).to_owned()),
            account_id: Set(invoice.account_id.0),
            invoice_id: Set(invoice.id),
            kind: Set(invoice.kind.name().to_owned()),
            invoice_number: Set(invoice.number.map(|number| i64::try_from(number).unwrap_or(i64::MAX))),
            total: Set(invoice.total.to_string()),
            currency: Set(invoice.currency.clone()),
            occurred_at: Set(now),
        })
        .exec_without_returning(connection)
        .await?;
        Ok(())
    }

    pub async fn events_after(
        &self,
        tenant: TenantId,
        after: u64,
        limit: u64,
    ) -> Result<Vec<InvoiceEvent>, InvoicingError> {
        let rows = event::Entity::find()
            .filter(event::Column::TenantId.eq(tenant.0))
            .filter(event::Column::Sequence.gt(i64::try_from(after).unwrap_or(i64::MAX)))
            .order_by_asc(event::Column::Sequence)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| InvoiceEvent {
                sequence: u64::try_from(row.sequence).unwrap_or(0),
                event_type: row.event_type,
                account_id: AccountId(row.account_id),
                invoice_id: row.invoice_id,
                kind: row.kind,
                number: row.invoice_number.and_then(|number| u64::try_from(number).ok()),
                total: row.total,
                currency: row.currency,
                occurred_at: row.occurred_at,
            })
            .collect())
    }
}
