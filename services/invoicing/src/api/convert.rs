//! Stored and domain values → wire messages, and back for the enums.

use chrono::{DateTime, Utc};
use reservoir_common::time::to_timestamp;
use reservoir_proto::invoicing as pb;
use rust_decimal::Decimal;

use crate::domain::{InvoiceKind, InvoiceStatus, Line, LineKind};
use crate::store::InvoiceRow;

fn decimal(value: Decimal) -> String {
    value.normalize().to_string()
}

/// An amount in a currency, with its minor unit's decimals ("12.50").
fn money(value: Decimal, scale: u32) -> String {
    let mut value = value.round_dp(scale);
    value.rescale(scale);
    value.to_string()
}

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

/// The decimal places of an ISO-4217 currency (2 when unknown).
pub fn currency_scale(currency: &str) -> u32 {
    reservoir_common::money::Unit::currency(currency, None).map(|unit| unit.scale()).unwrap_or(2)
}

/// Whether an unpaid invoice is past its due date.
pub fn is_overdue(invoice: &InvoiceRow, now: DateTime<Utc>) -> bool {
    matches!(invoice.status, InvoiceStatus::Open | InvoiceStatus::Uncollectible)
        && invoice.due_at.is_some_and(|due| due <= now)
}

pub fn amount_due(invoice: &InvoiceRow) -> Decimal {
    if matches!(invoice.status, InvoiceStatus::Open | InvoiceStatus::Uncollectible) {
        invoice.total
    } else {
        Decimal::ZERO
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
        amount_due: money(amount_due(invoice), scale),
        unit_code: invoice.unit_code.clone(),
        credits: decimal(invoice.credits),
        uncovered_amount: money(invoice.uncovered_amount, scale),
        period_start: Some(to_timestamp(invoice.period_start)),
        period_end: Some(to_timestamp(invoice.period_end)),
        issued_at: invoice.issued_at.map(to_timestamp),
        due_at: invoice.due_at.map(to_timestamp),
        overdue: is_overdue(invoice, now),
        paid_at: invoice.paid_at.map(to_timestamp),
        payment_reference: invoice.payment_reference.clone(),
        voided_at: invoice.voided_at.map(to_timestamp),
        description: invoice.description.clone(),
        metadata: invoice.metadata.clone(),
        created_at: Some(to_timestamp(invoice.created_at)),
        updated_at: Some(to_timestamp(invoice.updated_at)),
    }
}

/// The CSV of ExportReport: a header, then one row per invoice line.
pub fn report_csv(invoices: &[InvoiceRow], now: DateTime<Utc>) -> Result<String, csv::Error> {
    let mut writer = reservoir_common::spreadsheet::SafeWriter::new();
    writer.write_record([
        "invoice_number",
        "invoice_id",
        "account_id",
        "kind",
        "status",
        "currency",
        "period_start",
        "period_end",
        "issued_at",
        "due_at",
        "overdue",
        "line_number",
        "line_kind",
        "description",
        "meter_code",
        "dimension_key",
        "dimension_value",
        "quantity",
        "unit_price",
        "line_amount",
        "invoice_total",
        "amount_due",
        "payment_reference",
    ])?;
    let time = |instant: Option<DateTime<Utc>>| instant.map(|at| at.to_rfc3339()).unwrap_or_default();
    for invoice in invoices {
        let scale = currency_scale(&invoice.currency);
        for (index, line) in invoice.lines.iter().enumerate() {
            writer.write_record([
                invoice.number.map(|number| number.to_string()).unwrap_or_default(),
                invoice.id.to_string(),
                invoice.account_id.to_string(),
                invoice.kind.name().to_owned(),
                invoice.status.name().to_owned(),
                invoice.currency.clone(),
                invoice.period_start.to_rfc3339(),
                invoice.period_end.to_rfc3339(),
                time(invoice.issued_at),
                time(invoice.due_at),
                is_overdue(invoice, now).to_string(),
                (index + 1).to_string(),
                line.kind.name().to_owned(),
                line.description.clone(),
                line.meter_code.clone(),
                line.dimension_key.clone(),
                line.dimension_value.clone(),
                decimal(line.quantity),
                line.unit_price.map(decimal).unwrap_or_default(),
                money(line.amount, scale),
                money(invoice.total, scale),
                money(amount_due(invoice), scale),
                invoice.payment_reference.clone(),
            ])?;
        }
    }
    let bytes = writer.into_inner()?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
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
