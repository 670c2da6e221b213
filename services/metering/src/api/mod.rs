//! gRPC handlers of the metering service.

mod convert;
mod status;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use reservoir_common::auth::{TenantId, tenant_of};
use reservoir_common::idempotency::{Replayed, decode_encoded, request_hash};
use reservoir_common::ids::AccountId;
use reservoir_common::validate::Violations;
use reservoir_proto::metering as pb;
use reservoir_proto::metering::metering_service_server::MeteringService;
use rust_decimal::Decimal;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use self::convert::*;
use crate::clients::wallet::WalletGateway;
use crate::domain::{
    Aggregation, CLOSING_EVENT_PREFIX, OVERRIDES_MAX, Override, Period, PriceVersion, QUANTITY_SCALE_MAX, Schedule,
    Tier, UNIT_PRICE_SCALE_MAX, group_usage, price_at,
};
use crate::error::MeteringError;
use crate::store::{MeterRow, Store};
use crate::usecases::accounts::Accounts;
use crate::usecases::authorizations::{Authorizations, Authorize};
use crate::usecases::ingest::{Checked, EventOutcome, Ingestion, UsageEvent};
use crate::usecases::meter;

/// Events per IngestEvents: one BatchDebit of the wallet.
pub const EVENTS_PER_CALL_MAX: usize = 1_000;
/// Event ids: a UUID or the caller's own id with room to spare.
const EVENT_ID_LENGTH_MAX: usize = 128;
/// Dimensions per event, and their key and value lengths.
const DIMENSIONS_MAX: usize = 16;
const DIMENSION_KEY_LENGTH_MAX: usize = 64;
const DIMENSION_VALUE_LENGTH_MAX: usize = 256;
/// How far ahead of the server's clock an event may claim to have happened.
const CLOCK_SKEW_SECONDS_MAX: i64 = 300;
/// Authorization lifetimes: a second to a day; five minutes when unset.
const AUTHORIZATION_TTL_SECONDS_MAX: u32 = 86_400;
const AUTHORIZATION_TTL_SECONDS_DEFAULT: u32 = 300;
/// Usage reports span at most a year.
const USAGE_RANGE_DAYS_MAX: i64 = 366;
const NAME_LENGTH_MAX: usize = 64;
const DESCRIPTION_LENGTH_MAX: usize = 512;

#[derive(Clone)]
pub struct MeteringApi {
    store: Store,
    ingestion: Ingestion,
    authorizations: Authorizations,
}

use reservoir_common::time::now;

/// A quantity: zero or more (positive where `positive`), up to 8 decimals.
fn quantity(violations: &mut Violations, field: &str, text: &str, positive: bool) -> Option<Decimal> {
    violations.amount_with(field, text, |text| {
        let value = reservoir_common::money::parse_amount(text, QUANTITY_SCALE_MAX)?;
        if positive { reservoir_common::money::positive(value) } else { reservoir_common::money::non_negative(value) }
    })
}

fn dimensions(violations: &mut Violations, field: &str, dimensions: &BTreeMap<String, String>) {
    violations.map(field, dimensions, DIMENSIONS_MAX, DIMENSION_KEY_LENGTH_MAX, DIMENSION_VALUE_LENGTH_MAX);
}

fn schedule_from(violations: &mut Violations, field: &str, tiers: &[pb::Tier]) -> Option<Schedule> {
    let mut parsed = Vec::new();
    for (index, tier) in tiers.iter().enumerate() {
        let unit_price = violations.amount_with(&format!("{field}[{index}].unit_price"), &tier.unit_price, |text| {
            reservoir_common::money::parse_amount(text, UNIT_PRICE_SCALE_MAX)
                .and_then(reservoir_common::money::non_negative)
        });
        let up_to = if tier.up_to.is_empty() {
            None
        } else {
            quantity(violations, &format!("{field}[{index}].up_to"), &tier.up_to, true)
        };
        if let Some(unit_price) = unit_price {
            parsed.push(Tier { up_to, unit_price });
        }
    }
    if parsed.len() != tiers.len() {
        return None;
    }
    match Schedule::new(parsed) {
        Ok(schedule) => Some(schedule),
        Err(error) => {
            violations.add(field, error.to_string());
            None
        }
    }
}

impl MeteringApi {
    pub fn new(store: Store, wallet: WalletGateway) -> Self {
        let accounts = Accounts::new(store.clone(), wallet.clone());
        let ingestion = Ingestion::start(store.clone(), wallet.clone(), accounts.clone());
        let authorizations = Authorizations::new(store.clone(), wallet, accounts);
        Self { store, ingestion, authorizations }
    }

    /// Ingests one batch: checks each event's own fields here, then has the
    /// use case price, store and draw the well-formed ones; or,
    /// `asynchronously`, answer once they are stored.
    pub async fn ingest(
        &self,
        tenant: TenantId,
        events: Vec<pb::UsageEvent>,
        asynchronously: bool,
    ) -> Result<Vec<pb::EventResult>, MeteringError> {
        if events.is_empty() || events.len() > EVENTS_PER_CALL_MAX {
            return Err(MeteringError::field("events", format!("must hold 1 to {EVENTS_PER_CALL_MAX} events")));
        }
        let now = now();
        let event_ids: Vec<String> = events.iter().map(|event| event.event_id.clone()).collect();
        let checked = events.into_iter().map(|event| check_event(event, now)).collect();
        let outcomes = self.ingestion.ingest(tenant, checked, now, asynchronously).await?;
        Ok(event_ids
            .into_iter()
            .zip(outcomes)
            .map(|(event_id, outcome)| match outcome {
                EventOutcome::Invalid { field, reason } => pb::EventResult {
                    event_id,
                    status: pb::EventStatus::Invalid.into(),
                    field,
                    reason,
                    ..Default::default()
                },
                EventOutcome::Accepted(event) => {
                    pb::EventResult { status: pb::EventStatus::Accepted.into(), ..event_result(&event, false) }
                }
                EventOutcome::Drawn(event) => event_result(&event, false),
                EventOutcome::Duplicate(event) => event_result(&event, true),
            })
            .collect())
    }

    fn parse_price(
        violations: &mut Violations,
        effective_from: DateTime<Utc>,
        tiers: &[pb::Tier],
        overrides: &[pb::DimensionPrice],
    ) -> Option<PriceVersion> {
        let base = schedule_from(violations, "tiers", tiers);
        if overrides.len() > OVERRIDES_MAX {
            violations.add("overrides", format!("has more than {OVERRIDES_MAX} overrides"));
        }
        let mut parsed = Vec::new();
        for (index, o) in overrides.iter().enumerate() {
            violations.required_text(&format!("overrides[{index}].key"), &o.key, DIMENSION_KEY_LENGTH_MAX);
            violations.required_text(&format!("overrides[{index}].value"), &o.value, DIMENSION_VALUE_LENGTH_MAX);
            if let Some(schedule) = schedule_from(violations, &format!("overrides[{index}].tiers"), &o.tiers) {
                parsed.push(Override { key: o.key.clone(), value: o.value.clone(), schedule });
            }
        }
        Some(PriceVersion { effective_from, base: base?, overrides: parsed })
    }
}

#[tonic::async_trait]
impl MeteringService for MeteringApi {
    async fn create_meter(
        &self,
        request: Request<pb::CreateMeterRequest>,
    ) -> Result<Response<pb::CreateMeterResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        violations.required_text("code", &request.code, reservoir_common::validate::METER_CODE_LENGTH_MAX);
        violations.meter_code("code", &request.code);
        violations.required_text("unit_name", &request.unit_name, NAME_LENGTH_MAX);
        violations.text("description", &request.description, DESCRIPTION_LENGTH_MAX);
        let dimension = request.value_dimension.as_str();
        let aggregation = match pb::Aggregation::try_from(request.aggregation) {
            Ok(pb::Aggregation::Sum) => Some(Aggregation::Sum),
            Ok(pb::Aggregation::Count) => Some(Aggregation::Count),
            Ok(pb::Aggregation::Max) => Some(Aggregation::Max),
            Ok(pb::Aggregation::Latest) => Some(Aggregation::Latest),
            Ok(pb::Aggregation::UniqueCount) => {
                violations.required_text("value_dimension", dimension, DIMENSION_KEY_LENGTH_MAX);
                Some(Aggregation::UniqueCount { dimension: dimension.to_owned() })
            }
            _ => {
                violations.add("aggregation", "must be SUM, COUNT, MAX, UNIQUE_COUNT or LATEST");
                None
            }
        };
        if !dimension.is_empty() && aggregation.as_ref().is_some_and(|aggregation| aggregation.dimension().is_none()) {
            violations.add("value_dimension", "is only for a UNIQUE_COUNT meter");
        }
        violations.finish().map_err(MeteringError::from)?;
        let meter = self
            .store
            .create_meter(
                tenant,
                MeterRow {
                    id: Uuid::now_v7(),
                    code: request.code,
                    unit_name: request.unit_name,
                    aggregation: aggregation.unwrap_or(Aggregation::Sum),
                    description: request.description,
                    created_at: now(),
                },
            )
            .await?;
        Ok(Response::new(pb::CreateMeterResponse { meter: Some(meter_to_pb(&meter)) }))
    }

    async fn list_meters(
        &self,
        request: Request<pb::ListMetersRequest>,
    ) -> Result<Response<pb::ListMetersResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let meters = self.store.meters(tenant).await?;
        Ok(Response::new(pb::ListMetersResponse { meters: meters.iter().map(meter_to_pb).collect() }))
    }

    async fn set_price(&self, request: Request<pb::SetPriceRequest>) -> Result<Response<pb::SetPriceResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let now = now();
        let mut violations = Violations::default();
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        let effective_from = violations.time("effective_from", request.effective_from.as_ref()).unwrap_or(now);
        if effective_from < now {
            violations.add("effective_from", "must not be in the past: charges already made keep their price");
        }
        let version = Self::parse_price(&mut violations, effective_from, &request.tiers, &request.overrides);
        violations.finish().map_err(MeteringError::from)?;
        let hash = request_hash(&request);
        // A price is never changed once set, so the instant it starts at
        // finds the price an earlier call set.
        let replayed = self.store.replay::<DateTime<Utc>>(tenant, &request.idempotency_key, "SetPrice", &hash).await?;
        if let Some(Replayed::Encoded(encoded)) = &replayed {
            return Ok(Response::new(decode_encoded(encoded).map_err(MeteringError::internal)?));
        }
        let meter = meter(&self.store, tenant, "meter_code", &request.meter_code).await?;
        if let Some(Replayed::Answer(effective_from)) = replayed {
            let prices = self.store.prices(meter.id).await?;
            let version = prices
                .iter()
                .find(|version| version.effective_from == effective_from)
                .ok_or_else(|| MeteringError::internal("the price a replay names is missing"))?;
            return Ok(Response::new(pb::SetPriceResponse { price: Some(price_to_pb(&meter.code, version)) }));
        }
        let Some(version) = version else {
            return Err(MeteringError::internal("a checked price went missing").into());
        };
        self.store.add_price(tenant, meter.id, &version, now).await?;
        let response = pb::SetPriceResponse { price: Some(price_to_pb(&meter.code, &version)) };
        self.store.record(tenant, &request.idempotency_key, "SetPrice", &hash, &version.effective_from, now).await?;
        Ok(Response::new(response))
    }

    async fn get_price(&self, request: Request<pb::GetPriceRequest>) -> Result<Response<pb::GetPriceResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let at = violations.time("at", request.at.as_ref()).unwrap_or_else(now);
        violations.finish().map_err(MeteringError::from)?;
        let meter = meter(&self.store, tenant, "meter_code", &request.meter_code).await?;
        let schedule = self.store.prices(meter.id).await?;
        Ok(Response::new(pb::GetPriceResponse {
            price: price_at(&schedule, at).map(|version| price_to_pb(&meter.code, version)),
            schedule: schedule.iter().map(|version| price_to_pb(&meter.code, version)).collect(),
        }))
    }

    async fn ingest_events(
        &self,
        request: Request<pb::IngestEventsRequest>,
    ) -> Result<Response<pb::IngestEventsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let results = self.ingest(tenant, request.events, request.asynchronous).await?;
        let mut by_status: std::collections::BTreeMap<i32, u64> = std::collections::BTreeMap::new();
        for result in &results {
            *by_status.entry(result.status).or_default() += 1;
        }
        for (status, count) in by_status {
            let status = pb::EventStatus::try_from(status).unwrap_or(pb::EventStatus::Unspecified);
            metrics::counter!("reservoir_metering_events_total", "status" => status_label(status)).increment(count);
        }
        Ok(Response::new(pb::IngestEventsResponse { results }))
    }

    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let now = now();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        let estimate = quantity(&mut violations, "estimated_quantity", &request.estimated_quantity, true);
        dimensions(&mut violations, "dimensions", &request.dimensions);
        let ttl_seconds =
            if request.ttl_seconds == 0 { AUTHORIZATION_TTL_SECONDS_DEFAULT } else { request.ttl_seconds };
        if ttl_seconds > AUTHORIZATION_TTL_SECONDS_MAX {
            violations.add("ttl_seconds", format!("must be 1 to {AUTHORIZATION_TTL_SECONDS_MAX}"));
        }
        violations.finish().map_err(MeteringError::from)?;
        let (Some(account_id), Some(estimate)) = (account_id, estimate) else {
            return Err(MeteringError::internal("checked fields went missing").into());
        };
        let ask = Authorize {
            account_id,
            meter_code: request.meter_code.clone(),
            estimated_quantity: estimate,
            dimensions: request.dimensions.clone(),
            ttl_seconds,
            idempotency_key: request.idempotency_key.clone(),
            request_hash: request_hash(&request),
        };
        let authorization = self.authorizations.authorize(tenant, ask, now).await?;
        Ok(Response::new(pb::AuthorizeResponse { authorization: Some(authorization_to_pb(&authorization)) }))
    }

    async fn settle(&self, request: Request<pb::SettleRequest>) -> Result<Response<pb::SettleResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let now = now();
        let mut violations = Violations::default();
        let id = violations.id("authorization_id", &request.authorization_id, |id| id);
        let actual = quantity(&mut violations, "actual_quantity", &request.actual_quantity, false);
        violations.finish().map_err(MeteringError::from)?;
        let (Some(id), Some(actual)) = (id, actual) else {
            return Err(MeteringError::internal("checked fields went missing").into());
        };
        let (authorization, event) = self.authorizations.settle(tenant, id, actual, now).await?;
        Ok(Response::new(pb::SettleResponse {
            authorization: Some(authorization_to_pb(&authorization)),
            result: Some(event_result(&event, false)),
        }))
    }

    async fn get_usage(&self, request: Request<pb::GetUsageRequest>) -> Result<Response<pb::GetUsageResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let groups = self.usage(tenant, &request.into_inner()).await?;
        Ok(Response::new(pb::GetUsageResponse { groups }))
    }

    async fn export_usage(
        &self,
        request: Request<pb::ExportUsageRequest>,
    ) -> Result<Response<pb::ExportUsageResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let query = request.into_inner().query.ok_or_else(|| MeteringError::field("query", "is required"))?;
        let groups = self.usage(tenant, &query).await?;
        Ok(Response::new(pb::ExportUsageResponse { csv: usage_csv(&groups)? }))
    }
}

impl MeteringApi {
    async fn usage(
        &self,
        tenant: TenantId,
        request: &pb::GetUsageRequest,
    ) -> Result<Vec<pb::UsageGroup>, MeteringError> {
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        let start = violations.time("start_time", request.start_time.as_ref());
        let end = violations.time("end_time", request.end_time.as_ref());
        match (start, end) {
            (Some(start), Some(end)) if end <= start => violations.add("end_time", "must be after start_time"),
            (Some(start), Some(end)) if end - start > Duration::days(USAGE_RANGE_DAYS_MAX) => {
                violations.add("end_time", format!("must be at most {USAGE_RANGE_DAYS_MAX} days after start_time"))
            }
            (None, _) => violations.add("start_time", "is required"),
            (_, None) => violations.add("end_time", "is required"),
            _ => {}
        }
        violations.text("dimension_key", &request.dimension_key, DIMENSION_KEY_LENGTH_MAX);
        let period = match pb::Period::try_from(request.group_by) {
            Ok(pb::Period::Month) => Period::Month,
            Ok(pb::Period::Day | pb::Period::Unspecified) => Period::Day,
            Err(_) => {
                violations.add("group_by", "must be DAY or MONTH");
                Period::Day
            }
        };
        violations.finish()?;
        let (Some(account_id), Some(start), Some(end)) = (account_id, start, end) else {
            return Err(MeteringError::internal("checked fields went missing"));
        };
        let meter = (!request.meter_code.is_empty()).then_some(request.meter_code.as_str());
        let records = self.store.usage(tenant, account_id, meter, start, end).await?;
        let dimension = (!request.dimension_key.is_empty()).then_some(request.dimension_key.as_str());
        Ok(group_usage(&records, period, dimension).iter().map(usage_group_to_pb).collect())
    }
}

/// One event's own fields, checked: the first fault found makes it INVALID.
fn check_event(event: pb::UsageEvent, now: DateTime<Utc>) -> Checked {
    let mut violations = Violations::default();
    violations.required_text("event_id", &event.event_id, EVENT_ID_LENGTH_MAX);
    if event.event_id.starts_with(crate::store::SETTLEMENT_EVENT_PREFIX) {
        violations.add("event_id", "RESERVED: the prefix belongs to settlements");
    }
    if event.event_id.starts_with(CLOSING_EVENT_PREFIX) {
        violations.add("event_id", "RESERVED: the prefix belongs to the charges of LATEST meters' months");
    }
    let account_id = violations.id("account_id", &event.account_id, AccountId);
    dimensions(&mut violations, "dimensions", &event.dimensions);
    let occurred_at = violations.time("timestamp", event.timestamp.as_ref()).unwrap_or(now);
    if occurred_at > now + Duration::seconds(CLOCK_SKEW_SECONDS_MAX) {
        violations.add("timestamp", "is more than 5 minutes in the future");
    }
    let first_fault = |violations: Violations| match violations.finish() {
        Ok(()) => None,
        Err(invalid) => Some(invalid.0.into_iter().next().map(|v| (v.field, v.description)).unwrap_or_default()),
    };
    if let Some((field, reason)) = first_fault(violations) {
        return Checked::Invalid { field, reason };
    }
    let Some(account_id) = account_id else {
        return Checked::Invalid { field: "account_id".to_owned(), reason: "is required".to_owned() };
    };
    // Read whatever the meter: a COUNT meter ignores it.
    let mut violations = Violations::default();
    let parsed = quantity(&mut violations, "quantity", &event.quantity, true);
    let quantity = match (parsed, first_fault(violations)) {
        (Some(parsed), None) => Ok(parsed),
        (_, Some((_, reason))) => Err(reason),
        (None, None) => Err("is required".to_owned()),
    };
    Checked::Event(UsageEvent {
        event_id: event.event_id,
        account_id,
        meter_code: event.meter_code,
        quantity,
        dimensions: event.dimensions,
        occurred_at,
    })
}

/// An event status as the metrics label and the docs name it: `CHARGED`,
/// not the wire's `EVENT_STATUS_CHARGED`.
fn status_label(status: pb::EventStatus) -> &'static str {
    let name = status.as_str_name();
    name.strip_prefix("EVENT_STATUS_").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels are the statuses as the docs and the alert on PENDING name them.
    #[test]
    fn event_statuses_are_labelled_as_documented() {
        let labels: Vec<&str> = [
            pb::EventStatus::Charged,
            pb::EventStatus::Uncovered,
            pb::EventStatus::Duplicate,
            pb::EventStatus::Invalid,
            pb::EventStatus::Pending,
            pb::EventStatus::Accepted,
        ]
        .into_iter()
        .map(status_label)
        .collect();
        assert_eq!(labels, ["CHARGED", "UNCOVERED", "DUPLICATE", "INVALID", "PENDING", "ACCEPTED"]);
    }
}
