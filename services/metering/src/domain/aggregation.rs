//! How a meter adds up its events over a month, and so what quantity of an
//! event is billed. Charges stay real time: each event is billed for what
//! it adds to the month's figure (its increment), priced on top of the
//! figure before it, so a month's charges add up to the price of its total.
//! A LATEST meter alone waits for the month to end: only then is its figure
//! known.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Months, NaiveDate, Utc};
use reservoir_common::ids::AccountId;
use rust_decimal::Decimal;

/// A meter's aggregation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aggregation {
    /// The sum of the events' quantities.
    Sum,
    /// The number of events.
    Count,
    /// The month's peak quantity (seats, instances): an event above the
    /// peak so far is billed for the rise, any other for nothing.
    Max,
    /// The number of distinct values of one dimension in the month (users,
    /// devices): an event with a value not seen this month is billed for 1.
    UniqueCount { dimension: String },
    /// The month's last reported quantity (storage held at the month's end):
    /// events are recorded as they come and billed nothing; once the month
    /// has ended its latest quantity is billed once, by a closing event.
    Latest,
}

/// Why an event cannot be counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event has no `{0}` dimension, whose distinct values the meter counts")]
pub struct MissingDimension(pub String);

impl Aggregation {
    /// SUM, COUNT, MAX or UNIQUE_COUNT: as stored and shown.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sum => "SUM",
            Self::Count => "COUNT",
            Self::Max => "MAX",
            Self::UniqueCount { .. } => "UNIQUE_COUNT",
            Self::Latest => "LATEST",
        }
    }

    /// The dimension a UNIQUE_COUNT meter counts the values of.
    pub fn dimension(&self) -> Option<&str> {
        match self {
            Self::UniqueCount { dimension } => Some(dimension),
            _ => None,
        }
    }

    /// From the stored name and dimension; `None` if they do not fit together.
    pub fn from_parts(name: &str, dimension: Option<&str>) -> Option<Self> {
        match (name, dimension) {
            ("SUM", None) => Some(Self::Sum),
            ("COUNT", None) => Some(Self::Count),
            ("MAX", None) => Some(Self::Max),
            ("LATEST", None) => Some(Self::Latest),
            ("UNIQUE_COUNT", Some(dimension)) if !dimension.is_empty() => {
                Some(Self::UniqueCount { dimension: dimension.to_owned() })
            }
            _ => None,
        }
    }

    /// Whether an event's own quantity is read (SUM, MAX, LATEST); COUNT
    /// and UNIQUE_COUNT ignore it.
    pub fn reads_quantity(&self) -> bool {
        matches!(self, Self::Sum | Self::Max | Self::Latest)
    }

    /// Whether a quantity can be estimated and settled against a hold
    /// (Authorize): only for what adds up event by event.
    pub fn adds_up(&self) -> bool {
        matches!(self, Self::Sum | Self::Count)
    }

    /// What the events of a batch add to their counters, should all of them
    /// be new: known for a sum and a count; for a peak or a distinct count it
    /// depends on the month so far, so nothing is assumed (the counter is
    /// written once the events are billed).
    pub fn assumed_addition(&self, quantity: Decimal) -> Decimal {
        if self.adds_up() { quantity } else { Decimal::ZERO }
    }

    /// The value a UNIQUE_COUNT meter counts in `dimensions`.
    pub fn counted_value<'a>(
        &self,
        dimensions: &'a BTreeMap<String, String>,
    ) -> Result<Option<&'a str>, MissingDimension> {
        match self {
            Self::UniqueCount { dimension } => dimensions
                .get(dimension)
                .map(|value| Some(value.as_str()))
                .ok_or_else(|| MissingDimension(dimension.clone())),
            _ => Ok(None),
        }
    }

    /// The billed quantity of an event and the month's figure after it,
    /// given the figure before it. `first_seen` says, for UNIQUE_COUNT,
    /// whether the event's value is new this month.
    pub fn bill(&self, figure_before: Decimal, quantity: Decimal, first_seen: bool) -> Billed {
        let billed = match self {
            Self::Sum => quantity,
            Self::Count => Decimal::ONE,
            Self::Max => (quantity - figure_before).max(Decimal::ZERO),
            Self::UniqueCount { .. } => {
                if first_seen {
                    Decimal::ONE
                } else {
                    Decimal::ZERO
                }
            }
            Self::Latest => Decimal::ZERO,
        };
        Billed { quantity: billed, figure_after: figure_before + billed }
    }
}

/// The event that bills a LATEST meter's month once it has ended: one id
/// per account, meter and month, so closing a month twice bills it once.
pub fn closing_event_id(account: AccountId, meter_code: &str, month: &str) -> String {
    format!("{CLOSING_EVENT_PREFIX}{account}:{meter_code}:{month}")
}

/// What the ids of closing events begin with; no caller's event may.
pub const CLOSING_EVENT_PREFIX: &str = "latest:";

/// The last instant (to the microsecond) of a month written `YYYY-MM`: when
/// its closing event is dated, so it counts in that month.
pub fn month_end(month: &str) -> Option<DateTime<Utc>> {
    let first = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d").ok()?;
    let next = first.checked_add_months(Months::new(1))?.and_hms_opt(0, 0, 0)?.and_utc();
    Some(next - Duration::microseconds(1))
}

/// Whether a quantity reported at `at` by event `id` replaces the latest so
/// far: the later one does; at the same instant the greater event id, so
/// whatever order they arrive in, the same one is kept.
pub fn replaces_latest(at: DateTime<Utc>, id: &str, latest_at: DateTime<Utc>, latest_id: &str) -> bool {
    (at, id) > (latest_at, latest_id)
}

/// An event's billed quantity and the month's figure after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Billed {
    pub quantity: Decimal,
    pub figure_after: Decimal,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    #[test]
    fn a_peak_is_billed_for_each_rise_only() {
        let max = Aggregation::Max;
        let mut figure = Decimal::ZERO;
        let mut billed = Vec::new();
        for seats in ["3", "5", "4", "5", "9", "1"] {
            let step = max.bill(figure, d(seats), false);
            billed.push(step.quantity);
            figure = step.figure_after;
        }
        assert_eq!(billed, vec![d("3"), d("2"), d("0"), d("0"), d("4"), d("0")]);
        assert_eq!(figure, d("9"), "the month's figure is its peak");
    }

    #[test]
    fn a_distinct_count_bills_each_new_value_once() {
        let unique = Aggregation::UniqueCount { dimension: "user".into() };
        assert_eq!(unique.bill(d("4"), d("70"), true), Billed { quantity: d("1"), figure_after: d("5") });
        assert_eq!(unique.bill(d("5"), d("70"), false), Billed { quantity: d("0"), figure_after: d("5") });
        let dimensions = BTreeMap::from([("user".to_owned(), "ada".to_owned())]);
        assert_eq!(unique.counted_value(&dimensions), Ok(Some("ada")));
        assert_eq!(unique.counted_value(&BTreeMap::new()), Err(MissingDimension("user".into())));
        assert!(!unique.reads_quantity() && !unique.adds_up());
    }

    #[test]
    fn sums_and_counts_bill_what_they_always_did() {
        assert_eq!(Aggregation::Sum.bill(d("10"), d("2.5"), false).quantity, d("2.5"));
        assert_eq!(Aggregation::Count.bill(d("10"), d("7"), false), Billed { quantity: d("1"), figure_after: d("11") });
        assert_eq!(Aggregation::Sum.assumed_addition(d("2.5")), d("2.5"));
        assert_eq!(Aggregation::Max.assumed_addition(d("2.5")), Decimal::ZERO);
    }

    #[test]
    fn the_latest_quantity_is_the_last_reported_whatever_the_order_it_came_in() {
        use chrono::TimeZone;
        let at = |day| Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0).unwrap();
        assert!(replaces_latest(at(3), "a", at(2), "z"));
        assert!(!replaces_latest(at(1), "z", at(2), "a"));
        assert!(replaces_latest(at(2), "b", at(2), "a"), "the same instant: the greater id");
        assert!(!replaces_latest(at(2), "a", at(2), "b"));
        assert_eq!(
            Aggregation::Latest.bill(d("0"), d("80"), false).quantity,
            Decimal::ZERO,
            "billed at the month's end"
        );
        assert_eq!(
            month_end("2026-11"),
            Some(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap() - Duration::microseconds(1))
        );
        assert_eq!(month_end("2026-12").map(|end| end.to_rfc3339()), Some("2026-12-31T23:59:59.999999+00:00".into()));
        assert_eq!(month_end("2026-13"), None);
        let account = AccountId(uuid::Uuid::nil());
        assert_eq!(closing_event_id(account, "storage", "2026-11"), format!("latest:{account}:storage:2026-11"));
    }

    #[test]
    fn stored_names_read_back() {
        for aggregation in [
            Aggregation::Sum,
            Aggregation::Count,
            Aggregation::Max,
            Aggregation::UniqueCount { dimension: "u".into() },
            Aggregation::Latest,
        ] {
            assert_eq!(Aggregation::from_parts(aggregation.name(), aggregation.dimension()), Some(aggregation));
        }
        assert_eq!(Aggregation::from_parts("UNIQUE_COUNT", None), None);
        assert_eq!(Aggregation::from_parts("SUM", Some("u")), None);
    }
}
