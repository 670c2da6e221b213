//! Payments' one error type and its one mapping to gRPC statuses.

use reservoir_common::db::replay::ReplayFailure;
use reservoir_common::db::{Failure, classify};
use reservoir_common::error::Cause;
use reservoir_common::status::FieldViolation;
use reservoir_common::validate::InvalidRequest;
use sea_orm::DbErr;

use crate::domain::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// No voucher has the code; the try counts against the account.
    #[error("no voucher has this code")]
    VoucherNotFound,
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReused,
    /// A refusal by the rules, which the client acts on by its reason.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Too many unknown voucher codes from one account lately.
    #[error("too many unknown voucher codes; try again later")]
    VoucherAttemptsExceeded,
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database or the gateway cannot be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(Cause),
}

impl PaymentsError {
    /// An internal failure, remembered with the line that called this.
    #[track_caller]
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(Cause::new(message))
    }

    pub fn field(field: &str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

/// The ErrorInfo reason of each refusal.
pub(crate) fn reason(refusal: &Refusal) -> &'static str {
    match refusal {
        Refusal::PaymentNotPending => "PAYMENT_NOT_PENDING",
        Refusal::PaymentNotRefundable => "PAYMENT_NOT_REFUNDABLE",
        Refusal::RefundExceedsCaptured => "REFUND_EXCEEDS_CAPTURED",
        Refusal::PaymentMethodMismatch => "PAYMENT_METHOD_MISMATCH",
        Refusal::PaymentMethodLimit => "PAYMENT_METHOD_LIMIT",
        Refusal::AlreadyConfirmed => "ALREADY_CONFIRMED",
        Refusal::RefundDeclined { .. } => "REFUND_DECLINED",
        Refusal::VoucherAlreadyRedeemed => "VOUCHER_ALREADY_REDEEMED",
        Refusal::VoucherExpired => "VOUCHER_EXPIRED",
        Refusal::VoucherUnitMismatch => "VOUCHER_UNIT_MISMATCH",
        Refusal::InvoiceMismatch => "INVOICE_MISMATCH",
        Refusal::InvoiceNotPayable => "INVOICE_NOT_PAYABLE",
        Refusal::ChargeExceedsAmountDue => "CHARGE_EXCEEDS_AMOUNT_DUE",
        Refusal::FraudSuspected(_) => "FRAUD_SUSPECTED",
        Refusal::PaymentHeldForReview => "PAYMENT_HELD_FOR_REVIEW",
        Refusal::PaymentNotHeld => "PAYMENT_NOT_HELD",
    }
}

impl From<InvalidRequest> for PaymentsError {
    fn from(invalid: InvalidRequest) -> Self {
        Self::InvalidArgument(invalid.0)
    }
}

impl From<ReplayFailure> for PaymentsError {
    #[track_caller]
    fn from(failure: ReplayFailure) -> Self {
        match failure {
            ReplayFailure::KeyReused => Self::IdempotencyKeyReused,
            ReplayFailure::Unreadable(message) => Self::internal(message),
            ReplayFailure::Database(error) => Self::from(error),
        }
    }
}

impl From<DbErr> for PaymentsError {
    #[track_caller]
    fn from(error: DbErr) -> Self {
        match classify(&error) {
            Failure::Conflict => Self::Conflict(error.to_string()),
            Failure::Unavailable => Self::Unavailable(error.to_string()),
            Failure::Internal => Self::internal(error.to_string()),
        }
    }
}
