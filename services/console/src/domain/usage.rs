//! Usage as the console draws it: one figure per day of a period, and where
//! the month's spend stands against its cap.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use rust_decimal::Decimal;

/// A day and what was charged on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Day {
    pub date: NaiveDate,
    pub charged: Decimal,
}

/// Every day from `first` to `last` (inclusive), with the charges of `groups`
/// (day, amount) summed per day; days without usage are zero.
pub fn by_day(first: NaiveDate, last: NaiveDate, groups: impl IntoIterator<Item = (NaiveDate, Decimal)>) -> Vec<Day> {
    let mut sums: BTreeMap<NaiveDate, Decimal> = BTreeMap::new();
    for (date, amount) in groups {
        if (first..=last).contains(&date) {
            *sums.entry(date).or_default() += amount;
        }
    }
    first
        .iter_days()
        .take_while(|date| *date <= last)
        .map(|date| Day { date, charged: sums.get(&date).copied().unwrap_or_default() })
        .collect()
}

/// What one group of usage adds up to: its charged quantity and amount, and
/// what the wallet refused (uncovered).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub charged_quantity: Decimal,
    pub charged_amount: Decimal,
    pub uncovered_amount: Decimal,
}

/// One row of usage as the services answer it, reduced to what is summed.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub date: NaiveDate,
    pub meter: String,
    pub dimension: String,
    pub totals: Totals,
}

/// Totals by a key of each group (its meter, or its dimension's value), in
/// the key's order.
pub fn totals_by(groups: &[Group], key: impl Fn(&Group) -> &str) -> Vec<(String, Totals)> {
    let mut sums: BTreeMap<String, Totals> = BTreeMap::new();
    for group in groups {
        let sum = sums.entry(key(group).to_owned()).or_default();
        sum.charged_quantity += group.totals.charged_quantity;
        sum.charged_amount += group.totals.charged_amount;
        sum.uncovered_amount += group.totals.uncovered_amount;
    }
    sums.into_iter().collect()
}

/// The first and last day of the month `day` is in.
pub fn month_of(day: NaiveDate) -> (NaiveDate, NaiveDate) {
    let first = day.with_day(1).unwrap_or(day);
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    };
    (first, next.and_then(|next| next.pred_opt()).unwrap_or(first))
}

/// The cap's alert marks an amount has reached: 50, 80 and 100 percent.
pub const MARKS: [u32; 3] = [50, 80, 100];

/// How far `amount` is along `cap`, in whole percent (0 without a cap).
pub fn percent_of(amount: Decimal, cap: Decimal) -> u32 {
    if cap <= Decimal::ZERO {
        return 0;
    }
    let percent = (amount * Decimal::ONE_HUNDRED / cap).floor();
    u32::try_from(percent.mantissa() / 10_i128.pow(percent.scale())).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 2, day).unwrap_or_default()
    }

    #[test]
    fn every_day_of_the_period_has_a_figure_and_groups_of_a_day_add_up() {
        let days = by_day(
            date(1),
            date(28),
            [(date(3), Decimal::new(150, 2)), (date(3), Decimal::new(50, 2)), (date(10), Decimal::ONE)],
        );
        assert_eq!(days.len(), 28);
        assert_eq!(days[2], Day { date: date(3), charged: Decimal::new(200, 2) });
        assert_eq!(days[9].charged, Decimal::ONE);
        assert_eq!(days.iter().filter(|day| day.charged.is_zero()).count(), 26);
    }

    #[test]
    fn usage_adds_up_by_meter_and_by_dimension() {
        let group = |day: u32, meter: &str, dimension: &str, amount: i64| Group {
            date: date(day),
            meter: meter.into(),
            dimension: dimension.into(),
            totals: Totals {
                charged_quantity: Decimal::new(amount * 100, 0),
                charged_amount: Decimal::new(amount, 2),
                uncovered_amount: Decimal::ZERO,
            },
        };
        let groups = [group(1, "tokens", "large", 150), group(2, "tokens", "small", 50), group(2, "calls", "", 25)];
        let meters = totals_by(&groups, |group| &group.meter);
        assert_eq!(meters.iter().map(|(meter, _)| meter.as_str()).collect::<Vec<_>>(), ["calls", "tokens"]);
        assert_eq!(meters[1].1.charged_amount, Decimal::new(200, 2));
        assert_eq!(meters[1].1.charged_quantity, Decimal::new(20_000, 0));
        let values = totals_by(&groups, |group| &group.dimension);
        assert_eq!(values.len(), 3, "the empty value (no dimension) is a row of its own");
    }

    #[test]
    fn months_end_where_the_calendar_says() {
        assert_eq!(month_of(date(14)), (date(1), date(28)));
        let december = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap_or_default();
        assert_eq!(month_of(december).1, NaiveDate::from_ymd_opt(2026, 12, 31).unwrap_or_default());
    }

    #[test]
    fn percent_of_a_cap_is_rounded_down() {
        assert_eq!(percent_of(Decimal::new(7999, 2), Decimal::ONE_HUNDRED), 79);
        assert_eq!(percent_of(Decimal::new(150, 0), Decimal::ONE_HUNDRED), 150);
        assert_eq!(percent_of(Decimal::ONE, Decimal::ZERO), 0);
    }
}
