//! Stored and domain values → wire messages.

use reservoir_common::time::to_timestamp;
use reservoir_proto::payments as pb;
use rust_decimal::Decimal;

use crate::domain::{AttemptOutcome, EventType, MethodKind, PaymentStatus};
use crate::store::{AttemptRow, EventRow, PaymentMethodRow, PaymentRecord, RefundRow, VoucherRow};

/// Amounts on the wire: decimal strings without trailing zeros.
pub fn decimal(value: Decimal) -> String {
    value.normalize().to_string()
}

fn id_or_empty(id: Option<impl std::fmt::Display>) -> String {
    id.map(|id| id.to_string()).unwrap_or_default()
}

pub fn method_kind_to_pb(kind: MethodKind) -> pb::PaymentMethodKind {
    match kind {
        MethodKind::Card => pb::PaymentMethodKind::Card,
        MethodKind::BankTransfer => pb::PaymentMethodKind::BankTransfer,
        MethodKind::MobileWallet => pb::PaymentMethodKind::MobileWallet,
    }
}

pub fn method_kind_from_pb(kind: i32) -> Option<MethodKind> {
    match pb::PaymentMethodKind::try_from(kind).ok()? {
        pb::PaymentMethodKind::Card => Some(MethodKind::Card),
        pb::PaymentMethodKind::BankTransfer => Some(MethodKind::BankTransfer),
        pb::PaymentMethodKind::MobileWallet => Some(MethodKind::MobileWallet),
        pb::PaymentMethodKind::Unspecified => None,
    }
}

pub fn status_to_pb(status: PaymentStatus) -> pb::PaymentStatus {
    match status {
        PaymentStatus::Processing => pb::PaymentStatus::Processing,
        PaymentStatus::Succeeded => pb::PaymentStatus::Succeeded,
        PaymentStatus::Declined => pb::PaymentStatus::Declined,
        PaymentStatus::Pending => pb::PaymentStatus::Pending,
        PaymentStatus::Failed => pb::PaymentStatus::Failed,
    }
}

/// A status as a filter: `None` for UNSPECIFIED, which matches every status.
pub fn status_from_pb(status: pb::PaymentStatus) -> Option<PaymentStatus> {
    match status {
        pb::PaymentStatus::Unspecified => None,
        pb::PaymentStatus::Processing => Some(PaymentStatus::Processing),
        pb::PaymentStatus::Succeeded => Some(PaymentStatus::Succeeded),
        pb::PaymentStatus::Declined => Some(PaymentStatus::Declined),
        pb::PaymentStatus::Pending => Some(PaymentStatus::Pending),
        pb::PaymentStatus::Failed => Some(PaymentStatus::Failed),
    }
}

fn outcome_to_pb(outcome: AttemptOutcome) -> pb::AttemptOutcome {
    match outcome {
        AttemptOutcome::Succeeded => pb::AttemptOutcome::Succeeded,
        AttemptOutcome::Declined => pb::AttemptOutcome::Declined,
        AttemptOutcome::Pending => pb::AttemptOutcome::Pending,
        AttemptOutcome::Failed => pb::AttemptOutcome::Failed,
        AttemptOutcome::TimedOut => pb::AttemptOutcome::TimedOut,
    }
}

fn event_type_to_pb(event_type: EventType) -> pb::EventType {
    match event_type {
        EventType::PaymentSucceeded => pb::EventType::PaymentSucceeded,
        EventType::PaymentDeclined => pb::EventType::PaymentDeclined,
        EventType::PaymentPending => pb::EventType::PaymentPending,
        EventType::PaymentConfirmed => pb::EventType::PaymentConfirmed,
        EventType::PaymentFailed => pb::EventType::PaymentFailed,
        EventType::PaymentRefunded => pb::EventType::PaymentRefunded,
        EventType::VoucherRedeemed => pb::EventType::VoucherRedeemed,
        EventType::PaymentHeldForReview => pb::EventType::PaymentHeldForReview,
    }
}

pub fn method_to_pb(method: &PaymentMethodRow) -> pb::PaymentMethod {
    pb::PaymentMethod {
        id: method.id.to_string(),
        account_id: method.account_id.to_string(),
        kind: method_kind_to_pb(method.kind).into(),
        gateway_token: method.gateway_token.clone(),
        label: method.label.clone(),
        created_at: Some(to_timestamp(method.created_at)),
    }
}

fn attempt_to_pb(attempt: &AttemptRow) -> pb::PaymentAttempt {
    pb::PaymentAttempt {
        number: attempt.number,
        outcome: outcome_to_pb(attempt.outcome).into(),
        gateway_reference: attempt.gateway_reference.clone(),
        code: attempt.code.clone(),
        attempted_at: Some(to_timestamp(attempt.attempted_at)),
    }
}

pub fn refund_to_pb(refund: &RefundRow) -> pb::PaymentRefund {
    pb::PaymentRefund {
        id: refund.id.to_string(),
        amount: decimal(refund.amount),
        reason: refund.reason.clone(),
        gateway_reference: refund.gateway_reference.clone(),
        created_at: Some(to_timestamp(refund.created_at)),
    }
}

/// A payment as clients see it. Its refunded amount is the sum of the
/// refunds it lists, the succeeded ones; a gateway refund still in flight
/// counts against the payment in the store but is not shown until done.
pub fn payment_to_pb(record: &PaymentRecord) -> pb::Payment {
    let payment = &record.payment;
    let refunded: Decimal = record.refunds.iter().map(|refund| refund.amount).sum();
    pb::Payment {
        id: payment.id.to_string(),
        account_id: payment.account_id.to_string(),
        invoice_id: payment.invoice_id.to_string(),
        payment_method_id: id_or_empty(payment.payment_method_id),
        amount: decimal(payment.amount),
        currency: payment.currency.clone(),
        status: status_to_pb(payment.status).into(),
        idempotency_key: payment.idempotency_key.clone(),
        gateway_reference: payment.gateway_reference.clone(),
        external_transaction_id: payment.external_transaction_id.clone(),
        failure_code: payment.failure_code.clone(),
        refunded_amount: decimal(refunded),
        attempts: record.attempts.iter().map(attempt_to_pb).collect(),
        refunds: record.refunds.iter().map(refund_to_pb).collect(),
        created_at: Some(to_timestamp(payment.created_at)),
        updated_at: Some(to_timestamp(payment.updated_at)),
        metadata: payment.metadata.clone(),
    }
}

pub fn voucher_to_pb(voucher: &VoucherRow) -> pb::Voucher {
    pb::Voucher {
        id: voucher.id.to_string(),
        batch_id: voucher.batch_id.to_string(),
        value: decimal(voucher.value),
        unit_code: voucher.unit_code.clone(),
        expires_at: voucher.expires_at.map(to_timestamp),
        redeemed_by_account_id: id_or_empty(voucher.redeemed_by),
        redeemed_at: voucher.redeemed_at.map(to_timestamp),
        created_at: Some(to_timestamp(voucher.created_at)),
    }
}

pub fn event_to_pb(event: &EventRow) -> pb::Event {
    pb::Event {
        sequence: event.sequence,
        r#type: event_type_to_pb(event.event_type).into(),
        account_id: event.account_id.to_string(),
        payment_id: id_or_empty(event.payment_id),
        invoice_id: id_or_empty(event.invoice_id),
        amount: decimal(event.amount),
        currency: event.currency.clone(),
        voucher_id: id_or_empty(event.voucher_id),
        refund_id: id_or_empty(event.refund_id),
        occurred_at: Some(to_timestamp(event.occurred_at)),
    }
}
