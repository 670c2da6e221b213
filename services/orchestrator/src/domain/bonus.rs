//! Bonus credits: promotional credits given with a purchase ("buy 100, get
//! 10 free"), granted after the paid ones and linked to them, and what each
//! refund of the purchase's payment takes back. A refund asks back the
//! bonus's share of the payment refunded so far, less what the refunds
//! before it asked, so partial refunds add up to the whole bonus once the
//! whole payment is refunded; the wallet takes at most what is left of the
//! bonus grant, and the rest (already spent, or expired) is recorded.

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The bonus a purchase asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BonusAsked {
    /// This many credits.
    Credits(Decimal),
    /// This share (1 to 100) of the purchased credits.
    Percent(u32),
}

impl BonusAsked {
    /// The bonus credits of a purchase of `purchased` credits in a unit of
    /// `scale` decimals: a share is rounded down, never up.
    pub fn credits(self, purchased: Decimal, scale: u32) -> Decimal {
        match self {
            Self::Credits(credits) => credits,
            Self::Percent(percent) => (purchased * Decimal::from(percent) / Decimal::ONE_HUNDRED)
                .round_dp_with_strategy(scale, RoundingStrategy::ToZero),
        }
    }
}

/// A top-up's bonus, as stored with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bonus {
    #[serde(with = "super::decimal_text")]
    pub credits: Decimal,
    /// The wallet unit's decimals, which every share is rounded down to.
    pub scale: u32,
    pub expires_at: Option<DateTime<Utc>>,
    pub priority: Option<i32>,
    /// The bonus grant, once granted.
    pub grant_id: Option<Uuid>,
}

/// What one refund of a top-up's payment took back of its bonus.
#[derive(Debug, Clone, PartialEq)]
pub struct Clawback {
    pub refund_id: Uuid,
    pub tenant_id: Uuid,
    pub top_up_id: Uuid,
    /// The payments event that told of the refund: refunds are shared out
    /// in this order.
    pub sequence: u64,
    /// In the payment's currency.
    pub refunded_amount: Decimal,
    /// The bonus credits this refund asks back ([`clawback_asked`]).
    pub asked: Decimal,
    /// What the wallet took; none until it has.
    pub clawed_back: Option<Decimal>,
    pub refunded_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
}

impl Clawback {
    /// What could not be taken back: spent or expired before the refund.
    pub fn unrecovered(&self) -> Option<Decimal> {
        self.clawed_back.map(|taken| self.asked - taken)
    }
}

/// The bonus credits a refund of `refunded` asks back, after refunds of
/// `refunded_before` of a payment of `paid`: the bonus's share of all that
/// is refunded (at most the payment) rounded down to `scale`, less the same
/// share before this refund. A payment of nothing shares out nothing.
pub fn clawback_asked(
    bonus: Decimal,
    scale: u32,
    paid: Decimal,
    refunded_before: Decimal,
    refunded: Decimal,
) -> Decimal {
    if paid <= Decimal::ZERO {
        return Decimal::ZERO;
    }
    let share = |refunded: Decimal| {
        let refunded = refunded.clamp(Decimal::ZERO, paid);
        // Multiplied first, so a share that is exact stays exact (30 × 1/3
        // is 10, where 30 × 0.333… would round down to 9.99); a product too
        // large for 28 digits divides first.
        let exact = bonus.checked_mul(refunded).map(|product| product / paid);
        exact.unwrap_or_else(|| bonus * (refunded / paid)).round_dp_with_strategy(scale, RoundingStrategy::ToZero)
    };
    share(refunded_before + refunded) - share(refunded_before)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    #[test]
    fn a_percentage_bonus_is_rounded_down_to_the_unit() {
        assert_eq!(BonusAsked::Percent(10).credits(d("100"), 2), d("10"));
        assert_eq!(BonusAsked::Percent(15).credits(d("33.33"), 2), d("4.99"), "4.9995 is never rounded up");
        assert_eq!(BonusAsked::Percent(1).credits(d("0.5"), 2), d("0"), "too small a share gives nothing");
        assert_eq!(BonusAsked::Credits(d("7.5")).credits(d("100"), 2), d("7.5"));
    }

    #[test]
    fn partial_refunds_add_up_to_the_whole_bonus() {
        let (bonus, paid) = (d("10"), d("30"));
        let first = clawback_asked(bonus, 2, paid, d("0"), d("10"));
        assert_eq!(first, d("3.33"), "a third of the payment, rounded down");
        let second = clawback_asked(bonus, 2, paid, d("10"), d("10"));
        assert_eq!(second, d("3.33"));
        let third = clawback_asked(bonus, 2, paid, d("20"), d("10"));
        assert_eq!(third, d("3.34"), "the last refund takes what rounding left");
        assert_eq!(first + second + third, bonus);
    }

    #[test]
    fn an_exact_share_stays_exact() {
        assert_eq!(clawback_asked(d("30"), 2, d("3"), d("0"), d("1")), d("10"));
        assert_eq!(clawback_asked(d("10"), 2, d("50.00"), d("0"), d("25.00")), d("5"));
    }

    #[test]
    fn nothing_past_the_payment_is_asked() {
        assert_eq!(clawback_asked(d("10"), 2, d("30"), d("0"), d("30")), d("10"));
        assert_eq!(clawback_asked(d("10"), 2, d("30"), d("30"), d("5")), d("0"), "nothing is left to share");
        assert_eq!(clawback_asked(d("10"), 2, d("0"), d("0"), d("5")), d("0"), "a free top-up shares nothing");
    }

    #[test]
    fn huge_figures_do_not_overflow() {
        let huge = d("900000000000000000");
        assert_eq!(clawback_asked(huge, 2, huge, d("0"), huge), huge);
        let half = clawback_asked(huge, 2, huge, d("0"), d("450000000000000000"));
        assert_eq!(half, d("450000000000000000"));
    }

    #[test]
    fn a_bonus_reads_back_as_stored() {
        let bonus = Bonus {
            credits: d("12.50"),
            scale: 2,
            expires_at: Some(Utc::now()),
            priority: Some(5),
            grant_id: Some(Uuid::now_v7()),
        };
        let text = serde_json::to_string(&bonus).unwrap();
        assert!(text.contains(r#""credits":"12.50""#), "{text}");
        assert_eq!(serde_json::from_str::<Bonus>(&text).unwrap(), bonus);
    }
}
