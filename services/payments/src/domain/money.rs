//! Which amounts payments and vouchers accept. A payment is in an ISO-4217
//! currency and holds at most its minor unit; a voucher's value is in a
//! wallet unit, which is either such a currency or a custom credit unit.

use reservoir_common::money::{MoneyError, SCALE_MAX, Unit, parse_amount, positive};
use rust_decimal::Decimal;

/// Custom unit codes as the wallet accepts them: short identifiers like `CREDIT`.
pub const UNIT_CODE_LENGTH_MAX: usize = 16;

/// The currency of a payment, with its minor unit as the scale.
pub fn payment_currency(code: &str) -> Result<Unit, MoneyError> {
    Unit::currency(code, None)
}

/// A positive payment amount in `currency`, at most its minor unit.
pub fn payment_amount(currency: &Unit, text: &str) -> Result<Decimal, MoneyError> {
    currency.parse_positive(text)
}

/// A voucher's value in `unit_code`: at most the currency's minor unit when
/// the unit is a currency, otherwise at most the widest scale a custom unit
/// may have, since the voucher cannot know that unit's own scale. The wallet
/// refuses a grant finer than the account's unit when it is redeemed.
pub fn voucher_value(unit_code: &str, text: &str) -> Result<Decimal, MoneyError> {
    match Unit::currency(unit_code, None) {
        Ok(currency) => currency.parse_positive(text),
        Err(_) => {
            check_unit_code(unit_code)?;
            parse_amount(text, SCALE_MAX).and_then(positive)
        }
    }
}

/// A wallet unit code: an ISO-4217 currency or a custom code of letters,
/// digits and underscores.
pub fn check_unit_code(code: &str) -> Result<(), MoneyError> {
    if Unit::currency(code, None).is_ok() {
        return Ok(());
    }
    let well_formed = !code.is_empty()
        && code.len() <= UNIT_CODE_LENGTH_MAX
        && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if well_formed {
        Ok(())
    } else {
        Err(MoneyError::InvalidUnit(format!(
            "is a currency or 1 to {UNIT_CODE_LENGTH_MAX} letters, digits or underscores"
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_payment_amount_holds_at_most_the_currency_minor_unit() {
        let usd = payment_currency("USD").unwrap();
        assert_eq!(payment_amount(&usd, "12.50").unwrap(), Decimal::new(1250, 2));
        assert_eq!(payment_amount(&usd, "12.505"), Err(MoneyError::TooManyDecimals { scale: 2 }));
        assert_eq!(payment_amount(&usd, "0"), Err(MoneyError::Zero));
        let yen = payment_currency("JPY").unwrap();
        assert_eq!(payment_amount(&yen, "1.5"), Err(MoneyError::TooManyDecimals { scale: 0 }));
        assert!(payment_currency("CREDIT").is_err());
        assert!(payment_currency("usd").is_err());
    }

    #[test]
    fn a_voucher_value_follows_its_unit() {
        assert_eq!(voucher_value("USD", "5.25").unwrap(), Decimal::new(525, 2));
        assert!(voucher_value("USD", "5.255").is_err());
        assert_eq!(voucher_value("CREDIT", "0.00000001").unwrap(), Decimal::new(1, 8));
        assert!(voucher_value("CREDIT", "0.000000001").is_err());
        assert!(voucher_value("CREDIT", "-1").is_err());
        assert!(voucher_value("has space", "1").is_err());
        assert!(voucher_value("", "1").is_err());
    }
}
