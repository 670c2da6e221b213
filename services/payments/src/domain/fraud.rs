//! Fraud rules on charges (recharges): how many charges, and how much, one
//! account and one payment method may make in a window, and card testing:
//! after enough declines of one method, or of one card whichever account
//! added it, the next charge with it. A charge that matches a rule is
//! refused or held for an operator's review, as the tenant chose.

use chrono::Duration;
use rust_decimal::Decimal;

/// The failure code of a payment held for review: PENDING, the gateway not asked.
pub const HELD_CODE: &str = "fraud_review";
/// The failure code of a held payment an operator rejected: DECLINED.
pub const REJECTED_CODE: &str = "fraud_rejected";

/// What a charge that matches a rule gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FraudAction {
    #[default]
    Refuse,
    Review,
}

/// Limits on a count and an amount in a window; none: off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Velocity {
    pub max_count: Option<u32>,
    pub max_amount: Option<Decimal>,
}

impl Velocity {
    fn is_on(self) -> bool {
        self.max_count.is_some() || self.max_amount.is_some()
    }

    /// Whether one more charge of `amount` after `seen` passes a limit (each may be reached).
    fn passed_by(self, seen: Seen, amount: Decimal) -> bool {
        self.max_count.is_some_and(|max| seen.count.saturating_add(1) > max)
            || self.max_amount.is_some_and(|max| seen.amount + amount > max)
    }
}

/// A tenant's rules on charges.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChargeRules {
    pub action: FraudAction,
    pub velocity_window: Duration,
    pub account: Velocity,
    pub method: Velocity,
    pub max_declines: Option<u32>,
    pub decline_window: Duration,
}

/// The rule a charge matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeRule {
    AccountVelocity,
    MethodVelocity,
    CardTesting,
}

impl ChargeRule {
    pub const ALL: [Self; 3] = [Self::AccountVelocity, Self::MethodVelocity, Self::CardTesting];

    pub fn name(self) -> &'static str {
        match self {
            Self::AccountVelocity => "ACCOUNT_VELOCITY",
            Self::MethodVelocity => "METHOD_VELOCITY",
            Self::CardTesting => "CARD_TESTING",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|rule| rule.name() == name)
    }
}

/// Charges seen in a window: how many, and their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seen {
    pub count: u32,
    pub amount: Decimal,
}

/// What the rules judge a charge on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChargeHistory {
    /// The account's charges in the velocity window.
    pub account: Seen,
    /// The payment method's charges in the velocity window.
    pub method: Seen,
    /// Declines in the decline window of the method, or of its card on any
    /// of the tenant's accounts, whichever is more.
    pub declines: u32,
}

impl ChargeRules {
    pub fn is_active(&self) -> bool {
        self.velocity_counts() || self.declines_count()
    }

    pub fn velocity_counts(&self) -> bool {
        self.velocity_window > Duration::zero() && (self.account.is_on() || self.method.is_on())
    }

    pub fn declines_count(&self) -> bool {
        self.decline_window > Duration::zero() && self.max_declines.is_some()
    }

    /// The first rule a charge of `amount` matches after `history`; a
    /// charge without a payment method has no method rules.
    pub fn assess(&self, history: &ChargeHistory, amount: Decimal, with_method: bool) -> Option<ChargeRule> {
        if self.declines_count() && with_method && self.max_declines.is_some_and(|max| history.declines >= max) {
            return Some(ChargeRule::CardTesting);
        }
        if self.velocity_counts() {
            if self.account.passed_by(history.account, amount) {
                return Some(ChargeRule::AccountVelocity);
            }
            if with_method && self.method.passed_by(history.method, amount) {
                return Some(ChargeRule::MethodVelocity);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn rules() -> ChargeRules {
        ChargeRules {
            action: FraudAction::Refuse,
            velocity_window: Duration::hours(1),
            account: Velocity { max_count: Some(3), max_amount: Some(d("100")) },
            method: Velocity { max_count: Some(2), max_amount: None },
            max_declines: Some(2),
            decline_window: Duration::hours(1),
        }
    }

    fn seen(count: u32, amount: &str) -> Seen {
        Seen { count, amount: d(amount) }
    }

    #[test]
    fn each_limit_may_be_reached_not_passed() {
        let history = ChargeHistory { account: seen(2, "50"), method: seen(1, "50"), declines: 1 };
        assert_eq!(rules().assess(&history, d("50"), true), None, "every figure reached, none passed");
        let history = ChargeHistory { account: seen(3, "50"), ..history };
        assert_eq!(rules().assess(&history, d("1"), true), Some(ChargeRule::AccountVelocity));
        let history = ChargeHistory { account: seen(1, "50"), ..history };
        assert_eq!(rules().assess(&history, d("50.01"), true), Some(ChargeRule::AccountVelocity));
        let history = ChargeHistory { method: seen(2, "2"), ..history };
        assert_eq!(rules().assess(&history, d("1"), true), Some(ChargeRule::MethodVelocity));
        assert_eq!(rules().assess(&history, d("1"), false), None, "no method, no method rules");
    }

    #[test]
    fn a_card_declined_often_enough_is_not_tried_again() {
        let history = ChargeHistory { declines: 1, ..ChargeHistory::default() };
        assert_eq!(rules().assess(&history, d("1"), true), None);
        let history = ChargeHistory { declines: 2, ..ChargeHistory::default() };
        assert_eq!(rules().assess(&history, d("1"), true), Some(ChargeRule::CardTesting));
    }

    #[test]
    fn rules_without_figures_are_off() {
        assert!(!ChargeRules::default().is_active());
        let no_windows = ChargeRules { velocity_window: Duration::zero(), decline_window: Duration::zero(), ..rules() };
        assert!(!no_windows.is_active());
        let history = ChargeHistory { account: seen(99, "9999"), method: seen(99, "1"), declines: 99 };
        assert_eq!(no_windows.assess(&history, d("1"), true), None);
    }
}
