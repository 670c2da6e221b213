//! Stored and domain values → wire messages, and back for the enums.

use chrono::{DateTime, Utc};
use reservoir_common::time::to_timestamp;
use reservoir_proto::invoicing as pb;

use crate::domain::{
    InvoiceKind, InvoiceStatus, Line, LineKind, currency_scale, format_decimal as decimal, format_money as money,
};
use crate::store::InvoiceRow;

pub fn status_to_pb(status: InvoiceStatus) -> pb::InvoiceStatus {
    match status {
        InvoiceStatus::Draft => pb::InvoiceStatus::Draft,
        InvoiceStatus::Open => pb::InvoiceStatus::Open,
        InvoiceStatus::Paid => pb::InvoiceStatus::Paid,
        InvoiceStatus::Void => pb::InvoiceStatus::Void,
        InvoiceStatus::Uncollectible => pb::InvoiceStatus::Uncollectible,
    }
}

pub fn status_from_pb(status: i32) -> Option<Option<InvoiceStatus>> {
    match pb::InvoiceStatus::try_from(status).ok()? {
        pb::InvoiceStatus::Unspecified => Some(None),
        pb::InvoiceStatus::Draft => Some(Some(InvoiceStatus::Draft)),
        pb::InvoiceStatus::Open => Some(Some(InvoiceStatus::Open)),
        pb::InvoiceStatus::Paid => Some(Some(InvoiceStatus::Paid)),
        pb::InvoiceStatus::Void => Some(Some(InvoiceStatus::Void)),
        pb::InvoiceStatus::Uncollectible => Some(Some(InvoiceStatus::Uncollectible)),
    }
}

pub fn kind_to_pb(kind: InvoiceKind) -> pb::InvoiceKind {
    match kind {
        InvoiceKind::TopUp => pb::InvoiceKind::TopUp,
        InvoiceKind::Statement => pb::InvoiceKind::Statement,
    }
}

pub fn kind_from_pb(kind: i32) -> Option<Option<InvoiceKind>> {
    match pb::InvoiceKind::try_from(kind).ok()? {
        pb::InvoiceKind::Unspecified => Some(None),
        pb::InvoiceKind::TopUp => Some(Some(InvoiceKind::TopUp)),
        pb::InvoiceKind::Statement => Some(Some(InvoiceKind::Statement)),
    }
}

fn line_kind_to_pb(kind: LineKind) -> pb::LineKind {
    match kind {
        LineKind::Credits => pb::LineKind::Credits,
        LineKind::Usage => pb::LineKind::Usage,
        LineKind::Other => pb::LineKind::Other,
        LineKind::CreditsApplied => pb::LineKind::CreditsApplied,
    }
}

fn line_to_pb(line: &Line, scale: u32) -> pb::InvoiceLine {
    pb::InvoiceLine {
        kind: line_kind_to_pb(line.kind).into(),
        description: line.description.clone(),
        meter_code: line.meter_code.clone(),
        dimension_key: line.dimension_key.clone(),
        dimension_value: line.dimension_value.clone(),
        quantity: decimal(line.quantity),
        unit_price: line.unit_price.map(decimal).unwrap_or_default(),
        amount: money(line.amount, scale),
    }
}

pub fn invoice_to_pb(invoice: &InvoiceRow, now: DateTime<Utc>) -> pb::Invoice {
    let scale = currency_scale(&invoice.currency);
    pb::Invoice {
        id: invoice.id.to_string(),
        account_id: invoice.account_id.to_string(),
        kind: kind_to_pb(invoice.kind).into(),
        status: status_to_pb(invoice.status).into(),
        number: invoice.number.unwrap_or(0),
        currency: invoice.currency.clone(),
        lines: invoice.lines.iter().map(|line| line_to_pb(line, scale)).collect(),
        total: money(invoice.total, scale),
        amount_due: money(invoice.status.amount_due(invoice.total), scale),
        unit_code: invoice.unit_code.clone(),
        credits: decimal(invoice.credits),
        uncovered_amount: money(invoice.uncovered_amount, scale),
        period_start: Some(to_timestamp(invoice.period_start)),
        period_end: Some(to_timestamp(invoice.period_end)),
        issued_at: invoice.issued_at.map(to_timestamp),
        due_at: invoice.due_at.map(to_timestamp),
        overdue: invoice.status.is_overdue(invoice.due_at, now),
        paid_at: invoice.paid_at.map(to_timestamp),
        payment_reference: invoice.payment_reference.clone(),
        voided_at: invoice.voided_at.map(to_timestamp),
        description: invoice.description.clone(),
        metadata: invoice.metadata.clone(),
        created_at: Some(to_timestamp(invoice.created_at)),
        updated_at: Some(to_timestamp(invoice.updated_at)),
    }
}

pub fn event_to_pb(event: &crate::store::InvoiceEvent) -> pb::Event {
    let kind = match event.event_type.as_str() {
        "INVOICE_CREATED" => pb::EventType::InvoiceCreated,
        "INVOICE_FINALIZED" => pb::EventType::InvoiceFinalized,
        "INVOICE_PAID" => pb::EventType::InvoicePaid,
        "INVOICE_VOIDED" => pb::EventType::InvoiceVoided,
        "INVOICE_UNCOLLECTIBLE" => pb::EventType::InvoiceUncollectible,
        _ => pb::EventType::Unspecified,
    };
    let invoice_kind = match event.kind.as_str() {
        "TOP_UP" => pb::InvoiceKind::TopUp,
        "STATEMENT" => pb::InvoiceKind::Statement,
        _ => pb::InvoiceKind::Unspecified,
    };
    pb::Event {
        sequence: event.sequence,
        r#type: kind.into(),
        account_id: event.account_id.to_string(),
        invoice_id: event.invoice_id.to_string(),
        kind: invoice_kind.into(),
        number: event.number.unwrap_or(0),
        total: event.total.clone(),
        currency: event.currency.clone(),
        occurred_at: Some(reservoir_common::time::to_timestamp(event.occurred_at)),
    }
}
