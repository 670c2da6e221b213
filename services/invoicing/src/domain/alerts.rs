//! Billing alerts by email: which events are alerted on, what each mail
//! says, to whom it (and a report) goes, and when a mail that failed is tried again (as a
//! scheduled report is).

use chrono::{DateTime, Duration, Utc};
use reservoir_common::ids::AccountId;

/// Addresses a report or an alert goes to, at most (besides the billing contact).
pub const RECIPIENTS_MAX: usize = 20;

/// Attempts at sending one mail (an alert or a report) before it is given
/// up: the waits double from a minute to an hour, so about three days.
pub const SEND_ATTEMPTS_MAX: u32 = 80;

/// When a mail whose `attempts`-th attempt just failed is tried again.
pub fn retry_at(attempts: u32, now: DateTime<Utc>) -> DateTime<Utc> {
    let wait = Duration::minutes(1) * 2_i32.saturating_pow(attempts.saturating_sub(1).min(6));
    now + wait.min(Duration::hours(1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    BalanceLow,
    BalanceWarning,
    BalanceDepleted,
    SpendingCap,
    TopUpPaid,
}

impl AlertKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::BalanceLow => "BALANCE_LOW",
            Self::BalanceWarning => "BALANCE_WARNING",
            Self::BalanceDepleted => "BALANCE_DEPLETED",
            Self::SpendingCap => "SPENDING_CAP",
            Self::TopUpPaid => "TOP_UP_PAID",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::BalanceLow, Self::BalanceWarning, Self::BalanceDepleted, Self::SpendingCap, Self::TopUpPaid]
            .into_iter()
            .find(|kind| kind.name() == name)
    }
}

/// What happened that a tenant's alert recipients are told of.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub kind: AlertKind,
    pub account_id: AccountId,
    /// The available balance after the change (balance alerts), the month's
    /// spend (a spending cap's mark), or the invoice's total (a top-up paid).
    pub amount: String,
    /// The level crossed (balance alerts), or the cap.
    pub threshold: String,
    /// The share of the cap reached, for a spending cap's mark.
    pub cap_percent: u32,
    /// The invoice's currency, for a top-up paid.
    pub currency: String,
    pub occurred_at: DateTime<Utc>,
}

impl Alert {
    /// The mail's subject and text.
    pub fn mail(&self) -> (String, String) {
        let account = self.account_id;
        let when = self.occurred_at.format("%Y-%m-%d %H:%M:%S UTC");
        match self.kind {
            AlertKind::BalanceLow => (
                format!("Balance low on account {account}"),
                format!(
                    "The available balance of account {account} fell to {} at {when}, below its low-balance \
                     threshold of {}.\nAn automatic top-up, if it is set up, starts now; otherwise add credits \
                     before usage is refused.\n",
                    self.amount, self.threshold
                ),
            ),
            AlertKind::BalanceWarning => (
                format!("Balance warning on account {account}"),
                format!(
                    "The available balance of account {account} fell to {} at {when}, below its warning level \
                     of {}.\n",
                    self.amount, self.threshold
                ),
            ),
            AlertKind::BalanceDepleted => (
                format!("Balance depleted on account {account}"),
                format!(
                    "The available balance of account {account} reached {} at {when}: usage beyond its \
                     overdraft is now refused until credits are added.\n",
                    self.amount
                ),
            ),
            AlertKind::SpendingCap => (
                format!("Spending at {}% of the cap on account {account}", self.cap_percent),
                format!(
                    "This month's spend on account {account} reached {} at {when}: {}% of its spending cap of {}.\n",
                    self.amount, self.cap_percent, self.threshold
                ),
            ),
            AlertKind::TopUpPaid => (
                format!("Top-up paid on account {account}"),
                format!(
                    "A top-up of account {account} was paid at {when}: {} {}. Its credits are in the wallet.\n",
                    self.amount, self.currency
                ),
            ),
        }
    }
}

/// Who a report or an alert goes to: the billing contact (when there is
/// one) first, then the other recipients, each address once, in order.
pub fn recipients(recipients: &[String], billing_contact: Option<&str>) -> Vec<String> {
    let mut all: Vec<String> = billing_contact.into_iter().map(str::to_owned).collect();
    for recipient in recipients {
        if !all.contains(recipient) {
            all.push(recipient.clone());
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_longer_each_time_up_to_an_hour() {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        assert_eq!(retry_at(1, now), now + Duration::minutes(1));
        assert_eq!(retry_at(2, now), now + Duration::minutes(2));
        assert_eq!(retry_at(4, now), now + Duration::minutes(8));
        assert_eq!(retry_at(7, now), now + Duration::hours(1));
        assert_eq!(retry_at(80, now), now + Duration::hours(1));
    }

    #[test]
    fn the_billing_contact_comes_first_and_nobody_twice() {
        let addresses = vec!["ops@example.com".to_owned(), "billing@example.com".to_owned()];
        assert_eq!(recipients(&addresses, Some("billing@example.com")), vec!["billing@example.com", "ops@example.com"]);
        assert_eq!(recipients(&addresses, None), addresses);
    }

    #[test]
    fn kinds_read_back_by_name() {
        for kind in [
            AlertKind::BalanceLow,
            AlertKind::BalanceWarning,
            AlertKind::BalanceDepleted,
            AlertKind::SpendingCap,
            AlertKind::TopUpPaid,
        ] {
            assert_eq!(AlertKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(AlertKind::parse("DEBITED"), None);
    }

    #[test]
    fn a_mail_names_the_account_and_the_figures() {
        let alert = Alert {
            kind: AlertKind::SpendingCap,
            account_id: AccountId(uuid::Uuid::nil()),
            amount: "80.00".into(),
            threshold: "100.00".into(),
            cap_percent: 80,
            currency: String::new(),
            occurred_at: DateTime::<Utc>::UNIX_EPOCH,
        };
        let (subject, body) = alert.mail();
        assert_eq!(subject, format!("Spending at 80% of the cap on account {}", uuid::Uuid::nil()));
        assert!(body.contains("reached 80.00 at 1970-01-01 00:00:00 UTC: 80% of its spending cap of 100.00"), "{body}");
    }
}
