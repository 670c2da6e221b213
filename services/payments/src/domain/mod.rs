//! Payments' rules, without I/O: which amounts a currency accepts, how a
//! payment moves between statuses, what a refund may return, and how voucher
//! codes are made, checked and guarded against guessing.

pub mod fraud;
mod money;
mod payment;
mod voucher;

pub use money::*;
pub use payment::*;
pub use voucher::*;

/// A request the rules refuse; the caller acts on which one it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the payment is not pending")]
    PaymentNotPending,
    #[error("only a succeeded payment can be refunded")]
    PaymentNotRefundable,
    #[error("the refund is more than what was captured and not refunded yet")]
    RefundExceedsCaptured,
    #[error("the payment method belongs to another account")]
    PaymentMethodMismatch,
    #[error("the account has as many payment methods as it may have")]
    PaymentMethodLimit,
    #[error("the payment was confirmed with another external transaction id")]
    AlreadyConfirmed,
    #[error("the gateway refused the refund ({code})")]
    RefundDeclined { code: String },
    #[error("the voucher was redeemed already")]
    VoucherAlreadyRedeemed,
    #[error("the voucher has expired")]
    VoucherExpired,
    #[error("the voucher is in another unit than the account")]
    VoucherUnitMismatch,
    #[error("the invoice is for another account or in another currency than the charge")]
    InvoiceMismatch,
    #[error("the invoice is not open for payment (a draft, paid or void)")]
    InvoiceNotPayable,
    #[error("the charge is more than the invoice's amount due")]
    ChargeExceedsAmountDue,
    #[error("the charge matched the fraud rule {0}")]
    FraudSuspected(&'static str),
    #[error("the payment is held for review")]
    PaymentHeldForReview,
    #[error("the payment is not held for review")]
    PaymentNotHeld,
}
