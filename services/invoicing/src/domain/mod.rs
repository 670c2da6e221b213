//! Invoicing's rules, without I/O: the states an invoice moves through, how
//! credits and usage become lines in the billing currency, and how a month's
//! statement arrives at its amount due.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use reservoir_common::money::{MoneyError, Unit, UnitKind};
use rust_decimal::{Decimal, RoundingStrategy};

mod alerts;
mod reports;

pub use alerts::{Alert, AlertKind, RECIPIENTS_MAX, SEND_ATTEMPTS_MAX, recipients, retry_at};
pub use reports::Frequency;

#[cfg(test)]
mod tests;

/// What invoicing refuses by its rules (FAILED_PRECONDITION).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The invoice's state does not allow the change asked for.
    #[error("an invoice that is {} cannot be {action}", .status.name())]
    InvalidInvoiceState { status: InvoiceStatus, action: &'static str },
    /// Marked paid again, with another payment than the one it was paid by.
    #[error("the invoice was paid by another payment")]
    PaidByAnotherPayment,
}

impl Refusal {
    /// The ErrorInfo reason a client matches on.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidInvoiceState { .. } | Self::PaidByAnotherPayment => "INVALID_INVOICE_STATE",
        }
    }
}

/// The decimal places of an ISO-4217 currency (2 when unknown).
pub fn currency_scale(currency: &str) -> u32 {
    Unit::currency(currency, None).map(|unit| unit.scale()).unwrap_or(2)
}

/// A quantity or a credit amount as written: no trailing zeros ("12.5").
pub fn format_decimal(value: Decimal) -> String {
    value.normalize().to_string()
}

/// An amount in a currency, with its minor unit's decimals ("12.50").
pub fn format_money(value: Decimal, scale: u32) -> String {
    let mut value = value.round_dp(scale);
    value.rescale(scale);
    value.to_string()
}

/// Days a statement may be due after it is issued: a year is already far
/// beyond any payment term in use.
pub const PAYMENT_DUE_DAYS_MAX: u32 = 365;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceStatus {
    Draft,
    Open,
    Paid,
    Void,
    Uncollectible,
}

impl InvoiceStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Draft => "DRAFT",
            Self::Open => "OPEN",
            Self::Paid => "PAID",
            Self::Void => "VOID",
            Self::Uncollectible => "UNCOLLECTIBLE",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Draft, Self::Open, Self::Paid, Self::Void, Self::Uncollectible]
            .into_iter()
            .find(|status| status.name() == name)
    }

    /// Whether an invoice in this state is owed: issued and not yet paid,
    /// voided or written off for good.
    pub fn is_owed(self) -> bool {
        matches!(self, Self::Open | Self::Uncollectible)
    }

    /// Whether an invoice in this state, due at `due_at`, is late at `now`.
    pub fn is_overdue(self, due_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        self.is_owed() && due_at.is_some_and(|due| due <= now)
    }

    /// What is still to pay of an invoice of `total` in this state.
    pub fn amount_due(self, total: Decimal) -> Decimal {
        if self.is_owed() { total } else { Decimal::ZERO }
    }

    /// Whether an invoice may move from this state to `to`. Moving to the
    /// state it is in is allowed (a retried call), and the caller decides
    /// whether it changes anything.
    pub fn may_become(self, to: Self) -> bool {
        use InvoiceStatus::*;
        self == to
            || matches!(
                (self, to),
                (Draft, Open)
                    | (Draft, Void)
                    | (Open, Void)
                    | (Open, Paid)
                    | (Open, Uncollectible)
                    | (Uncollectible, Paid)
            )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceKind {
    TopUp,
    Statement,
}

impl InvoiceKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::TopUp => "TOP_UP",
            Self::Statement => "STATEMENT",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::TopUp, Self::Statement].into_iter().find(|kind| kind.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Credits,
    Usage,
    Other,
    CreditsApplied,
}

impl LineKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Credits => "CREDITS",
            Self::Usage => "USAGE",
            Self::Other => "OTHER",
            Self::CreditsApplied => "CREDITS_APPLIED",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Credits, Self::Usage, Self::Other, Self::CreditsApplied].into_iter().find(|kind| kind.name() == name)
    }
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub kind: LineKind,
    pub description: String,
    pub meter_code: String,
    pub dimension_key: String,
    pub dimension_value: String,
    /// In the line's own unit: credits, or the meter's usage.
    pub quantity: Decimal,
    /// In the billing currency at full precision; none for usage.
    pub unit_price: Option<Decimal>,
    /// In the billing currency, rounded to its minor unit.
    pub amount: Decimal,
}

/// What one credit of a wallet costs, and the currency invoices are in.
#[derive(Debug, Clone, PartialEq)]
pub struct Pricing {
    pub currency: Unit,
    pub price_per_credit: Decimal,
    /// The wallet's unit, for descriptions.
    pub unit_code: String,
    pub unit_scale: u32,
}

impl Pricing {
    /// The pricing of a wallet's unit: a currency wallet is billed in its
    /// own currency one for one; a credit unit at its price per credit in its
    /// billing currency.
    pub fn of(unit: &Unit) -> Result<Self, MoneyError> {
        match unit.kind() {
            UnitKind::Currency => Ok(Self {
                currency: unit.clone(),
                price_per_credit: Decimal::ONE,
                unit_code: unit.code().to_owned(),
                unit_scale: unit.scale(),
            }),
            UnitKind::Credit { price_per_credit, billing_currency } => Ok(Self {
                currency: Unit::currency(billing_currency, None)?,
                price_per_credit: *price_per_credit,
                unit_code: unit.code().to_owned(),
                unit_scale: unit.scale(),
            }),
        }
    }

    /// Credits in the billing currency, rounded half-even to its minor unit.
    /// `None` past the supported range.
    pub fn in_currency(&self, credits: Decimal) -> Option<Decimal> {
        let exact = credits.checked_mul(self.price_per_credit)?;
        Some(exact.round_dp_with_strategy(self.currency.scale(), RoundingStrategy::MidpointNearestEven))
    }
}

/// The lines of a purchase of credits: one line, credits times their price.
pub fn top_up_lines(credits: Decimal, pricing: &Pricing, description: &str) -> Option<Vec<Line>> {
    let description = if description.is_empty() {
        format!("{} {} credits", credits.normalize(), pricing.unit_code)
    } else {
        description.to_owned()
    };
    Some(vec![Line {
        kind: LineKind::Credits,
        description,
        meter_code: String::new(),
        dimension_key: String::new(),
        dimension_value: String::new(),
        quantity: credits,
        unit_price: Some(pricing.price_per_credit),
        amount: pricing.in_currency(credits)?,
    }])
}

/// The sum of the lines: what an invoice totals.
pub fn total(lines: &[Line]) -> Option<Decimal> {
    lines.iter().try_fold(Decimal::ZERO, |sum, line| sum.checked_add(line.amount))
}

/// A month's usage of one meter (and one value of its priced dimension), in
/// the wallet's unit, as metering reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageLine {
    pub meter_code: String,
    pub dimension_key: String,
    pub dimension_value: String,
    pub charged_quantity: Decimal,
    pub charged_credits: Decimal,
    pub uncovered_credits: Decimal,
}

/// How a month's money left the wallet, from its ledger, in credits.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Drawdown {
    /// Debits and captures less refunds: everything charged.
    pub charged: Decimal,
    /// The part drawn on the overdraft (entries without a grant): the debt.
    pub on_overdraft: Decimal,
}

/// A month's statement before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub lines: Vec<Line>,
    /// The amount due in the billing currency: the debt drawn on the overdraft.
    pub amount_due: Decimal,
    /// The debt in credits, which paying the statement repays.
    pub debt_credits: Decimal,
    /// Usage the wallet refused, in the billing currency; listed, not billed.
    pub uncovered: Decimal,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatementError {
    #[error("an amount is beyond the supported range")]
    Overflow,
}

/// A month's statement: one line per meter (and priced dimension value) at
/// what metering charged; a line for what was charged on the wallet
/// otherwise; and the prepaid credits applied. The amount due is the debt
/// drawn on the overdraft, rounded once; the credits-applied line is what
/// the usage came to less that, so the lines always sum to the amount due
/// and a month fully covered by credits is due exactly 0.
pub fn statement(usage: &[UsageLine], drawdown: Drawdown, pricing: &Pricing) -> Result<Statement, StatementError> {
    let mut lines = Vec::new();
    let mut metered = Decimal::ZERO;
    let mut uncovered_credits = Decimal::ZERO;
    for group in usage {
        metered = metered.checked_add(group.charged_credits).ok_or(StatementError::Overflow)?;
        uncovered_credits = uncovered_credits.checked_add(group.uncovered_credits).ok_or(StatementError::Overflow)?;
        if group.charged_credits.is_zero() && group.charged_quantity.is_zero() {
            continue;
        }
        let description = if group.dimension_value.is_empty() {
            format!("Usage of {}", group.meter_code)
        } else {
            format!("Usage of {} ({}={})", group.meter_code, group.dimension_key, group.dimension_value)
        };
        lines.push(Line {
            kind: LineKind::Usage,
            description,
            meter_code: group.meter_code.clone(),
            dimension_key: group.dimension_key.clone(),
            dimension_value: group.dimension_value.clone(),
            quantity: group.charged_quantity,
            unit_price: None,
            amount: pricing.in_currency(group.charged_credits).ok_or(StatementError::Overflow)?,
        });
    }
    let other = drawdown.charged.checked_sub(metered).ok_or(StatementError::Overflow)?;
    if !other.is_zero() {
        lines.push(Line {
            kind: LineKind::Other,
            description: "Other charges and refunds".to_owned(),
            meter_code: String::new(),
            dimension_key: String::new(),
            dimension_value: String::new(),
            quantity: other,
            unit_price: Some(pricing.price_per_credit),
            amount: pricing.in_currency(other).ok_or(StatementError::Overflow)?,
        });
    }
    let debt_credits = drawdown.on_overdraft.max(Decimal::ZERO);
    let amount_due = pricing.in_currency(debt_credits).ok_or(StatementError::Overflow)?;
    let charged = total(&lines).ok_or(StatementError::Overflow)?;
    let applied = charged.checked_sub(amount_due).ok_or(StatementError::Overflow)?;
    if !applied.is_zero() {
        let applied_credits = drawdown.charged.checked_sub(debt_credits).ok_or(StatementError::Overflow)?;
        lines.push(Line {
            kind: LineKind::CreditsApplied,
            description: "Prepaid credits applied".to_owned(),
            meter_code: String::new(),
            dimension_key: String::new(),
            dimension_value: String::new(),
            quantity: -applied_credits,
            unit_price: Some(pricing.price_per_credit),
            amount: -applied,
        });
    }
    Ok(Statement {
        lines,
        amount_due,
        debt_credits,
        uncovered: pricing.in_currency(uncovered_credits).ok_or(StatementError::Overflow)?,
    })
}

/// A calendar month (UTC), as `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    pub fn parse(text: &str) -> Option<Self> {
        let (year, month) = text.split_once('-')?;
        if year.len() != 4 || month.len() != 2 {
            return None;
        }
        let month = Self { year: year.parse().ok()?, month: month.parse().ok()? };
        NaiveDate::from_ymd_opt(month.year, month.month, 1).map(|_| month)
    }

    pub fn of(instant: DateTime<Utc>) -> Self {
        Self { year: instant.year(), month: instant.month() }
    }

    pub fn previous(self) -> Self {
        if self.month == 1 { Self { year: self.year - 1, month: 12 } } else { Self { month: self.month - 1, ..self } }
    }

    pub fn next(self) -> Self {
        if self.month == 12 { Self { year: self.year + 1, month: 1 } } else { Self { month: self.month + 1, ..self } }
    }

    /// Its first instant.
    pub fn start(self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.month, 1, 0, 0, 0).single().unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// The first instant after it.
    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{:04}-{:02}", self.year, self.month)
    }
}

/// When a statement issued at `issued_at` is due.
pub fn due_at(issued_at: DateTime<Utc>, payment_due_days: u32) -> DateTime<Utc> {
    issued_at + Duration::days(i64::from(payment_due_days))
}

/// The month whose automatic cycle is due at `now`: the previous one, unless
/// it already ran.
pub fn cycle_due(now: DateTime<Utc>, last_run: Option<Month>) -> Option<Month> {
    let previous = Month::of(now).previous();
    match last_run {
        Some(last) if last >= previous => None,
        _ => Some(previous),
    }
}
