//! Fraud rules on transfers: how many and how much one account may send in
//! a window, and how much one transfer may take to a recipient that is still
//! new. A transfer that matches a rule is refused or held for an operator's
//! review, as the tenant chose; every decision is recorded by the store.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

/// What a transfer that matches a rule gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FraudAction {
    /// Refused with FRAUD_SUSPECTED.
    #[default]
    Refuse,
    /// Held: nothing moves until an operator releases it.
    Review,
}

/// A tenant's rules; a rule without a figure is off.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TransferRules {
    pub action: FraudAction,
    /// The window the velocity rules count over.
    pub velocity_window: Duration,
    pub velocity_max_count: Option<u32>,
    pub velocity_max_amount: Option<Decimal>,
    pub new_recipient_max_amount: Option<Decimal>,
    /// How long a recipient stays new after the first transfer to it.
    pub new_recipient_cooling: Duration,
}

/// The rule a transfer matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FraudRule {
    VelocityCount,
    VelocityAmount,
    NewRecipient,
}

impl FraudRule {
    pub fn name(self) -> &'static str {
        match self {
            Self::VelocityCount => "VELOCITY_COUNT",
            Self::VelocityAmount => "VELOCITY_AMOUNT",
            Self::NewRecipient => "NEW_RECIPIENT",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::VelocityCount, Self::VelocityAmount, Self::NewRecipient].into_iter().find(|rule| rule.name() == name)
    }
}

/// What the sender did lately, as the rules need it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TransferHistory {
    /// Transfers out of the account that moved money within the window.
    pub count: u32,
    pub amount: Decimal,
    /// The first transfer that moved money to this recipient, if any.
    pub first_to_recipient: Option<DateTime<Utc>>,
}

impl TransferRules {
    /// Whether any rule is on.
    pub fn is_active(&self) -> bool {
        self.velocity_counts() || self.new_recipient_max_amount.is_some()
    }

    /// Whether the velocity rules count anything.
    pub fn velocity_counts(&self) -> bool {
        self.velocity_window > Duration::zero()
            && (self.velocity_max_count.is_some() || self.velocity_max_amount.is_some())
    }

    /// The first rule a transfer of `amount` at `now` matches, after `history`:
    /// each limit may be reached, not passed.
    pub fn assess(&self, history: &TransferHistory, amount: Decimal, now: DateTime<Utc>) -> Option<FraudRule> {
        if self.velocity_counts() {
            if self.velocity_max_count.is_some_and(|max| history.count.saturating_add(1) > max) {
                return Some(FraudRule::VelocityCount);
            }
            if self.velocity_max_amount.is_some_and(|max| history.amount + amount > max) {
                return Some(FraudRule::VelocityAmount);
            }
        }
        if let Some(max) = self.new_recipient_max_amount {
            let new = history.first_to_recipient.is_none_or(|first| now - first < self.new_recipient_cooling);
            if new && amount > max {
                return Some(FraudRule::NewRecipient);
            }
        }
        None
    }
}

/// Where a held transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewStatus {
    Held,
    Released,
    Rejected,
}

impl ReviewStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Held => "HELD",
            Self::Released => "RELEASED",
            Self::Rejected => "REJECTED",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Held, Self::Released, Self::Rejected].into_iter().find(|status| status.name() == name)
    }
}

/// A transfer as asked, kept while it is held: what a release makes of it.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferAsked {
    pub from: crate::domain::AccountId,
    pub to: crate::domain::AccountId,
    pub amount: Decimal,
    pub idempotency_key: String,
    pub description: String,
    pub correlation_id: String,
    pub metadata: crate::domain::Metadata,
}

/// A transfer a rule held, and what an operator decided.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferReview {
    pub id: uuid::Uuid,
    pub asked: TransferAsked,
    pub rule: FraudRule,
    pub status: ReviewStatus,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::TimeZone;

    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap()
    }

    fn rules() -> TransferRules {
        TransferRules {
            action: FraudAction::Review,
            velocity_window: Duration::hours(1),
            velocity_max_count: Some(3),
            velocity_max_amount: Some(d("100")),
            new_recipient_max_amount: Some(d("20")),
            new_recipient_cooling: Duration::days(1),
        }
    }

    fn known(count: u32, amount: &str) -> TransferHistory {
        TransferHistory { count, amount: d(amount), first_to_recipient: Some(now() - Duration::days(2)) }
    }

    #[test]
    fn the_count_may_be_reached_not_passed() {
        assert_eq!(rules().assess(&known(2, "10"), d("1"), now()), None, "the third of three");
        assert_eq!(rules().assess(&known(3, "10"), d("1"), now()), Some(FraudRule::VelocityCount));
    }

    #[test]
    fn the_amount_may_be_reached_not_passed() {
        assert_eq!(rules().assess(&known(1, "60"), d("40"), now()), None, "exactly 100");
        assert_eq!(rules().assess(&known(1, "60"), d("40.01"), now()), Some(FraudRule::VelocityAmount));
    }

    #[test]
    fn a_new_recipient_takes_at_most_the_cap_until_it_cools() {
        let first = TransferHistory { first_to_recipient: None, ..TransferHistory::default() };
        assert_eq!(rules().assess(&first, d("20"), now()), None);
        assert_eq!(rules().assess(&first, d("20.01"), now()), Some(FraudRule::NewRecipient));
        let recent = TransferHistory { first_to_recipient: Some(now() - Duration::hours(23)), ..first.clone() };
        assert_eq!(rules().assess(&recent, d("21"), now()), Some(FraudRule::NewRecipient), "still cooling");
        let cooled = TransferHistory { first_to_recipient: Some(now() - Duration::days(1)), ..first };
        assert_eq!(rules().assess(&cooled, d("21"), now()), None, "cooled after exactly the period");
    }

    #[test]
    fn rules_without_figures_are_off() {
        let off = TransferRules::default();
        assert!(!off.is_active());
        assert_eq!(off.assess(&TransferHistory::default(), d("1000000"), now()), None);
        let no_window = TransferRules { velocity_window: Duration::zero(), new_recipient_max_amount: None, ..rules() };
        assert!(!no_window.is_active(), "velocity needs a window");
    }
}
