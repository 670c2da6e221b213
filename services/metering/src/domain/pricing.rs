//! Prices: flat or graduated over the account's monthly usage of a meter,
//! with overrides per dimension value, each in effect from an instant.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use rust_decimal::{Decimal, RoundingStrategy};

/// Most tiers in one schedule: more than any real price list needs.
pub const TIERS_MAX: usize = 16;
/// Most dimension overrides in one price.
pub const OVERRIDES_MAX: usize = 64;
/// Decimal places of a unit price: fine enough for a price per token.
pub const UNIT_PRICE_SCALE_MAX: u32 = 12;
/// Decimal places of a quantity.
pub const QUANTITY_SCALE_MAX: u32 = 8;

/// One band: each unit of monthly usage up to `up_to` costs `unit_price`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub up_to: Option<Decimal>,
    pub unit_price: Decimal,
}

/// Tiers in increasing order, the last without a bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    tiers: Vec<Tier>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("needs 1 to {TIERS_MAX} tiers")]
    TierCount,
    #[error("tier bounds must increase and only the last tier may be unbounded")]
    TierOrder,
    #[error("a unit price must be zero or more")]
    NegativePrice,
    #[error("the charge is too large to compute")]
    Overflow,
}

impl Schedule {
    pub fn new(tiers: Vec<Tier>) -> Result<Self, PriceError> {
        if tiers.is_empty() || tiers.len() > TIERS_MAX {
            return Err(PriceError::TierCount);
        }
        let mut previous = Decimal::ZERO;
        for (index, tier) in tiers.iter().enumerate() {
            if tier.unit_price.is_sign_negative() && !tier.unit_price.is_zero() {
                return Err(PriceError::NegativePrice);
            }
            let last = index + 1 == tiers.len();
            match (tier.up_to, last) {
                (None, true) => {}
                (Some(bound), false) if bound > previous => previous = bound,
                _ => return Err(PriceError::TierOrder),
            }
        }
        Ok(Self { tiers })
    }

    /// A single flat price per unit.
    pub fn flat(unit_price: Decimal) -> Self {
        Self { tiers: vec![Tier { up_to: None, unit_price }] }
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The cost of the first `usage` units of a month, at full precision.
    pub fn cumulative(&self, usage: Decimal) -> Result<Decimal, PriceError> {
        let mut cost = Decimal::ZERO;
        let mut lower = Decimal::ZERO;
        for tier in &self.tiers {
            if usage <= lower {
                break;
            }
            let upper = tier.up_to.map_or(usage, |bound| bound.min(usage));
            let units = upper - lower;
            let part = units.checked_mul(tier.unit_price).ok_or(PriceError::Overflow)?;
            cost = cost.checked_add(part).ok_or(PriceError::Overflow)?;
            lower = upper;
        }
        Ok(cost)
    }
}

/// A price for events whose dimension `key` is `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub key: String,
    pub value: String,
    pub schedule: Schedule,
}

/// A meter's price from `effective_from` until the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceVersion {
    pub effective_from: DateTime<Utc>,
    pub base: Schedule,
    pub overrides: Vec<Override>,
}

impl PriceVersion {
    /// The schedule for an event: the first override whose dimension matches, else the base.
    pub fn schedule_for(&self, dimensions: &BTreeMap<String, String>) -> &Schedule {
        self.overrides
            .iter()
            .find(|o| dimensions.get(&o.key).is_some_and(|value| *value == o.value))
            .map_or(&self.base, |o| &o.schedule)
    }

    /// What `quantity` costs on top of `usage_before` units already used this
    /// month, rounded half-even to `scale`. The charge is the rounded cost of
    /// all usage after the event less the rounded cost before it, so the
    /// charges of many small events add up exactly, to the last unit of scale,
    /// to what one event of their total would cost.
    pub fn charge(
        &self,
        dimensions: &BTreeMap<String, String>,
        usage_before: Decimal,
        quantity: Decimal,
        scale: u32,
    ) -> Result<Decimal, PriceError> {
        let schedule = self.schedule_for(dimensions);
        let after = usage_before.checked_add(quantity).ok_or(PriceError::Overflow)?;
        let round = |value: Decimal| value.round_dp_with_strategy(scale, RoundingStrategy::MidpointNearestEven);
        Ok(round(schedule.cumulative(after)?) - round(schedule.cumulative(usage_before)?))
    }
}

/// The price in effect at `at`: the latest one effective at or before it.
pub fn price_at(schedule: &[PriceVersion], at: DateTime<Utc>) -> Option<&PriceVersion> {
    schedule.iter().filter(|price| price.effective_from <= at).max_by_key(|price| price.effective_from)
}

/// The calendar month (UTC) of an instant, as `YYYY-MM`: the period graduated tiers count over.
pub fn month_of(at: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", at.year(), at.month())
}

/// The first instant of the month of `at`.
pub fn month_start(at: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0).single().unwrap_or(at)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn graduated() -> Schedule {
        Schedule::new(vec![
            Tier { up_to: Some(d("100")), unit_price: d("0.10") },
            Tier { up_to: Some(d("1000")), unit_price: d("0.05") },
            Tier { up_to: None, unit_price: d("0.01") },
        ])
        .unwrap()
    }

    fn version(base: Schedule) -> PriceVersion {
        PriceVersion { effective_from: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(), base, overrides: Vec::new() }
    }

    fn none() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn a_flat_price_is_quantity_times_unit_price() {
        let price = version(Schedule::flat(d("0.002")));
        assert_eq!(price.charge(&none(), Decimal::ZERO, d("1500"), 2).unwrap(), d("3.00"));
    }

    #[test]
    fn a_dimension_override_prices_matching_events() {
        let mut price = version(Schedule::flat(d("1")));
        price.overrides.push(Override { key: "model".into(), value: "large".into(), schedule: Schedule::flat(d("3")) });
        let large = BTreeMap::from([("model".to_owned(), "large".to_owned())]);
        let small = BTreeMap::from([("model".to_owned(), "small".to_owned())]);
        assert_eq!(price.charge(&large, Decimal::ZERO, d("2"), 2).unwrap(), d("6"));
        assert_eq!(price.charge(&small, Decimal::ZERO, d("2"), 2).unwrap(), d("2"));
        assert_eq!(price.charge(&none(), Decimal::ZERO, d("2"), 2).unwrap(), d("2"));
    }

    #[test]
    fn graduated_tiers_are_crossed_within_one_event() {
        let price = version(graduated());
        // 100 × 0.10 + 900 × 0.05 + 500 × 0.01
        assert_eq!(price.charge(&none(), Decimal::ZERO, d("1500"), 2).unwrap(), d("60.00"));
        // From 50 to 150: 50 × 0.10 + 50 × 0.05
        assert_eq!(price.charge(&none(), d("50"), d("100"), 2).unwrap(), d("7.50"));
    }

    #[test]
    fn many_small_events_cost_exactly_what_one_large_event_costs() {
        let price = version(graduated());
        let whole = price.charge(&none(), Decimal::ZERO, d("1234.567"), 2).unwrap();
        let mut usage = Decimal::ZERO;
        let mut sum = Decimal::ZERO;
        for _ in 0..1_234_567 / 997 {
            sum += price.charge(&none(), usage, d("0.997"), 2).unwrap();
            usage += d("0.997");
        }
        let rest = d("1234.567") - usage;
        sum += price.charge(&none(), usage, rest, 2).unwrap();
        assert_eq!(sum, whole);
    }

    #[test]
    fn rounding_is_half_even_at_the_wallet_scale() {
        let price = version(Schedule::flat(d("0.005")));
        assert_eq!(price.charge(&none(), Decimal::ZERO, d("1"), 2).unwrap(), d("0.00"), "0.005 rounds to even 0.00");
        assert_eq!(price.charge(&none(), Decimal::ZERO, d("3"), 2).unwrap(), d("0.02"), "0.015 rounds to even 0.02");
        assert_eq!(price.charge(&none(), d("1"), d("2"), 2).unwrap(), d("0.02"), "0.015 - 0.00 (0.005 → 0.00)");
    }

    #[test]
    fn the_price_in_effect_is_the_latest_before_the_instant() {
        let old = version(Schedule::flat(d("1")));
        let mut new = version(Schedule::flat(d("2")));
        new.effective_from = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let schedule = vec![old.clone(), new.clone()];
        assert_eq!(price_at(&schedule, Utc.with_ymd_and_hms(2026, 2, 28, 23, 59, 59).unwrap()), Some(&old));
        assert_eq!(price_at(&schedule, new.effective_from), Some(&new));
        assert_eq!(price_at(&schedule, Utc.with_ymd_and_hms(2025, 12, 31, 0, 0, 0).unwrap()), None);
    }

    #[test]
    fn tiers_must_increase_and_end_unbounded() {
        let tier = |up_to: Option<&str>| Tier { up_to: up_to.map(d), unit_price: d("1") };
        assert_eq!(Schedule::new(vec![]), Err(PriceError::TierCount));
        assert_eq!(Schedule::new(vec![tier(Some("10"))]), Err(PriceError::TierOrder));
        assert_eq!(Schedule::new(vec![tier(Some("10")), tier(Some("5")), tier(None)]), Err(PriceError::TierOrder));
        assert_eq!(Schedule::new(vec![tier(None), tier(None)]), Err(PriceError::TierOrder));
        assert!(Schedule::new(vec![tier(Some("10")), tier(None)]).is_ok());
        let negative = Tier { up_to: None, unit_price: d("-1") };
        assert_eq!(Schedule::new(vec![negative]), Err(PriceError::NegativePrice));
    }

    #[test]
    fn months_are_calendar_months_in_utc() {
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 59).unwrap();
        assert_eq!(month_of(at), "2026-11");
        assert_eq!(month_start(at), Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap());
    }
}
