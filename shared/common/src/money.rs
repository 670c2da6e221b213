//! Amounts and units. Every amount is a `Decimal` held at its unit's scale;
//! parsing refuses what the unit cannot represent instead of rounding it.

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};

/// Most decimal places a unit may have. With amounts below 10^18 this keeps
/// every amount within 26 significant digits, inside `Decimal`'s 28, so sums
/// of many amounts still add exactly.
pub const SCALE_MAX: u32 = 8;

/// Grant priorities: 0 to this, lower drawn first; small non-negative
/// numbers are plenty to order grants.
pub const GRANT_PRIORITY_MAX: i32 = 1_000_000;

/// Amounts are below this in absolute value: large enough for any real
/// wallet, small enough that balances built from them never overflow.
pub fn amount_limit() -> Decimal {
    Decimal::from(1_000_000_000_000_000_000_i64)
}

/// Longest custom unit code.
const UNIT_CODE_LENGTH_MAX: usize = 16;

/// Why an amount or unit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("is not a decimal number")]
    NotANumber,
    #[error("has more than {scale} decimal places")]
    TooManyDecimals { scale: u32 },
    #[error("must be positive")]
    NotPositive,
    #[error("must not be negative")]
    Negative,
    #[error("must not be zero")]
    Zero,
    #[error("is beyond the supported range (absolute value below 10^18)")]
    OutOfRange,
    #[error("{0}")]
    InvalidUnit(String),
}

/// What a wallet counts in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnitKind {
    /// An ISO-4217 currency.
    Currency,
    /// A custom credit unit, priced per credit in a billing currency.
    Credit { price_per_credit: Decimal, billing_currency: String },
}

/// A wallet's unit: its code, its scale and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Unit {
    code: String,
    scale: u32,
    kind: UnitKind,
}

fn currency_exponent(code: &str) -> Option<u32> {
    iso_currency::Currency::from_code(code).and_then(|currency| currency.exponent()).map(u32::from)
}

impl Unit {
    /// An ISO-4217 currency; `scale`, when given, must equal its exponent.
    pub fn currency(code: &str, scale: Option<u32>) -> Result<Self, MoneyError> {
        let exponent = currency_exponent(code).ok_or_else(|| {
            MoneyError::InvalidUnit(format!("{code:?} is not an ISO-4217 currency with decimal places"))
        })?;
        if let Some(scale) = scale
            && scale != exponent
        {
            return Err(MoneyError::InvalidUnit(format!("{code} has {exponent} decimal places, not {scale}")));
        }
        Ok(Self { code: code.to_owned(), scale: exponent, kind: UnitKind::Currency })
    }

    /// A custom credit unit.
    pub fn credit(code: &str, scale: u32, price_per_credit: &str, billing_currency: &str) -> Result<Self, MoneyError> {
        let code_ok = !code.is_empty()
            && code.len() <= UNIT_CODE_LENGTH_MAX
            && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !code_ok {
            return Err(MoneyError::InvalidUnit(format!(
                "a custom unit code is 1 to {UNIT_CODE_LENGTH_MAX} letters, digits or underscores"
            )));
        }
        if iso_currency::Currency::from_code(code).is_some() {
            return Err(MoneyError::InvalidUnit(format!("{code} is a currency code and cannot name a custom unit")));
        }
        if scale > SCALE_MAX {
            return Err(MoneyError::InvalidUnit(format!("scale must be 0 to {SCALE_MAX}")));
        }
        currency_exponent(billing_currency).ok_or_else(|| {
            MoneyError::InvalidUnit(format!("billing currency {billing_currency:?} is not an ISO-4217 currency"))
        })?;
        // A credit's price may be finer than a cent (0.0001 USD a token), so
        // it is held at the widest scale rather than the currency's.
        let price = parse_amount(price_per_credit, SCALE_MAX)
            .and_then(positive)
            .map_err(|error| MoneyError::InvalidUnit(format!("price_per_credit {error}")))?;
        Ok(Self {
            code: code.to_owned(),
            scale,
            kind: UnitKind::Credit { price_per_credit: price, billing_currency: billing_currency.to_owned() },
        })
    }

    /// Builds a unit from its stored or wire parts: a currency when there is
    /// no price, a custom unit otherwise.
    pub fn from_parts(
        code: &str,
        scale: Option<u32>,
        price_per_credit: &str,
        billing_currency: &str,
    ) -> Result<Self, MoneyError> {
        if price_per_credit.is_empty() && billing_currency.is_empty() {
            Self::currency(code, scale)
        } else {
            let scale = scale.ok_or_else(|| MoneyError::InvalidUnit("a custom unit needs a scale".into()))?;
            Self::credit(code, scale, price_per_credit, billing_currency)
        }
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn scale(&self) -> u32 {
        self.scale
    }

    pub fn kind(&self) -> &UnitKind {
        &self.kind
    }

    /// Parses an amount of this unit: exact, at most `scale` decimals, within range.
    pub fn parse(&self, text: &str) -> Result<Decimal, MoneyError> {
        parse_amount(text, self.scale)
    }

    /// Parses an amount that must be positive.
    pub fn parse_positive(&self, text: &str) -> Result<Decimal, MoneyError> {
        self.parse(text).and_then(positive)
    }

    /// Rounds a computed amount half-even to the unit's scale.
    pub fn round(&self, amount: Decimal) -> Decimal {
        amount.round_dp_with_strategy(self.scale, RoundingStrategy::MidpointNearestEven)
    }

    /// Formats an amount with exactly the unit's number of decimals.
    pub fn format(&self, amount: Decimal) -> String {
        let mut shown = self.round(amount);
        shown.rescale(self.scale);
        shown.to_string()
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code)
    }
}

/// Parses a decimal string exactly: no exponent, at most `scale` decimals,
/// absolute value below [`amount_limit`]. The digits are checked as text
/// before any arithmetic, so no input is ever rounded: a decimal past the
/// scale is refused however many digits come before or after it, and
/// trailing zeros ("1.500" in cents) and leading zeros change nothing.
pub fn parse_amount(text: &str, scale: u32) -> Result<Decimal, MoneyError> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if !is_plain_decimal(text) {
        return Err(MoneyError::NotANumber);
    }
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let integer = integer.trim_start_matches('0');
    let fraction = fraction.trim_end_matches('0');
    if integer.len() > 18 {
        return Err(MoneyError::OutOfRange);
    }
    if fraction.len() > scale as usize {
        return Err(MoneyError::TooManyDecimals { scale });
    }
    // At most 18 + SCALE_MAX significant digits: within Decimal's 28, so
    // what follows is exact.
    let mut mantissa: i128 = 0;
    for byte in integer.bytes().chain(fraction.bytes()) {
        mantissa = mantissa * 10 + i128::from(byte - b'0');
    }
    if negative {
        mantissa = -mantissa;
    }
    let value =
        Decimal::try_from_i128_with_scale(mantissa, fraction.len() as u32).map_err(|_| MoneyError::OutOfRange)?;
    if value.abs() >= amount_limit() {
        return Err(MoneyError::OutOfRange);
    }
    Ok(value)
}

/// Whether `text` is written as a plain decimal: an optional `-`, digits,
/// and at most one point with digits on both sides (`-12.50`, `7`; not
/// `1.`, `.5`, `+1`, `1e3` or ` 1`).
pub fn is_plain_decimal(text: &str) -> bool {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, "0"));
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    digits(integer) && digits(fraction)
}

/// Accepts only amounts above zero.
pub fn positive(amount: Decimal) -> Result<Decimal, MoneyError> {
    if amount.is_zero() {
        Err(MoneyError::Zero)
    } else if amount.is_sign_negative() {
        Err(MoneyError::NotPositive)
    } else {
        Ok(amount)
    }
}

/// Accepts zero and above.
pub fn non_negative(amount: Decimal) -> Result<Decimal, MoneyError> {
    if amount.is_sign_negative() && !amount.is_zero() { Err(MoneyError::Negative) } else { Ok(amount) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn usd() -> Unit {
        Unit::currency("USD", None).unwrap()
    }

    #[test]
    fn a_currency_takes_its_iso_exponent() {
        assert_eq!(usd().scale(), 2);
        assert_eq!(Unit::currency("JPY", None).unwrap().scale(), 0);
        assert_eq!(Unit::currency("BHD", Some(3)).unwrap().scale(), 3);
        assert!(Unit::currency("USD", Some(4)).is_err());
        assert!(Unit::currency("XXY", None).is_err());
    }

    #[test]
    fn a_custom_unit_needs_a_code_that_is_not_a_currency_and_a_price() {
        let credit = Unit::credit("CREDIT", 4, "0.0125", "USD").unwrap();
        assert_eq!(credit.scale(), 4);
        assert!(Unit::credit("EUR", 2, "1", "USD").is_err());
        assert!(Unit::credit("TOKENS", 9, "1", "USD").is_err());
        assert!(Unit::credit("TOKENS", 2, "0", "USD").is_err());
        assert!(Unit::credit("TOKENS", 2, "1", "NOPE").is_err());
        assert!(Unit::credit("has space", 2, "1", "USD").is_err());
    }

    #[test]
    fn amounts_parse_exactly_within_the_scale() {
        let unit = usd();
        assert_eq!(unit.parse("12.50").unwrap(), Decimal::new(1250, 2));
        assert_eq!(unit.parse("12.500").unwrap(), Decimal::new(1250, 2));
        assert_eq!(unit.parse("12.505"), Err(MoneyError::TooManyDecimals { scale: 2 }));
        assert_eq!(unit.parse("-3").unwrap(), Decimal::from(-3));
        for bad in ["", " 1", "1e3", "1.", ".5", "abc", "1.2.3", "--1", "+1", "NaN"] {
            assert_eq!(unit.parse(bad), Err(MoneyError::NotANumber), "{bad:?}");
        }
    }

    #[test]
    fn zero_negative_and_huge_amounts_are_refused_where_a_positive_one_is_meant() {
        let unit = usd();
        assert_eq!(unit.parse_positive("0"), Err(MoneyError::Zero));
        assert_eq!(unit.parse_positive("0.00"), Err(MoneyError::Zero));
        assert_eq!(unit.parse_positive("-0.01"), Err(MoneyError::NotPositive));
        assert_eq!(unit.parse_positive("1000000000000000000"), Err(MoneyError::OutOfRange));
        assert_eq!(unit.parse_positive("99999999999999999999999999999999999999"), Err(MoneyError::OutOfRange));
        assert!(unit.parse_positive("999999999999999999.99").is_ok());
    }

    #[test]
    fn digits_past_the_scale_are_refused_however_long_the_number() {
        let unit = usd();
        // Past Decimal's 28 digits a parser would round these to 0.01 and 1.00.
        assert_eq!(unit.parse("0.00999999999999999999999999999999"), Err(MoneyError::TooManyDecimals { scale: 2 }));
        assert_eq!(unit.parse("1.0000000000000000000000000000001"), Err(MoneyError::TooManyDecimals { scale: 2 }));
        assert_eq!(unit.parse("-0.001"), Err(MoneyError::TooManyDecimals { scale: 2 }));
        assert_eq!(unit.parse(&format!("1.{}", "0".repeat(200))).unwrap(), Decimal::ONE);
        assert_eq!(unit.parse(&format!("{}7.25", "0".repeat(200))).unwrap(), Decimal::new(725, 2));
        assert_eq!(unit.parse("-0").unwrap(), Decimal::ZERO);
        assert_eq!(unit.parse_positive("-0.00"), Err(MoneyError::Zero));
    }

    proptest::proptest! {
        /// Any string is refused or parsed to exactly the number it writes,
        /// never to a rounded one.
        #[test]
        fn any_string_is_refused_or_parsed_exactly(text in "-?[0-9]{0,30}(\\.[0-9]{0,34})?|\\PC{0,40}", scale in 0_u32..=SCALE_MAX) {
            match parse_amount(&text, scale) {
                Ok(value) => {
                    proptest::prop_assert!(value.scale() <= scale);
                    proptest::prop_assert!(value.abs() < amount_limit());
                    proptest::prop_assert_eq!(same_number(&text), Some(canonical(value)));
                }
                Err(_) => {
                    if let Some(number) = same_number(&text) {
                        let decimals = number.split_once('.').map_or(0, |(_, fraction)| fraction.len());
                        let integer = number.trim_start_matches('-').split('.').next().unwrap_or("").len();
                        proptest::prop_assert!(decimals > scale as usize || integer > 18,
                            "{text:?} refused at scale {scale}");
                    }
                }
            }
        }
    }

    /// The number a plain decimal string writes, as canonical text (no
    /// leading or trailing zeros, no sign on zero), or None for anything else.
    fn same_number(text: &str) -> Option<String> {
        let (negative, unsigned) = text.strip_prefix('-').map_or((false, text), |rest| (true, rest));
        let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let plain = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
        if integer.is_empty() || !plain(integer) || !plain(fraction) || (unsigned.contains('.') && fraction.is_empty())
        {
            return None;
        }
        let integer = match integer.trim_start_matches('0') {
            "" => "0",
            digits => digits,
        };
        let fraction = fraction.trim_end_matches('0');
        let body = if fraction.is_empty() { integer.to_owned() } else { format!("{integer}.{fraction}") };
        Some(if negative && body != "0" { format!("-{body}") } else { body })
    }

    fn canonical(value: Decimal) -> String {
        let text = value.normalize().to_string();
        if text == "-0" { "0".to_owned() } else { text }
    }

    #[test]
    fn a_twenty_digit_amount_survives_parsing_and_formatting() {
        let unit = Unit::credit("CREDIT", 8, "1", "USD").unwrap();
        let amount = unit.parse("123456789012.12345678").unwrap();
        assert_eq!(unit.format(amount), "123456789012.12345678");
    }

    #[test]
    fn rounding_is_half_even_at_the_scale() {
        let unit = usd();
        assert_eq!(unit.round(Decimal::new(1005, 3)), Decimal::new(100, 2));
        assert_eq!(unit.round(Decimal::new(1015, 3)), Decimal::new(102, 2));
        assert_eq!(unit.format(Decimal::from(7)), "7.00");
    }
}
