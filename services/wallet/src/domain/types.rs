//! The wallet's nouns.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reservoir_common::auth::{KeyId, TenantId};
use reservoir_common::ids::typed_id;
use reservoir_common::money::Unit;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::chain::LedgerHash;

/// An account, which has exactly one wallet: the id every service names it by.
pub use reservoir_common::ids::AccountId;

typed_id!(
    /// A grant (credit block).
    GrantId
);
typed_id!(
    /// A hold (reservation).
    HoldId
);
typed_id!(
    /// A ledger entry. Entries written since the ledger was compacted have
    /// ids that name their place: the account's number and the entry's
    /// sequence, laid out as a version 8 (custom) UUID; older entries keep
    /// the random ids they were given.
    EntryId
);

/// Account numbers fit in the 60 custom bits before a UUID's variant field.
const ENTRY_NUMBER_BITS: u32 = 60;
/// Sequences fit in the 62 bits after it.
const ENTRY_SEQUENCE_BITS: u32 = 62;

impl EntryId {
    /// The id of the entry at `sequence` of the account numbered `account_number`.
    pub fn of(account_number: u64, sequence: u64) -> Self {
        let number = u128::from(account_number & ((1 << ENTRY_NUMBER_BITS) - 1));
        let sequence = u128::from(sequence & ((1 << ENTRY_SEQUENCE_BITS) - 1));
        // custom_a (48 bits) | version 8 | custom_b (12 bits) | variant 0b10 | custom_c (62 bits)
        let high = ((number >> 12) << 80) | (0x8 << 76) | ((number & 0xfff) << 64);
        let bits = high | (0b10 << 62) | sequence;
        Self(Uuid::from_u128(bits))
    }

    /// The account number and sequence an id names, for ids made by [`EntryId::of`].
    pub fn parts(&self) -> Option<(u64, u64)> {
        let bits = self.0.as_u128();
        if (bits >> 76) & 0xf != 0x8 || (bits >> 62) & 0b11 != 0b10 {
            return None;
        }
        let number = ((bits >> 80) << 12) | ((bits >> 64) & 0xfff);
        let sequence = bits & ((1 << ENTRY_SEQUENCE_BITS) - 1);
        Some((u64::try_from(number).ok()?, u64::try_from(sequence).ok()?))
    }
}
typed_id!(
    /// One mutating call; every entry it wrote shares it.
    OperationId
);

/// How far below zero a wallet may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdraft {
    /// Prepaid: never below zero.
    None,
    /// Down to minus this (positive) limit.
    CreditLimit(Decimal),
    /// Postpaid: no floor.
    Unlimited,
}

impl Overdraft {
    /// The limit as shown to clients: zero unless CREDIT_LIMIT.
    pub fn credit_limit(self) -> Decimal {
        match self {
            Self::CreditLimit(limit) => limit,
            Self::None | Self::Unlimited => Decimal::ZERO,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    /// Takes grants and refunds, no debits or holds.
    Suspended,
    /// Takes nothing; final.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GrantKind {
    Paid,
    Promotional,
    Courtesy,
}

impl GrantKind {
    /// Free credits are drawn before paid ones unless the caller says otherwise.
    pub fn default_priority(self) -> i32 {
        match self {
            Self::Promotional | Self::Courtesy => 10,
            Self::Paid => 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantSource {
    Admin,
    Invoice,
    Voucher,
    Adjustment,
    /// Credits moved from another account of the tenant.
    Transfer,
    /// What was left of an earlier grant, carried into a new period.
    Rollover,
    /// Credits given with a purchase, clawed back when it is refunded.
    Bonus,
}

/// The stored state of a grant. Whether an active grant is pending, usable
/// or already past its expiry is a question of the instant asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantStatus {
    Active,
    Expired,
    Voided,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldStatus {
    Active,
    Captured,
    Released,
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    Grant,
    Debit,
    Hold,
    Capture,
    Release,
    Expiry,
    Adjustment,
    Refund,
    TransferIn,
    TransferOut,
    Void,
    /// Credits carried from a grant into a new one at a period's turn: out
    /// of the old grant, into the new (see [`crate::domain::Rollover`]).
    Rollover,
    /// On a child account: what a debit drew from its parent's credits.
    /// It moves nothing on the child; the parent's DEBIT entries do.
    ParentDraw,
}

impl EntryKind {
    /// HOLD and RELEASE record what a hold sets aside or frees, PARENT_DRAW
    /// what a child drew on its parent; every other kind moves money.
    pub fn moves_money(self) -> bool {
        !matches!(self, Self::Hold | Self::Release | Self::ParentDraw)
    }

    /// The kind's name, as callers and the ledger's hash chain spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Grant => "GRANT",
            Self::Debit => "DEBIT",
            Self::Hold => "HOLD",
            Self::Capture => "CAPTURE",
            Self::Release => "RELEASE",
            Self::Expiry => "EXPIRY",
            Self::Adjustment => "ADJUSTMENT",
            Self::Refund => "REFUND",
            Self::TransferIn => "TRANSFER_IN",
            Self::TransferOut => "TRANSFER_OUT",
            Self::Void => "VOID",
            Self::Rollover => "ROLLOVER",
            Self::ParentDraw => "PARENT_DRAW",
        }
    }

    pub const ALL: [EntryKind; 13] = [
        Self::Grant,
        Self::Debit,
        Self::Hold,
        Self::Capture,
        Self::Release,
        Self::Expiry,
        Self::Adjustment,
        Self::Refund,
        Self::TransferIn,
        Self::TransferOut,
        Self::Void,
        Self::Rollover,
        Self::ParentDraw,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    AccountCreated,
    AccountUpdated,
    GrantCreated,
    GrantExpired,
    GrantVoided,
    Debited,
    Refunded,
    Adjusted,
    HoldCreated,
    HoldCaptured,
    HoldReleased,
    HoldExpired,
    BalanceLow,
    BalanceDepleted,
    /// The available balance fell below the account's low-balance warning.
    BalanceWarning,
    /// The month's spend reached 50, 80 or 100 percent of the spending cap.
    SpendingCapAlert,
    TransferredOut,
    TransferredIn,
    /// A transfer out was held for review by a fraud rule.
    TransferHeld,
    /// A held transfer was rejected: nothing moved.
    TransferRejected,
}

pub type Metadata = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub id: AccountId,
    /// The account's number in this wallet service, given when it is opened:
    /// part of every entry id, and what the ledger is keyed by.
    pub number: u64,
    pub tenant_id: TenantId,
    pub external_id: String,
    pub unit: Unit,
    pub overdraft: Overdraft,
    pub status: AccountStatus,
    pub low_balance_threshold: Option<Decimal>,
    /// Set when BALANCE_LOW was sent and the balance has not risen back to the threshold since.
    pub low_balance_alerted: bool,
    /// Set when BALANCE_DEPLETED was sent and the balance has not risen above zero since.
    pub depleted_alerted: bool,
    /// Set while a postpaid invoice is overdue: the overdraft may not be drawn on.
    pub credit_blocked: bool,
    /// Spending cap, transfer limits and the warning level, with what they count.
    pub spend: SpendControl,
    /// What is owed on the overdraft, zero or more.
    pub overdraft_used: Decimal,
    /// The sum of active holds.
    pub held: Decimal,
    /// The sequence number of the wallet's latest entry.
    pub last_sequence: u64,
    /// The hash of the wallet's latest entry (see [`crate::domain::chain`]);
    /// [`LedgerHash::GENESIS`] before the first.
    pub ledger_head: LedgerHash,
    /// Raised by one with every committed change of the wallet (see
    /// [`crate::domain::Wallet::take_changes`]).
    pub version: u64,
    /// The account whose credits this one draws on past its own (a shared
    /// budget, see [`crate::domain::Budget`]).
    pub parent: Option<AccountId>,
    pub metadata: Metadata,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub id: GrantId,
    pub account_id: AccountId,
    pub kind: GrantKind,
    pub source: GrantSource,
    pub source_reference: String,
    pub original: Decimal,
    pub remaining: Decimal,
    pub priority: i32,
    pub effective_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub meter_codes: Vec<String>,
    pub status: GrantStatus,
    pub metadata: Metadata,
    pub created_at: DateTime<Utc>,
    /// The sequence of the entry that created it: the age tie-break of the drawdown order.
    pub created_sequence: u64,
}

impl Grant {
    /// Whether its credits can be spent at `now`: active, effective, and not
    /// yet expired (a grant expiring at `now` no longer counts).
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.status == GrantStatus::Active && self.effective_at <= now && self.expires_at.is_none_or(|at| at > now)
    }

    pub fn is_pending(&self, now: DateTime<Utc>) -> bool {
        self.status == GrantStatus::Active && self.effective_at > now
    }

    pub fn is_past_expiry(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whether a debit of `meter_code` may draw on it.
    pub fn applies_to(&self, meter_code: Option<&str>) -> bool {
        self.meter_codes.is_empty() || meter_code.is_some_and(|code| self.meter_codes.iter().any(|m| m == code))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub id: HoldId,
    pub account_id: AccountId,
    pub amount: Decimal,
    pub captured: Decimal,
    pub status: HoldStatus,
    pub meter_code: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: EntryId,
    pub account_id: AccountId,
    pub operation_id: OperationId,
    pub sequence: u64,
    /// Its place among the entries of its operation on this account, from 0:
    /// which entries make one operation (a refund's limit is its debit's).
    pub position: u32,
    pub kind: EntryKind,
    /// Signed: what the entry adds to (or, negative, takes from) the balance.
    pub amount: Decimal,
    pub grant_id: Option<GrantId>,
    pub hold_id: Option<HoldId>,
    /// The running sum of the wallet's money-moving entries after this one.
    pub balance_after: Decimal,
    pub idempotency_key: String,
    pub correlation_id: String,
    pub meter_code: Option<String>,
    pub description: String,
    pub metadata: Metadata,
    pub refunded_entry_id: Option<EntryId>,
    pub created_at: DateTime<Utc>,
    /// The API key whose call wrote the entry; none for what time did
    /// (expiries) and for entries from before keys were recorded.
    pub key_id: Option<KeyId>,
    /// Its place in the account's hash chain; none only for an entry read
    /// back from rows written without one (a break [`crate::domain::ChainCheck`] reports).
    pub hash: Option<LedgerHash>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_type: EventType,
    pub account_id: AccountId,
    pub occurred_at: DateTime<Utc>,
    pub amount: Option<Decimal>,
    /// The available balance after the change.
    pub available: Decimal,
    pub grant_id: Option<GrantId>,
    pub hold_id: Option<HoldId>,
    pub idempotency_key: String,
    pub correlation_id: String,
    pub meter_code: Option<String>,
    pub threshold: Option<Decimal>,
    /// For a spending-cap alert, the percentage of the cap reached (50, 80, 100).
    pub cap_percent: Option<u32>,
    /// For a transfer, the other account.
    pub counterparty: Option<AccountId>,
}

/// An account's spend controls and the counters they are checked against.
/// Months and days are UTC calendar months and days.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpendControl {
    /// Debits and captures in a month may not take the month's spend past this.
    pub monthly_cap: Option<Decimal>,
    /// BALANCE_WARNING once each time the available balance falls below this.
    pub low_balance_warning: Option<Decimal>,
    /// Set when BALANCE_WARNING was sent and the balance has not risen back since.
    pub low_balance_warned: bool,
    /// The largest single transfer out of the account.
    pub transfer_max: Option<Decimal>,
    /// The most the account may transfer out in a day.
    pub transfer_daily_limit: Option<Decimal>,
    /// The month `month_spend` counts ("2026-12"); empty before any spend.
    pub month: String,
    /// Debits and captures of `month`, less refunds of them.
    pub month_spend: Decimal,
    /// The highest cap alert (0, 50, 80, 100) sent for `month` and not re-armed since.
    pub cap_alerted_percent: u32,
    /// The day `transferred_today` counts ("2026-12-03"); empty before any transfer.
    pub day: String,
    pub transferred_today: Decimal,
}

/// Spending-cap alerts fire as the month's spend reaches these percentages of the cap.
pub const CAP_ALERT_PERCENTS: [u32; 3] = [50, 80, 100];

/// The month an instant falls in, as stored: "2026-12".
pub fn month_key(at: DateTime<Utc>) -> String {
    at.format("%Y-%m").to_string()
}

/// The day an instant falls in, as stored: "2026-12-03".
pub fn day_key(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

/// The month's spend so far and where it is heading.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendView {
    pub cap: Option<Decimal>,
    pub spent: Decimal,
    /// The spend at month end if the rate so far holds, at the unit's scale.
    pub projected: Decimal,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// What may still be debited this month; `None` without a cap.
    pub remaining: Option<Decimal>,
    /// The highest cap alert sent this month.
    pub alerted_percent: u32,
}

/// A wallet's balance at an instant.
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceView {
    /// total - held.
    pub available: Decimal,
    pub held: Decimal,
    /// Usable credits less the overdraft used.
    pub total: Decimal,
    pub credit_limit: Decimal,
    pub overdraft_used: Decimal,
    pub paid: Decimal,
    pub promotional: Decimal,
    pub courtesy: Decimal,
    /// Credits of grants not yet effective.
    pub pending: Decimal,
    pub next_expiry_at: Option<DateTime<Utc>>,
    /// What a debit could take now; `None` when there is no floor.
    pub spendable: Option<Decimal>,
}

/// Why an operation was refused. Each maps to one gRPC code and reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("the credit limit is blocked until an overdue invoice is paid")]
    CreditBlocked,
    #[error("the account is suspended")]
    AccountSuspended,
    #[error("the account is closed")]
    AccountClosed,
    #[error("the hold is {0}")]
    HoldNotActive(&'static str),
    #[error("the hold has expired")]
    HoldExpired,
    #[error("the capture is larger than the held amount")]
    CaptureExceedsHold,
    #[error("the refund is larger than what is left to refund of the debit")]
    RefundExceedsDebit,
    #[error("only DEBIT and CAPTURE entries can be refunded")]
    EntryNotRefundable,
    #[error("the grant is {0}")]
    GrantNotActive(&'static str),
    #[error("the balance would leave the supported range")]
    BalanceOutOfRange,
    #[error("the monthly spending cap would be exceeded")]
    SpendingCapReached,
    #[error("the transfer is over the account's {0} transfer limit")]
    TransferLimitExceeded(&'static str),
    #[error("the accounts have different units")]
    UnitMismatch,
    #[error("the draw would take the account past its budget on its parent for the period")]
    BudgetExceeded,
    #[error("an account is either a parent or a child, not both")]
    BudgetNested,
    #[error("the transfer matched the fraud rule {0}")]
    FraudSuspected(&'static str),
    #[error("the review was decided already")]
    ReviewDecided,
    /// A command for one wallet met a child account, whose draws take its
    /// parent's wallet too: the caller sends it the shared way instead.
    #[error("the account draws on its parent's credits")]
    DrawsOnParent,
    /// Only a bug can cause this: the store did not load what the operation needs.
    #[error("inconsistent wallet state: {0}")]
    Inconsistent(&'static str),
}

pub type DomainResult<T> = Result<T, DomainError>;

/// What the caller passes with every mutating operation; every entry and
/// event it writes carries these.
#[derive(Debug, Clone)]
pub struct OperationContext {
    pub operation_id: OperationId,
    pub now: DateTime<Utc>,
    pub idempotency_key: String,
    pub correlation_id: String,
    pub description: String,
    pub metadata: Metadata,
    /// The API key the call was made with, recorded on every entry.
    pub key_id: Option<KeyId>,
}

impl OperationContext {
    pub fn new(now: DateTime<Utc>, idempotency_key: impl Into<String>) -> Self {
        Self {
            operation_id: OperationId::generate(),
            now,
            idempotency_key: idempotency_key.into(),
            correlation_id: String::new(),
            description: String::new(),
            metadata: Metadata::new(),
            key_id: None,
        }
    }

    /// The same context, made with `key`.
    pub fn with_key(mut self, key: Option<KeyId>) -> Self {
        self.key_id = key;
        self
    }
}

impl OperationContext {
    /// The context of the expiries an operation writes off first: they are
    /// their own operation, caused by time rather than by the call.
    pub fn for_expiry(&self) -> Self {
        Self {
            operation_id: OperationId::generate(),
            now: self.now,
            idempotency_key: String::new(),
            correlation_id: String::new(),
            description: String::new(),
            metadata: Metadata::new(),
            key_id: None,
        }
    }
}

/// A grant to add.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub amount: Decimal,
    pub kind: GrantKind,
    pub priority: Option<i32>,
    pub effective_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub meter_codes: Vec<String>,
    pub source: GrantSource,
    pub source_reference: String,
    pub metadata: Metadata,
}

/// What to carry over from the previous period's grant when a new period's
/// credits are granted: what is left of it, up to `max`, into a grant of its
/// own expiring at `expires_at`; the rest expires at the turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollover {
    pub from: GrantId,
    pub max: RolloverMax,
    pub expires_at: Option<DateTime<Utc>>,
}

/// How much of what is left a rollover may carry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RolloverMax {
    All,
    Amount(Decimal),
    /// A share (1 to 100) of what the grant granted, rounded down to the unit's scale.
    Percent(u32),
}

/// A new account's settings.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub tenant_id: TenantId,
    pub external_id: String,
    pub unit: Unit,
    pub overdraft: Overdraft,
    pub low_balance_threshold: Option<Decimal>,
    pub metadata: Metadata,
}

/// Changes to an account; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default)]
pub struct AccountUpdate {
    pub status: Option<AccountStatus>,
    pub overdraft: Option<Overdraft>,
    /// `Some(None)` clears the threshold.
    pub low_balance_threshold: Option<Option<Decimal>>,
    pub credit_blocked: Option<bool>,
    /// `Some(None)` removes the cap.
    pub monthly_cap: Option<Option<Decimal>>,
    pub low_balance_warning: Option<Option<Decimal>>,
    pub transfer_max: Option<Option<Decimal>>,
    pub transfer_daily_limit: Option<Option<Decimal>>,
}

/// What a usage draw did: per amount, in order, `None` when charged or the
/// reason it was not; and the total charged.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageDrawn {
    pub outcomes: Vec<Option<DomainError>>,
    pub charged: Decimal,
}
