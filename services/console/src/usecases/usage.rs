//! An account's usage over a chosen period: by day, by meter, and by the
//! value of a chosen dimension.

use chrono::NaiveDate;
use reservoir_proto::{metering, wallet};
use rust_decimal::Decimal;

use super::account::span;
use crate::clients::{Upstream, usage_query};
use crate::domain::usage::{Day, Group, Totals, by_day, totals_by};
use crate::error::ConsoleError;

/// The longest period metering answers for.
const LONGEST_DAYS: i64 = 366;

pub struct UsageView {
    pub account: wallet::Account,
    pub first: NaiveDate,
    pub last: NaiveDate,
    pub dimension_key: String,
    pub days: Vec<Day>,
    pub by_meter: Vec<(String, Totals)>,
    /// By the dimension's value, when one was asked for.
    pub by_dimension: Vec<(String, Totals)>,
}

/// The period a page asks for: both days given (first to last, inclusive), or
/// the month of `today`; refused, naming the field, when it cannot be.
pub fn period(from: &str, to: &str, today: NaiveDate) -> Result<(NaiveDate, NaiveDate), ConsoleError> {
    let day = |field: &'static str, text: &str| {
        NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
            .map_err(|_| ConsoleError::invalid(field, format!("{text:?} is not a date (YYYY-MM-DD)")))
    };
    let (first, last) = match (from.trim(), to.trim()) {
        ("", "") => crate::domain::usage::month_of(today),
        (from, to) => (day("from", from)?, day("to", to)?),
    };
    if last < first {
        return Err(ConsoleError::invalid("to", "the period ends before it starts"));
    }
    if (last - first).num_days() >= LONGEST_DAYS {
        return Err(ConsoleError::invalid("to", format!("a period is at most {LONGEST_DAYS} days")));
    }
    Ok((first, last))
}

fn amount(text: &str) -> Decimal {
    text.parse().unwrap_or_default()
}

fn group(usage: &metering::UsageGroup) -> Option<Group> {
    Some(Group {
        date: usage.period_start.as_ref().and_then(reservoir_common::time::from_timestamp)?.date_naive(),
        meter: usage.meter_code.clone(),
        dimension: usage.dimension_value.clone(),
        totals: Totals {
            charged_quantity: amount(&usage.charged_quantity),
            charged_amount: amount(&usage.charged_amount),
            uncovered_amount: amount(&usage.uncovered_amount),
        },
    })
}

pub async fn usage_view(
    upstream: &Upstream,
    key: &str,
    account_id: &str,
    (first, last): (NaiveDate, NaiveDate),
    dimension_key: &str,
) -> Result<UsageView, ConsoleError> {
    let (start, end) = span(first, last);
    let query = usage_query(account_id, start, end, dimension_key);
    let (account, usage) = tokio::try_join!(upstream.account(key, account_id), upstream.usage(key, query))?;
    let groups: Vec<Group> = usage.iter().filter_map(group).collect();
    let days = by_day(first, last, groups.iter().map(|group| (group.date, group.totals.charged_amount)));
    let by_meter = totals_by(&groups, |group| &group.meter);
    let by_dimension = if dimension_key.is_empty() { Vec::new() } else { totals_by(&groups, |group| &group.dimension) };
    Ok(UsageView { account, first, last, dimension_key: dimension_key.to_owned(), days, by_meter, by_dimension })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap_or_default()
    }

    #[test]
    fn a_period_is_the_month_or_two_days_in_order() {
        assert_eq!(period("", "", date("2026-02-14")).ok(), Some((date("2026-02-01"), date("2026-02-28"))));
        assert_eq!(
            period("2026-01-30", "2026-02-02", date("2026-12-07")).ok(),
            Some((date("2026-01-30"), date("2026-02-02")))
        );
        let field = |from: &str, to: &str| match period(from, to, date("2026-12-07")) {
            Err(ConsoleError::Invalid { field, .. }) => field,
            _ => "",
        };
        assert_eq!(field("2026-13-01", "2026-12-01"), "from");
        assert_eq!(field("2026-12-05", "2026-12-01"), "to");
        assert_eq!(field("2025-01-01", "2026-12-01"), "to");
        assert_eq!(field("2026-12-01", ""), "to");
    }
}
