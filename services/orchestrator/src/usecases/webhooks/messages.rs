//! The message each event becomes: a JSON body in the shape Standard
//! Webhooks recommends, its type named after its source.

use chrono::{DateTime, Utc};
use reservoir_common::time::{from_timestamp, now};
use reservoir_proto::invoicing as invoicing_pb;
use reservoir_proto::orchestrator as pb;
use reservoir_proto::payments as payments_pb;
use reservoir_proto::wallet as wallet_pb;
use serde_json::json;
use uuid::Uuid;

use super::Source;
use crate::store::{StoredEvent, WebhookMessage};

/// "EVENT_TYPE_DEBITED" of the wallet → "wallet.debited".
fn type_name(source: Source, enum_name: &str) -> String {
    format!("{}.{}", source.name(), enum_name.trim_start_matches("EVENT_TYPE_").to_lowercase())
}

/// Every event type an endpoint can ask for.
pub fn event_types() -> Vec<String> {
    let mut names = Vec::new();
    for value in 1..64 {
        if let Ok(kind) = wallet_pb::EventType::try_from(value) {
            names.push(type_name(Source::Wallet, kind.as_str_name()));
        }
        if let Ok(kind) = payments_pb::EventType::try_from(value) {
            names.push(type_name(Source::Payments, kind.as_str_name()));
        }
        if let Ok(kind) = invoicing_pb::EventType::try_from(value) {
            names.push(type_name(Source::Invoices, kind.as_str_name()));
        }
        if let Ok(kind) = pb::EventType::try_from(value) {
            names.push(type_name(Source::TopUps, kind.as_str_name()));
        }
    }
    names.sort();
    names
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn message(
    source: Source,
    sequence: u64,
    account_id: String,
    enum_name: &str,
    occurred_at: DateTime<Utc>,
    data: serde_json::Value,
) -> WebhookMessage {
    let id = Uuid::now_v7();
    let event_type = type_name(source, enum_name);
    let body = json!({
        "id": id.to_string(),
        "type": event_type,
        // The payload's fields as Standard Webhooks recommends them (type,
        // timestamp, data), with the event's id and account beside them.
        "timestamp": rfc3339(occurred_at),
        "created_at": rfc3339(occurred_at),
        "account_id": account_id,
        "data": data,
    })
    .to_string();
    WebhookMessage { id, source: source.name(), source_sequence: sequence, account_id, event_type, occurred_at, body }
}

pub fn wallet_message(event: &wallet_pb::Event) -> WebhookMessage {
    let kind = wallet_pb::EventType::try_from(event.r#type).unwrap_or_default();
    let occurred_at = event.occurred_at.as_ref().and_then(from_timestamp).unwrap_or_else(now);
    let data = json!({
        "amount": event.amount,
        "available": event.available,
        "grant_id": event.grant_id,
        "hold_id": event.hold_id,
        "idempotency_key": event.idempotency_key,
        "correlation_id": event.correlation_id,
        "meter_code": event.meter_code,
        "threshold": event.threshold,
        "cap_percent": event.cap_percent,
        "counterparty_account_id": event.counterparty_account_id,
    });
    message(Source::Wallet, event.sequence, event.account_id.clone(), kind.as_str_name(), occurred_at, data)
}

pub fn payments_message(event: &payments_pb::Event) -> WebhookMessage {
    let kind = payments_pb::EventType::try_from(event.r#type).unwrap_or_default();
    let occurred_at = event.occurred_at.as_ref().and_then(from_timestamp).unwrap_or_else(now);
    let data = json!({
        "payment_id": event.payment_id,
        "invoice_id": event.invoice_id,
        "amount": event.amount,
        "currency": event.currency,
        "voucher_id": event.voucher_id,
        "refund_id": event.refund_id,
    });
    message(Source::Payments, event.sequence, event.account_id.clone(), kind.as_str_name(), occurred_at, data)
}

pub fn invoice_message(event: &invoicing_pb::Event) -> WebhookMessage {
    let kind = invoicing_pb::EventType::try_from(event.r#type).unwrap_or_default();
    let invoice_kind = invoicing_pb::InvoiceKind::try_from(event.kind).unwrap_or_default();
    let occurred_at = event.occurred_at.as_ref().and_then(from_timestamp).unwrap_or_else(now);
    let data = json!({
        "invoice_id": event.invoice_id,
        "kind": invoice_kind.as_str_name().trim_start_matches("INVOICE_KIND_"),
        "number": event.number,
        "total": event.total,
        "currency": event.currency,
    });
    message(Source::Invoices, event.sequence, event.account_id.clone(), kind.as_str_name(), occurred_at, data)
}

pub fn top_up_message(event: &StoredEvent) -> WebhookMessage {
    let data = json!({
        "top_up_id": event.top_up_id.map(|id| id.to_string()).unwrap_or_default(),
        "credits": event.credits,
        "reason": event.reason,
    });
    let enum_name = format!("EVENT_TYPE_{}", event.event_type);
    message(Source::TopUps, event.sequence, event.account_id.to_string(), &enum_name, event.occurred_at, data)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn event_types_name_their_source() {
        let types = event_types();
        for wanted in [
            "wallet.debited",
            "wallet.spending_cap_alert",
            "payments.payment_succeeded",
            "invoices.invoice_paid",
            "top_ups.top_up_succeeded",
            "top_ups.bonus_clawed_back",
            "wallet.transfer_held",
            "wallet.transfer_rejected",
            "payments.payment_held_for_review",
        ] {
            assert!(types.iter().any(|kind| kind == wanted), "{wanted} in {types:?}");
        }
        assert!(!types.iter().any(|kind| kind.ends_with("unspecified")));
    }
}
