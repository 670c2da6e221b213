//! The orchestrator's rules, without I/O: the steps of a top-up and what
//! follows each outcome, how long to wait before a retry, how much an
//! automatic top-up adds and whether its limits allow it, and when a
//! recurring top-up fires next; `rollover` what a recurring top-up carries
//! from one period into the next; `bonus` the credits given with a purchase
//! and what its refunds take back. `signature` signs webhooks.

mod bonus;
mod rollover;
pub mod signature;

pub use bonus::{Bonus, BonusAsked, Clawback, clawback_asked};
pub use rollover::{Carry, GrantRollover, PeriodRollover, RolloverPolicy};

use chrono::{DateTime, Datelike, Duration, Months, TimeZone, Utc};
use rust_decimal::Decimal;

#[cfg(test)]
mod tests;

/// Why a voucher redemption failed before the voucher was found, read from
/// the reason its top-up recorded: payments' reason, or the code it
/// answered with when it gave none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoucherRefusal {
    /// No voucher has the code (NOT_FOUND).
    NotFound,
    /// Too many wrong codes from the account lately (RESOURCE_EXHAUSTED).
    AttemptsExceeded,
    /// The code is not a voucher code at all (INVALID_ARGUMENT on `code`).
    MalformedCode,
    /// Any other refusal, by its reason (VOUCHER_EXPIRED…).
    Other(String),
}

impl VoucherRefusal {
    pub fn of_reason(reason: &str) -> Self {
        match reason {
            "VOUCHER_NOT_FOUND" => Self::NotFound,
            "VOUCHER_ATTEMPTS_EXCEEDED" => Self::AttemptsExceeded,
            "INVALID_ARGUMENT" => Self::MalformedCode,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// How long a follower uses the endpoints it read before reading them again.
/// An endpoint gets the events from this long after it was created on, so
/// every follower knows it by then.
pub const ENDPOINTS_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// Declined automatic charges in a row after which auto-replenish pauses
/// itself: a card that keeps failing must not be charged forever.
pub const DECLINES_BEFORE_PAUSE: u32 = 3;
/// Attempts at a charge that fails transiently before the top-up gives up
/// (and voids its invoice): about a minute and a half of backoff.
pub const CHARGE_ATTEMPTS_MAX: u32 = 6;
/// Attempts at any other step (a grant, an invoicing call) before the top-up
/// asks for a person, by default: about two minutes of backoff, longer than
/// a service's restart. It keeps trying after that, at the longest backoff:
/// paid credits are never dropped.
pub const ATTEMPTS_BEFORE_ACTION_DEFAULT: u32 = 8;
/// The longest wait between two attempts of a step.
pub const BACKOFF_MAX_SECONDS: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    RequiresAction,
    Succeeded,
    Failed,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::RequiresAction => "REQUIRES_ACTION",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Pending, Self::RequiresAction, Self::Succeeded, Self::Failed].into_iter().find(|s| s.name() == name)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Manual,
    AutoReplenish,
    Recurring,
    Voucher,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Self::Manual => "MANUAL",
            Self::AutoReplenish => "AUTO_REPLENISH",
            Self::Recurring => "RECURRING",
            Self::Voucher => "VOUCHER",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Manual, Self::AutoReplenish, Self::Recurring, Self::Voucher].into_iter().find(|t| t.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CreateInvoice,
    Charge,
    AwaitPayment,
    Grant,
    MarkPaid,
    VoidInvoice,
    RedeemVoucher,
    /// Grant the bonus given with the purchase.
    GrantBonus,
    /// Nothing left to do.
    Done,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Self::CreateInvoice => "CREATE_INVOICE",
            Self::Charge => "CHARGE",
            Self::AwaitPayment => "AWAIT_PAYMENT",
            Self::Grant => "GRANT",
            Self::MarkPaid => "MARK_PAID",
            Self::VoidInvoice => "VOID_INVOICE",
            Self::RedeemVoucher => "REDEEM_VOUCHER",
            Self::GrantBonus => "GRANT_BONUS",
            Self::Done => "DONE",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::CreateInvoice,
            Self::Charge,
            Self::AwaitPayment,
            Self::Grant,
            Self::MarkPaid,
            Self::VoidInvoice,
            Self::RedeemVoucher,
            Self::GrantBonus,
            Self::Done,
        ]
        .into_iter()
        .find(|step| step.name() == name)
    }

    /// How many attempts a step gets before the top-up needs a person (or,
    /// for a charge, fails); `others` for every step but the charge.
    pub fn attempts_before_giving_up(self, others: u32) -> u32 {
        match self {
            Self::Charge => CHARGE_ATTEMPTS_MAX,
            _ => others,
        }
    }
}

/// What a step's outcome was, as a log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Started,
    Succeeded,
    Retrying,
    Failed,
    Waiting,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Self::Started => "STARTED",
            Self::Succeeded => "SUCCEEDED",
            Self::Retrying => "RETRYING",
            Self::Failed => "FAILED",
            Self::Waiting => "WAITING",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Started, Self::Succeeded, Self::Retrying, Self::Failed, Self::Waiting]
            .into_iter()
            .find(|outcome| outcome.name() == name)
    }
}

/// The wait before attempt `attempt + 1` of a step: 1, 2, 4 … seconds, at
/// most [`BACKOFF_MAX_SECONDS`].
pub fn backoff(attempt: u32) -> Duration {
    let seconds = 1_i64.checked_shl(attempt.saturating_sub(1).min(20)).unwrap_or(BACKOFF_MAX_SECONDS);
    Duration::seconds(seconds.min(BACKOFF_MAX_SECONDS))
}

/// How an automatic top-up decides its amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Always this many credits.
    Fixed(Decimal),
    /// Enough to bring the balance back to this.
    ToTarget(Decimal),
}

/// An account's auto-replenish settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoReplenish {
    pub threshold: Decimal,
    pub strategy: Strategy,
    pub max_top_ups_per_day: u32,
    pub max_credits_per_month: Option<Decimal>,
    pub min_credits: Option<Decimal>,
    pub max_credits: Option<Decimal>,
    /// Warn when the balance falls below this percentage of the refill
    /// amount (the fixed amount or the target); 0 for no warning.
    pub warning_percent: u32,
}

impl AutoReplenish {
    /// The balance below which the wallet warns: `warning_percent` of the
    /// refill amount, at `scale` decimals rounded up, so the warning never
    /// comes later than asked; `None` without a warning.
    pub fn warning_level(&self, scale: u32) -> Option<Decimal> {
        if self.warning_percent == 0 {
            return None;
        }
        let refill = match self.strategy {
            Strategy::Fixed(amount) => amount,
            Strategy::ToTarget(target) => target,
        };
        let level = refill * Decimal::from(self.warning_percent) / Decimal::ONE_HUNDRED;
        Some(level.round_dp_with_strategy(scale, rust_decimal::RoundingStrategy::AwayFromZero))
    }
}

/// What the automatic top-ups of an account came to so far.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AutoHistory {
    /// Started today (UTC), whatever came of them.
    pub top_ups_today: u32,
    /// Credits of this month's (UTC) automatic top-ups that did not fail.
    pub credits_this_month: Decimal,
}

/// Whether a low balance starts an automatic top-up, and of how much.
#[derive(Debug, Clone, PartialEq)]
pub enum AutoDecision {
    TopUp(Decimal),
    /// A limit stops it; the reason says which.
    Limited(&'static str),
    /// The balance is not below the threshold (any more).
    NotNeeded,
}

/// Decides an automatic top-up for an available balance. FIXED is always
/// its amount: when the month's remainder cannot take all of it, the top-up
/// is held back (and reported), never cut. TO_TARGET computes the amount
/// now, the per-top-up bounds clamp it, and a month's remainder is used
/// when it still meets the minimum. The daily count stops either.
pub fn decide_auto(settings: &AutoReplenish, available: Decimal, history: AutoHistory) -> AutoDecision {
    if available >= settings.threshold {
        return AutoDecision::NotNeeded;
    }
    if history.top_ups_today >= settings.max_top_ups_per_day {
        return AutoDecision::Limited("MAX_TOP_UPS_PER_DAY");
    }
    let left = settings.max_credits_per_month.map(|month_max| month_max - history.credits_this_month);
    let amount = match settings.strategy {
        Strategy::Fixed(amount) => {
            if left.is_some_and(|left| amount > left) {
                return AutoDecision::Limited("MAX_CREDITS_PER_MONTH");
            }
            amount
        }
        Strategy::ToTarget(target) => {
            let mut amount = target - available;
            if let Some(min) = settings.min_credits {
                amount = amount.max(min);
            }
            if let Some(max) = settings.max_credits {
                amount = amount.min(max);
            }
            if let Some(left) = left
                && amount > left
            {
                amount = left;
                if settings.min_credits.is_some_and(|min| amount < min) {
                    return AutoDecision::Limited("MAX_CREDITS_PER_MONTH");
                }
            }
            amount
        }
    };
    if amount <= Decimal::ZERO {
        return AutoDecision::Limited("MAX_CREDITS_PER_MONTH");
    }
    AutoDecision::TopUp(amount)
}

/// Whether auto-replenish pauses after this many declines in a row.
pub fn pauses_after(consecutive_declines: u32) -> bool {
    consecutive_declines >= DECLINES_BEFORE_PAUSE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Weekly,
    Monthly,
}

impl Interval {
    pub fn name(self) -> &'static str {
        match self {
            Self::Weekly => "WEEKLY",
            Self::Monthly => "MONTHLY",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Weekly, Self::Monthly].into_iter().find(|interval| interval.name() == name)
    }

    /// The start of period `k` of a schedule counting from `anchor`: a
    /// month keeps the anchor's day where the month has it, else takes the
    /// month's last day, and comes back to the anchor's day after.
    pub fn nth(self, anchor: DateTime<Utc>, k: u32) -> DateTime<Utc> {
        match self {
            Self::Weekly => anchor + Duration::weeks(i64::from(k)),
            Self::Monthly => {
                anchor.checked_add_months(Months::new(k)).unwrap_or(anchor + Duration::days(31 * i64::from(k)))
            }
        }
    }
}

/// When a recurring top-up counting from `anchor`, due at `due`, fires
/// next, seen at `now`: the first period start after both. Periods missed
/// while nothing ran are skipped, so a long downtime fires once, not once
/// per missed period.
pub fn next_run(interval: Interval, anchor: DateTime<Utc>, due: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
    let after = due.max(now);
    // A period count just below the answer, then forward to it.
    let mut k = match interval {
        Interval::Weekly => (after - anchor).num_weeks(),
        Interval::Monthly => {
            i64::from(after.year() - anchor.year()) * 12 + i64::from(after.month()) - i64::from(anchor.month()) - 1
        }
    }
    .clamp(0, i64::from(u32::MAX)) as u32;
    while interval.nth(anchor, k) <= after {
        k += 1;
    }
    interval.nth(anchor, k)
}

/// The first instant of the UTC day and month of `now`, for the limits.
pub fn day_and_month_start(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let day = Utc.with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0).single().unwrap_or(now);
    let month = Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().unwrap_or(now);
    (day, month)
}

/// Decimals as their text: exact, and readable in the stored JSON.
pub(crate) mod decimal_text {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
