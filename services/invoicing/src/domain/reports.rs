//! Scheduled billing reports: how often, and which period each run covers.
//! Periods are UTC days, ISO weeks (Monday to Monday) and calendar months;
//! a run reports the period that has just ended.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frequency {
    Daily,
    Weekly,
    Monthly,
}

impl Frequency {
    pub fn name(self) -> &'static str {
        match self {
            Self::Daily => "DAILY",
            Self::Weekly => "WEEKLY",
            Self::Monthly => "MONTHLY",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "DAILY" => Some(Self::Daily),
            "WEEKLY" => Some(Self::Weekly),
            "MONTHLY" => Some(Self::Monthly),
            _ => None,
        }
    }

    /// The start of the period `at` falls in.
    pub fn period_start(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let midnight =
            |year: i32, month: u32, day: u32| Utc.with_ymd_and_hms(year, month, day, 0, 0, 0).single().unwrap_or(at);
        let day = midnight(at.year(), at.month(), at.day());
        match self {
            Self::Daily => day,
            Self::Weekly => day - Duration::days(i64::from(at.weekday().num_days_from_monday())),
            Self::Monthly => midnight(at.year(), at.month(), 1),
        }
    }

    /// The start of the period after the one `at` falls in.
    pub fn next_start(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let start = self.period_start(at);
        match self {
            Self::Daily => start + Duration::days(1),
            Self::Weekly => start + Duration::days(7),
            // The 1st plus 32 days is always in the next month.
            Self::Monthly => self.period_start(start + Duration::days(32)),
        }
    }

    /// The period that ended at `end` (a period boundary).
    pub fn period_ending(self, end: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        (self.period_start(end - Duration::seconds(1)), end)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn each_frequency_reports_the_period_that_just_ended() {
        let now = at("2026-12-03T08:30:00Z"); // a Thursday
        assert_eq!(Frequency::Daily.next_start(now), at("2026-12-04T00:00:00Z"));
        assert_eq!(Frequency::Weekly.next_start(now), at("2026-12-07T00:00:00Z"));
        assert_eq!(Frequency::Monthly.next_start(now), at("2027-01-01T00:00:00Z"));
        assert_eq!(
            Frequency::Daily.period_ending(at("2026-12-04T00:00:00Z")),
            (at("2026-12-03T00:00:00Z"), at("2026-12-04T00:00:00Z"))
        );
        assert_eq!(
            Frequency::Weekly.period_ending(at("2026-12-07T00:00:00Z")),
            (at("2026-11-30T00:00:00Z"), at("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            Frequency::Monthly.period_ending(at("2027-01-01T00:00:00Z")),
            (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        assert_eq!(Frequency::Monthly.next_start(at("2027-01-31T23:00:00Z")), at("2027-02-01T00:00:00Z"));
        assert_eq!(Frequency::parse("WEEKLY"), Some(Frequency::Weekly));
    }
}
