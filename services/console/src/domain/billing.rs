//! How an account is billed, as a tenant's admin names it: a monthly
//! invoice (postpaid: the account draws on an overdraft, and each month's
//! statement is the amount due), a refillable wallet (prepaid, topped up
//! automatically when it runs low), or prepaid credits bought by hand.

use reservoir_proto::wallet::OverdraftPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingMode {
    MonthlyInvoice,
    RefillableWallet,
    Prepaid,
}

impl BillingMode {
    /// The mode of an account with `policy`, whose automatic top-up is on or not.
    pub fn of(policy: OverdraftPolicy, refills_automatically: bool) -> Self {
        match policy {
            OverdraftPolicy::CreditLimit | OverdraftPolicy::Unlimited => Self::MonthlyInvoice,
            OverdraftPolicy::None | OverdraftPolicy::Unspecified if refills_automatically => Self::RefillableWallet,
            OverdraftPolicy::None | OverdraftPolicy::Unspecified => Self::Prepaid,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::MonthlyInvoice => "Monthly invoice",
            Self::RefillableWallet => "Refillable wallet",
            Self::Prepaid => "Prepaid credits",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overdraft_bills_monthly_and_an_automatic_top_up_refills() {
        assert_eq!(BillingMode::of(OverdraftPolicy::CreditLimit, true), BillingMode::MonthlyInvoice);
        assert_eq!(BillingMode::of(OverdraftPolicy::Unlimited, false), BillingMode::MonthlyInvoice);
        assert_eq!(BillingMode::of(OverdraftPolicy::None, true), BillingMode::RefillableWallet);
        assert_eq!(BillingMode::of(OverdraftPolicy::None, false), BillingMode::Prepaid);
    }
}
