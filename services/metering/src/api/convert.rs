//! Stored and domain values → wire messages.

use reservoir_common::time::to_timestamp;
use reservoir_proto::metering as pb;
use rust_decimal::Decimal;

use crate::domain::{Aggregation, AuthorizationStatus, EventStatus, PriceVersion, Schedule, UsageGroup};
use crate::error::MeteringError;
use crate::store::{AuthorizationRow, MeterRow, StoredEvent};

fn decimal(value: Decimal) -> String {
    value.normalize().to_string()
}

pub fn meter_to_pb(meter: &MeterRow) -> pb::Meter {
    pb::Meter {
        code: meter.code.clone(),
        unit_name: meter.unit_name.clone(),
        aggregation: match meter.aggregation {
            Aggregation::Sum => pb::Aggregation::Sum,
            Aggregation::Count => pb::Aggregation::Count,
            Aggregation::Max => pb::Aggregation::Max,
            Aggregation::UniqueCount { .. } => pb::Aggregation::UniqueCount,
            Aggregation::Latest => pb::Aggregation::Latest,
        }
        .into(),
        description: meter.description.clone(),
        created_at: Some(to_timestamp(meter.created_at)),
        value_dimension: meter.aggregation.dimension().unwrap_or_default().to_owned(),
    }
}

fn tiers_to_pb(schedule: &Schedule) -> Vec<pb::Tier> {
    schedule
        .tiers()
        .iter()
        .map(|tier| pb::Tier {
            up_to: tier.up_to.map(decimal).unwrap_or_default(),
            unit_price: decimal(tier.unit_price),
        })
        .collect()
}

pub fn price_to_pb(meter_code: &str, version: &PriceVersion) -> pb::Price {
    pb::Price {
        meter_code: meter_code.to_owned(),
        effective_from: Some(to_timestamp(version.effective_from)),
        tiers: tiers_to_pb(&version.base),
        overrides: version
            .overrides
            .iter()
            .map(|o| pb::DimensionPrice { key: o.key.clone(), value: o.value.clone(), tiers: tiers_to_pb(&o.schedule) })
            .collect(),
        created_at: None,
    }
}

fn status_to_pb(status: EventStatus) -> pb::EventStatus {
    match status {
        EventStatus::Pending => pb::EventStatus::Pending,
        EventStatus::Charged => pb::EventStatus::Charged,
        EventStatus::Uncovered => pb::EventStatus::Uncovered,
    }
}

/// The answer for an event: its own status, or DUPLICATE with it as the original.
pub fn event_result(event: &StoredEvent, duplicate: bool) -> pb::EventResult {
    let status = status_to_pb(event.status);
    pb::EventResult {
        event_id: event.event_id.clone(),
        status: if duplicate { pb::EventStatus::Duplicate } else { status }.into(),
        amount: decimal(event.amount),
        entry_ids: event.entry_ids.clone(),
        reason: event.reason.clone(),
        field: String::new(),
        original_status: if duplicate { status.into() } else { pb::EventStatus::Unspecified.into() },
    }
}

pub fn authorization_to_pb(row: &AuthorizationRow) -> pb::Authorization {
    // The wire has no state for PENDING and REFUSED (a hold not yet, or not
    // again, asked for); they read as ACTIVE, as they always have.
    let status = match row.status {
        AuthorizationStatus::Settling => pb::AuthorizationStatus::Settling,
        AuthorizationStatus::Settled => pb::AuthorizationStatus::Settled,
        AuthorizationStatus::Expired => pb::AuthorizationStatus::Expired,
        AuthorizationStatus::Pending | AuthorizationStatus::Active | AuthorizationStatus::Refused => {
            pb::AuthorizationStatus::Active
        }
    };
    pb::Authorization {
        id: row.id.to_string(),
        account_id: row.account_id.to_string(),
        meter_code: row.meter_code.clone(),
        estimated_quantity: decimal(row.estimated_quantity),
        estimated_amount: decimal(row.estimated_amount),
        hold_id: row.hold_id.map(|id| id.to_string()).unwrap_or_default(),
        status: status.into(),
        expires_at: Some(to_timestamp(row.expires_at)),
        actual_quantity: row.actual_quantity.map(decimal).unwrap_or_default(),
        charged_amount: row.charged_amount.map(decimal).unwrap_or_default(),
        uncovered_amount: row.uncovered_amount.map(decimal).unwrap_or_default(),
        dimensions: row.dimensions.clone(),
    }
}

pub fn usage_group_to_pb(group: &UsageGroup) -> pb::UsageGroup {
    pb::UsageGroup {
        period_start: group.period_start.map(to_timestamp),
        meter_code: group.meter_code.clone(),
        dimension_value: group.dimension_value.clone(),
        charged_quantity: decimal(group.charged_quantity),
        charged_amount: decimal(group.charged_amount),
        uncovered_quantity: decimal(group.uncovered_quantity),
        uncovered_amount: decimal(group.uncovered_amount),
        pending_quantity: decimal(group.pending_quantity),
        pending_amount: decimal(group.pending_amount),
        event_count: group.event_count,
    }
}

/// Usage groups as CSV, a header line first.
pub fn usage_csv(groups: &[pb::UsageGroup]) -> Result<String, MeteringError> {
    let mut writer = reservoir_common::spreadsheet::SafeWriter::new();
    let failed = |error: csv::Error| MeteringError::internal(format!("writing CSV: {error}"));
    writer
        .write_record([
            "period_start",
            "meter_code",
            "dimension_value",
            "charged_quantity",
            "charged_amount",
            "uncovered_quantity",
            "uncovered_amount",
            "pending_quantity",
            "pending_amount",
            "event_count",
        ])
        .map_err(failed)?;
    for group in groups {
        let start = group
            .period_start
            .as_ref()
            .and_then(reservoir_common::time::from_timestamp)
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        writer
            .write_record([
                start,
                group.meter_code.clone(),
                group.dimension_value.clone(),
                group.charged_quantity.clone(),
                group.charged_amount.clone(),
                group.uncovered_quantity.clone(),
                group.uncovered_amount.clone(),
                group.pending_quantity.clone(),
                group.pending_amount.clone(),
                group.event_count.to_string(),
            ])
            .map_err(failed)?;
    }
    let bytes = writer.into_inner().map_err(|error| MeteringError::internal(format!("writing CSV: {error}")))?;
    String::from_utf8(bytes).map_err(|error| MeteringError::internal(format!("CSV is not UTF-8: {error}")))
}
