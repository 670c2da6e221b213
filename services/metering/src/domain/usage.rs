//! Usage events as stored, and their grouping for reports.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

/// Where an accepted event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// Stored and priced; its debit is not yet known to be done.
    Pending,
    /// Drawn from the wallet.
    Charged,
    /// The wallet refused (all or part of) it; kept to be billed.
    Uncovered,
}

impl EventStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Charged => "CHARGED",
            Self::Uncovered => "UNCOVERED",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "PENDING" => Some(Self::Pending),
            "CHARGED" => Some(Self::Charged),
            "UNCOVERED" => Some(Self::Uncovered),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn start_of(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let (year, month, day) = match self {
            Self::Day => (at.year(), at.month(), at.day()),
            Self::Month => (at.year(), at.month(), 1),
        };
        Utc.with_ymd_and_hms(year, month, day, 0, 0, 0).single().unwrap_or(at)
    }
}

/// One stored event, as a report sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    pub meter_code: String,
    pub occurred_at: DateTime<Utc>,
    pub quantity: Decimal,
    pub status: EventStatus,
    /// The priced amount.
    pub amount: Decimal,
    /// What the wallet covered, and what it did not (a settlement may split).
    pub charged_amount: Decimal,
    pub uncovered_amount: Decimal,
    pub dimensions: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageGroup {
    pub period_start: Option<DateTime<Utc>>,
    pub meter_code: String,
    pub dimension_value: String,
    pub charged_quantity: Decimal,
    pub charged_amount: Decimal,
    pub uncovered_quantity: Decimal,
    pub uncovered_amount: Decimal,
    pub pending_quantity: Decimal,
    pub pending_amount: Decimal,
    pub event_count: u64,
}

/// Groups events by period, meter and, when asked, one dimension's value,
/// keeping charged, uncovered and pending usage apart. Groups come out in
/// time order, then by meter, then by dimension value.
pub fn group_usage(records: &[UsageRecord], period: Period, dimension_key: Option<&str>) -> Vec<UsageGroup> {
    let mut groups: BTreeMap<(DateTime<Utc>, String, String), UsageGroup> = BTreeMap::new();
    for record in records {
        let start = period.start_of(record.occurred_at);
        let value = dimension_key.and_then(|key| record.dimensions.get(key)).cloned().unwrap_or_default();
        let group = groups.entry((start, record.meter_code.clone(), value.clone())).or_insert_with(|| UsageGroup {
            period_start: Some(start),
            meter_code: record.meter_code.clone(),
            dimension_value: value,
            ..UsageGroup::default()
        });
        group.event_count += 1;
        match record.status {
            EventStatus::Pending => {
                group.pending_quantity += record.quantity;
                group.pending_amount += record.amount;
            }
            EventStatus::Charged => {
                group.charged_quantity += record.quantity;
                group.charged_amount += record.charged_amount;
            }
            EventStatus::Uncovered => {
                group.uncovered_quantity += record.quantity;
                group.charged_amount += record.charged_amount;
                group.uncovered_amount += record.uncovered_amount;
            }
        }
    }
    groups.into_values().collect()
}

/// The wallet's idempotency key for a debit metering makes: the purpose and a
/// digest of what it is for, so any event id fits the wallet's key length.
pub fn wallet_key(purpose: &str, id: &str) -> String {
    let digest = hex::encode(Sha256::digest(id.as_bytes()));
    format!("{purpose}:{}", &digest[..48])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record(day: u32, status: EventStatus, quantity: i64, model: &str) -> UsageRecord {
        let amount = Decimal::from(quantity);
        UsageRecord {
            meter_code: "tokens".into(),
            occurred_at: Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0).unwrap(),
            quantity: amount,
            status,
            amount,
            charged_amount: if status == EventStatus::Charged { amount } else { Decimal::ZERO },
            uncovered_amount: if status == EventStatus::Uncovered { amount } else { Decimal::ZERO },
            dimensions: BTreeMap::from([("model".to_owned(), model.to_owned())]),
        }
    }

    #[test]
    fn usage_groups_by_day_and_dimension_keeping_charged_and_uncovered_apart() {
        let records = vec![
            record(1, EventStatus::Charged, 5, "large"),
            record(1, EventStatus::Uncovered, 2, "large"),
            record(1, EventStatus::Charged, 1, "small"),
            record(2, EventStatus::Pending, 3, "large"),
        ];
        let groups = group_usage(&records, Period::Day, Some("model"));
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0].dimension_value, "large");
        assert_eq!((groups[0].charged_quantity, groups[0].uncovered_quantity), (Decimal::from(5), Decimal::from(2)));
        assert_eq!(groups[0].uncovered_amount, Decimal::from(2));
        assert_eq!(groups[1].dimension_value, "small");
        assert_eq!(groups[2].pending_amount, Decimal::from(3));
        let monthly = group_usage(&records, Period::Month, None);
        assert_eq!(monthly.len(), 1);
        assert_eq!(monthly[0].event_count, 4);
        assert_eq!(monthly[0].charged_amount, Decimal::from(6));
    }
}
