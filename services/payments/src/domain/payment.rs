//! How a payment moves: the statuses, what each gateway answer makes of it,
//! when a retried charge calls the gateway again, when it may be confirmed,
//! and how much of it may be refunded.

use reservoir_common::ids::AccountId;
use rust_decimal::Decimal;

use super::Refusal;

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    /// Created, and the gateway is being asked (or a crash interrupted the asking).
    Processing,
    Succeeded,
    /// Refused by the gateway or the issuer; final.
    Declined,
    /// Waiting for the money; ConfirmPayment settles it.
    Pending,
    /// The gateway failed transiently or did not answer in time.
    Failed,
}

impl PaymentStatus {
    pub const ALL: [Self; 5] = [Self::Processing, Self::Succeeded, Self::Declined, Self::Pending, Self::Failed];

    pub fn name(self) -> &'static str {
        match self {
            Self::Processing => "PROCESSING",
            Self::Succeeded => "SUCCEEDED",
            Self::Declined => "DECLINED",
            Self::Pending => "PENDING",
            Self::Failed => "FAILED",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.name() == name)
    }

    /// Whether a payment in this status may move to `next`. A failed payment
    /// may fail again: each retry is another attempt.
    pub fn can_become(self, next: Self) -> bool {
        match self {
            Self::Processing | Self::Failed => {
                matches!(next, Self::Succeeded | Self::Declined | Self::Pending | Self::Failed)
            }
            Self::Pending => next == Self::Succeeded,
            Self::Succeeded | Self::Declined => false,
        }
    }
}

/// What one call to the gateway answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    Succeeded,
    Declined,
    Pending,
    Failed,
    TimedOut,
}

impl AttemptOutcome {
    pub const ALL: [Self; 5] = [Self::Succeeded, Self::Declined, Self::Pending, Self::Failed, Self::TimedOut];

    pub fn name(self) -> &'static str {
        match self {
            Self::Succeeded => "SUCCEEDED",
            Self::Declined => "DECLINED",
            Self::Pending => "PENDING",
            Self::Failed => "FAILED",
            Self::TimedOut => "TIMED_OUT",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|outcome| outcome.name() == name)
    }

    /// The status an attempt with this outcome leaves its payment in. A
    /// timeout may have charged or not; the payment is FAILED, and a retry
    /// with the same key asks the gateway again, which answers with the
    /// charge it made, if any.
    pub fn status(self) -> PaymentStatus {
        match self {
            Self::Succeeded => PaymentStatus::Succeeded,
            Self::Declined => PaymentStatus::Declined,
            Self::Pending => PaymentStatus::Pending,
            Self::Failed | Self::TimedOut => PaymentStatus::Failed,
        }
    }
}

/// How the money of a payment moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Through the gateway, with a method's token.
    Gateway,
    /// Outside it: a bank transfer or a reconcile-later payment, confirmed
    /// by an operator and refunded by hand.
    Manual,
}

impl Channel {
    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "GATEWAY",
            Self::Manual => "MANUAL",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Gateway, Self::Manual].into_iter().find(|channel| channel.name() == name)
    }
}

/// What a payment method is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodKind {
    Card,
    BankTransfer,
    MobileWallet,
}

impl MethodKind {
    pub const ALL: [Self; 3] = [Self::Card, Self::BankTransfer, Self::MobileWallet];

    pub fn name(self) -> &'static str {
        match self {
            Self::Card => "CARD",
            Self::BankTransfer => "BANK_TRANSFER",
            Self::MobileWallet => "MOBILE_WALLET",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Cards and mobile wallets are charged through the gateway with their
    /// token; a bank transfer arrives on its own and is confirmed later.
    pub fn channel(self) -> Channel {
        match self {
            Self::Card | Self::MobileWallet => Channel::Gateway,
            Self::BankTransfer => Channel::Manual,
        }
    }

    /// Whether a method of this kind needs a gateway token.
    pub fn needs_token(self) -> bool {
        self.channel() == Channel::Gateway
    }
}

/// The status a new payment starts in: a gateway payment is PROCESSING
/// until the gateway answers; a manual one waits for its money at once.
pub fn initial_status(channel: Channel) -> PaymentStatus {
    match channel {
        Channel::Gateway => PaymentStatus::Processing,
        Channel::Manual => PaymentStatus::Pending,
    }
}

/// What a Charge does with a payment that exists under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeStep {
    /// Answer the payment as it is: the gateway has spoken, or the money is awaited.
    Answer,
    /// Ask the gateway (again): the last attempt failed, or a crash cut it short.
    Attempt,
}

pub fn charge_step(status: PaymentStatus) -> ChargeStep {
    match status {
        PaymentStatus::Succeeded | PaymentStatus::Declined | PaymentStatus::Pending => ChargeStep::Answer,
        PaymentStatus::Processing | PaymentStatus::Failed => ChargeStep::Attempt,
    }
}

/// What ConfirmPayment does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// PENDING becomes SUCCEEDED with the external transaction id.
    Confirm,
    /// Confirmed before with the same id: answered as it is.
    Unchanged,
}

/// Whether a payment may be confirmed with `external_id`, given the id it
/// was confirmed with (empty when none).
pub fn confirmation(status: PaymentStatus, confirmed_id: &str, external_id: &str) -> Result<Confirmation, Refusal> {
    match status {
        PaymentStatus::Pending => Ok(Confirmation::Confirm),
        PaymentStatus::Succeeded if confirmed_id == external_id => Ok(Confirmation::Unchanged),
        PaymentStatus::Succeeded => Err(Refusal::AlreadyConfirmed),
        PaymentStatus::Processing | PaymentStatus::Declined | PaymentStatus::Failed => Err(Refusal::PaymentNotPending),
    }
}

/// How much a refund returns: `requested`, or everything not refunded yet
/// when it is `None`, never more than `captured` less `refunded` (which
/// counts refunds in flight, so two refunds never both take the same rest).
pub fn refund_amount(
    status: PaymentStatus,
    captured: Decimal,
    refunded: Decimal,
    requested: Option<Decimal>,
) -> Result<Decimal, Refusal> {
    if status != PaymentStatus::Succeeded {
        return Err(Refusal::PaymentNotRefundable);
    }
    let rest = captured.checked_sub(refunded).filter(|rest| !rest.is_sign_negative()).unwrap_or(Decimal::ZERO);
    let amount = requested.unwrap_or(rest);
    if amount.is_zero() || amount > rest {
        return Err(Refusal::RefundExceedsCaptured);
    }
    Ok(amount)
}

/// Whether a refund goes back through the gateway: only for money the
/// gateway captured. A payment confirmed with an external transaction id
/// was settled outside it (even one the gateway had left pending), so its
/// refund is recorded as a manual one.
pub fn refunds_through_gateway(channel: Channel, gateway_reference: &str, external_transaction_id: &str) -> bool {
    channel == Channel::Gateway && !gateway_reference.is_empty() && external_transaction_id.is_empty()
}

/// Where a refund stands. A gateway refund is PROCESSING while the gateway
/// is asked; its amount already counts against the payment meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    Processing,
    Succeeded,
    Declined,
}

impl RefundStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Processing => "PROCESSING",
            Self::Succeeded => "SUCCEEDED",
            Self::Declined => "DECLINED",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Processing, Self::Succeeded, Self::Declined].into_iter().find(|status| status.name() == name)
    }
}

/// What the outbox tells consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    PaymentSucceeded,
    PaymentDeclined,
    PaymentPending,
    PaymentConfirmed,
    PaymentFailed,
    PaymentRefunded,
    VoucherRedeemed,
    /// A charge matched a fraud rule and waits for an operator.
    PaymentHeldForReview,
}

impl EventType {
    pub const ALL: [Self; 8] = [
        Self::PaymentSucceeded,
        Self::PaymentDeclined,
        Self::PaymentPending,
        Self::PaymentConfirmed,
        Self::PaymentFailed,
        Self::PaymentRefunded,
        Self::VoucherRedeemed,
        Self::PaymentHeldForReview,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::PaymentSucceeded => "PAYMENT_SUCCEEDED",
            Self::PaymentDeclined => "PAYMENT_DECLINED",
            Self::PaymentPending => "PAYMENT_PENDING",
            Self::PaymentConfirmed => "PAYMENT_CONFIRMED",
            Self::PaymentFailed => "PAYMENT_FAILED",
            Self::PaymentRefunded => "PAYMENT_REFUNDED",
            Self::VoucherRedeemed => "VOUCHER_REDEEMED",
            Self::PaymentHeldForReview => "PAYMENT_HELD_FOR_REVIEW",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.name() == name)
    }

    /// The event a payment's move into `status` is announced with; none for
    /// PROCESSING, which is never moved into.
    pub fn of_status(status: PaymentStatus) -> Option<Self> {
        match status {
            PaymentStatus::Succeeded => Some(Self::PaymentSucceeded),
            PaymentStatus::Declined => Some(Self::PaymentDeclined),
            PaymentStatus::Pending => Some(Self::PaymentPending),
            PaymentStatus::Failed => Some(Self::PaymentFailed),
            PaymentStatus::Processing => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_names_round_trip() {
        for status in PaymentStatus::ALL {
            assert_eq!(PaymentStatus::from_name(status.name()), Some(status));
        }
        for outcome in AttemptOutcome::ALL {
            assert_eq!(AttemptOutcome::from_name(outcome.name()), Some(outcome));
        }
        for event in EventType::ALL {
            assert_eq!(EventType::from_name(event.name()), Some(event));
        }
        assert_eq!(PaymentStatus::from_name("REFUNDED"), None);
    }

    #[test]
    fn only_processing_failed_and_pending_payments_move() {
        use PaymentStatus::*;
        assert!(Processing.can_become(Succeeded));
        assert!(Processing.can_become(Failed));
        assert!(Failed.can_become(Failed), "another failed attempt");
        assert!(Failed.can_become(Succeeded));
        assert!(Pending.can_become(Succeeded), "a confirmation");
        assert!(!Pending.can_become(Failed));
        assert!(!Pending.can_become(Declined));
        for next in PaymentStatus::ALL {
            assert!(!Succeeded.can_become(next), "SUCCEEDED is final");
            assert!(!Declined.can_become(next), "DECLINED is final");
            assert!(!next.can_become(Processing), "nothing goes back to PROCESSING");
        }
    }

    #[test]
    fn every_attempt_outcome_leads_to_a_status_its_payment_may_take() {
        for outcome in AttemptOutcome::ALL {
            assert!(PaymentStatus::Processing.can_become(outcome.status()));
            assert!(PaymentStatus::Failed.can_become(outcome.status()));
        }
        assert_eq!(AttemptOutcome::TimedOut.status(), PaymentStatus::Failed);
    }

    #[test]
    fn a_retried_charge_calls_the_gateway_only_when_unsettled() {
        assert_eq!(charge_step(PaymentStatus::Failed), ChargeStep::Attempt);
        assert_eq!(charge_step(PaymentStatus::Processing), ChargeStep::Attempt);
        assert_eq!(charge_step(PaymentStatus::Succeeded), ChargeStep::Answer);
        assert_eq!(charge_step(PaymentStatus::Declined), ChargeStep::Answer);
        assert_eq!(charge_step(PaymentStatus::Pending), ChargeStep::Answer);
        assert_eq!(initial_status(Channel::Manual), PaymentStatus::Pending);
        assert_eq!(initial_status(Channel::Gateway), PaymentStatus::Processing);
    }

    #[test]
    fn a_pending_payment_is_confirmed_once() {
        assert_eq!(confirmation(PaymentStatus::Pending, "", "tx-1"), Ok(Confirmation::Confirm));
        assert_eq!(confirmation(PaymentStatus::Succeeded, "tx-1", "tx-1"), Ok(Confirmation::Unchanged));
        assert_eq!(confirmation(PaymentStatus::Succeeded, "tx-1", "tx-2"), Err(Refusal::AlreadyConfirmed));
        assert_eq!(confirmation(PaymentStatus::Succeeded, "", "tx-2"), Err(Refusal::AlreadyConfirmed));
        for status in [PaymentStatus::Processing, PaymentStatus::Declined, PaymentStatus::Failed] {
            assert_eq!(confirmation(status, "", "tx-1"), Err(Refusal::PaymentNotPending));
        }
    }

    #[test]
    fn a_refund_takes_at_most_the_rest() {
        let ten = Decimal::from(10);
        let four = Decimal::from(4);
        assert_eq!(refund_amount(PaymentStatus::Succeeded, ten, Decimal::ZERO, Some(four)), Ok(four));
        assert_eq!(refund_amount(PaymentStatus::Succeeded, ten, four, None), Ok(Decimal::from(6)));
        assert_eq!(
            refund_amount(PaymentStatus::Succeeded, ten, four, Some(Decimal::from(7))),
            Err(Refusal::RefundExceedsCaptured)
        );
        assert_eq!(refund_amount(PaymentStatus::Succeeded, ten, ten, None), Err(Refusal::RefundExceedsCaptured));
        for status in [PaymentStatus::Declined, PaymentStatus::Pending, PaymentStatus::Failed] {
            assert_eq!(refund_amount(status, ten, Decimal::ZERO, None), Err(Refusal::PaymentNotRefundable));
        }
    }

    #[test]
    fn only_money_the_gateway_captured_is_refunded_through_it() {
        assert!(refunds_through_gateway(Channel::Gateway, "ch_1", ""));
        assert!(!refunds_through_gateway(Channel::Gateway, "ch_1", "bank-42"), "confirmed by hand");
        assert!(!refunds_through_gateway(Channel::Manual, "", "bank-42"));
        assert!(MethodKind::Card.needs_token());
        assert!(!MethodKind::BankTransfer.needs_token());
    }
}

/// What a charge needs to know of the invoice it pays, as invoicing tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceFacts {
    pub account_id: AccountId,
    /// ISO-4217.
    pub currency: String,
    /// OPEN, or UNCOLLECTIBLE (which may still be paid).
    pub payable: bool,
    pub amount_due: Decimal,
}

/// Whether a new charge of `amount` in `currency` on `account_id` may pay
/// `invoice`: same account and currency, an invoice open for payment, and
/// no more than it still asks for.
pub fn check_invoice(
    invoice: &InvoiceFacts,
    account_id: AccountId,
    currency: &str,
    amount: Decimal,
) -> Result<(), Refusal> {
    if invoice.account_id != account_id || !invoice.currency.eq_ignore_ascii_case(currency) {
        return Err(Refusal::InvoiceMismatch);
    }
    if !invoice.payable {
        return Err(Refusal::InvoiceNotPayable);
    }
    if amount > invoice.amount_due {
        return Err(Refusal::ChargeExceedsAmountDue);
    }
    Ok(())
}

#[cfg(test)]
mod invoice_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_charge_pays_only_its_own_open_invoice_up_to_what_is_due() {
        let account = AccountId::generate();
        let invoice = InvoiceFacts {
            account_id: account,
            currency: "USD".into(),
            payable: true,
            amount_due: "20".parse().unwrap(),
        };
        let twenty: Decimal = "20".parse().unwrap();
        assert_eq!(check_invoice(&invoice, account, "USD", twenty), Ok(()));
        assert_eq!(check_invoice(&invoice, account, "USD", "5".parse().unwrap()), Ok(()), "a part of it");
        assert_eq!(
            check_invoice(&invoice, account, "USD", "20.01".parse().unwrap()),
            Err(Refusal::ChargeExceedsAmountDue)
        );
        assert_eq!(check_invoice(&invoice, AccountId::generate(), "USD", twenty), Err(Refusal::InvoiceMismatch));
        assert_eq!(check_invoice(&invoice, account, "EUR", twenty), Err(Refusal::InvoiceMismatch));
        let paid = InvoiceFacts { payable: false, amount_due: Decimal::ZERO, ..invoice };
        assert_eq!(check_invoice(&paid, account, "USD", twenty), Err(Refusal::InvoiceNotPayable));
    }
}
