//! gRPC handlers of the metering service.

mod convert;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use reservoir_common::auth::{TenantId, tenant_of};
use reservoir_common::idempotency::request_hash;
use reservoir_common::validate::Violations;
use reservoir_proto::metering as pb;
use reservoir_proto::metering::metering_service_server::MeteringService;
use reservoir_proto::wallet as wallet_pb;
use rust_decimal::Decimal;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use self::convert::*;
use crate::clients::wallet::{WalletGateway, is_final_refusal};
use crate::domain::wallet_key;
use crate::domain::{
    AuthorizationStatus, EventStatus, OVERRIDES_MAX, Override, Period, PriceVersion, QUANTITY_SCALE_MAX, Schedule,
    Tier, UNIT_PRICE_SCALE_MAX, group_usage, month_of, price_at,
};
use crate::error::MeteringError;
use crate::store::batcher::StoreBatcher;
use crate::store::{AuthorizationRow, IngestEvent, MeterRow, NewEvent, Store, Stored};
use crate::usecases::charge::draw_lines;
use crate::usecases::drawdown::Drawdown;
use crate::usecases::settle::settle_authorization;

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

/// What the wallet said of an account's unit: its code and scale, if the tenant has it.
type WalletUnit = Result<Option<(String, u32)>, MeteringError>;
/// A meter with its prices, oldest first.
type PricedMeter = (MeterRow, Vec<Arc<PriceVersion>>);

/// Accounts looked up in the wallet at once when a batch names many it never saw.
const WALLET_LOOKUPS_AT_ONCE: usize = 32;
/// Account scales remembered in memory; past this many the map starts over.
/// A scale never changes, so a remembered one is never stale.
const SCALES_CACHED_MAX: usize = 200_000;

#[derive(Clone)]
pub struct MeteringApi {
    store: Store,
    wallet: WalletGateway,
    drawdown: Drawdown,
    batcher: StoreBatcher,
    scales: Arc<std::sync::Mutex<HashMap<(TenantId, Uuid), u32>>>,
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
        let drawdown = Drawdown::start(store.clone(), wallet.clone());
        let batcher = StoreBatcher::start(store.clone());
        Self { store, wallet, drawdown, batcher, scales: Default::default() }
    }

    async fn meter(&self, tenant: TenantId, field: &str, code: &str) -> Result<MeterRow, MeteringError> {
        if code.is_empty() {
            return Err(MeteringError::field(field, "is required"));
        }
        self.store.meter(tenant, code).await?.ok_or(MeteringError::NotFound("meter"))
    }

    /// The wallet scale of an account, remembered after the first lookup;
    /// `None` when the tenant has no such account.
    async fn account_scale(&self, tenant: TenantId, account_id: Uuid) -> Result<Option<u32>, MeteringError> {
        if let Some((_, scale)) = self.store.account_unit(tenant, account_id).await? {
            return Ok(Some(scale));
        }
        match self.wallet.account_unit(tenant, account_id).await? {
            Some((code, scale)) => {
                self.store.remember_account(tenant, account_id, &code, scale).await?;
                Ok(Some(scale))
            }
            None => Ok(None),
        }
    }

    /// The wallet scales of many accounts at once: from memory, then in one
    /// query from the accounts metering has seen, then from the wallet one by
    /// one for accounts never seen. An account the tenant lacks maps to `None`.
    async fn account_scales(
        &self,
        tenant: TenantId,
        accounts: impl Iterator<Item = Uuid>,
    ) -> Result<HashMap<Uuid, Option<u32>>, MeteringError> {
        let mut found: HashMap<Uuid, Option<u32>> = HashMap::new();
        let mut missing = Vec::new();
        if let Ok(known) = self.scales.lock() {
            for account in accounts {
                match known.get(&(tenant, account)) {
                    Some(scale) => {
                        found.insert(account, Some(*scale));
                    }
                    None if !found.contains_key(&account) => missing.push(account),
                    None => {}
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        let stored = self.store.account_units(tenant, &missing).await?;
        let mut learned: Vec<(Uuid, u32)> = stored.into_iter().collect();
        let remembered: std::collections::HashSet<Uuid> = learned.iter().map(|(account, _)| *account).collect();
        // Accounts never seen are asked of the wallet a few at a time, and
        // remembered together.
        let unseen = missing.into_iter().filter(|account| !remembered.contains(account));
        let asked: Vec<(Uuid, WalletUnit)> = futures::stream::iter(unseen)
            .map(|account| async move { (account, self.wallet.account_unit(tenant, account).await) })
            .buffer_unordered(WALLET_LOOKUPS_AT_ONCE)
            .collect()
            .await;
        let mut new_units = Vec::new();
        for (account, unit) in asked {
            match unit? {
                Some((code, scale)) => {
                    learned.push((account, scale));
                    new_units.push((account, code, scale));
                }
                None => {
                    found.insert(account, None);
                }
            }
        }
        self.store.remember_accounts(tenant, &new_units).await?;
        if let Ok(mut known) = self.scales.lock() {
            if known.len() + learned.len() > SCALES_CACHED_MAX {
                known.clear();
            }
            for (account, scale) in learned {
                known.insert((tenant, account), scale);
                found.insert(account, Some(scale));
            }
        }
        Ok(found)
    }

    /// Ingests one batch: checks each event, stores the valid ones with
    /// their prices in lines (an account's usage of a meter), then draws the
    /// lines from the wallets and answers each event; or, `asynchronously`,
    /// answers once they are stored and has them drawn in the background.
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
        let started = std::time::Instant::now();
        let mut results: Vec<Option<pb::EventResult>> = vec![None; events.len()];
        let mut meters: HashMap<String, Option<PricedMeter>> = HashMap::new();
        // Every account's scale first, in one go.
        let mut scales: HashMap<Uuid, Option<u32>> = self
            .account_scales(tenant, events.iter().filter_map(|event| Uuid::parse_str(&event.account_id).ok()))
            .await?;
        let mut accepted: Vec<(usize, IngestEvent)> = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let invalid = |field: &str, reason: &str| pb::EventResult {
                event_id: event.event_id.clone(),
                status: pb::EventStatus::Invalid.into(),
                field: field.to_owned(),
                reason: reason.to_owned(),
                ..Default::default()
            };
            let mut violations = Violations::default();
            violations.required_text("event_id", &event.event_id, EVENT_ID_LENGTH_MAX);
            if event.event_id.starts_with(crate::store::SETTLEMENT_EVENT_PREFIX) {
                violations.add("event_id", "RESERVED: the prefix belongs to settlements");
            }
            let account_id = violations.id("account_id", &event.account_id, |id| id);
            dimensions(&mut violations, "dimensions", &event.dimensions);
            let occurred_at = violations.time("timestamp", event.timestamp.as_ref()).unwrap_or(now);
            if occurred_at > now + Duration::seconds(CLOCK_SKEW_SECONDS_MAX) {
                violations.add("timestamp", "is more than 5 minutes in the future");
            }
            if let Err(invalid_request) = violations.finish() {
                let first = invalid_request.0.first().cloned();
                let (field, reason) = first.map(|v| (v.field, v.description)).unwrap_or_default();
                results[index] = Some(invalid(&field, &reason));
                continue;
            }
            let Some(account_id) = account_id else { continue };
            if !meters.contains_key(&event.meter_code) {
                let found = match self.store.meter(tenant, &event.meter_code).await? {
                    Some(meter) => {
                        let prices = self.store.prices(meter.id).await?;
                        Some((meter, prices.into_iter().map(Arc::new).collect()))
                    }
                    None => None,
                };
                meters.insert(event.meter_code.clone(), found);
            }
            let Some(Some((meter, prices))) = meters.get(&event.meter_code) else {
                results[index] = Some(invalid("meter_code", "UNKNOWN_METER"));
                continue;
            };
            // The latest price effective at the event's instant.
            let Some(price) = prices
                .iter()
                .filter(|price| price.effective_from <= occurred_at)
                .max_by_key(|price| price.effective_from)
                .cloned()
            else {
                results[index] = Some(invalid("meter_code", "NO_PRICE"));
                continue;
            };
            let quantity = if meter.aggregation == "COUNT" {
                Decimal::ONE
            } else {
                let mut violations = Violations::default();
                let parsed = quantity(&mut violations, "quantity", &event.quantity, true);
                match (parsed, violations.finish()) {
                    (Some(parsed), Ok(())) => parsed,
                    (_, Err(invalid_request)) => {
                        let reason = invalid_request.0.first().map(|v| v.description.clone()).unwrap_or_default();
                        results[index] = Some(invalid("quantity", &reason));
                        continue;
                    }
                    (None, Ok(())) => continue,
                }
            };
            if let std::collections::hash_map::Entry::Vacant(vacant) = scales.entry(account_id) {
                vacant.insert(self.account_scale(tenant, account_id).await?);
            }
            let Some(scale) = scales.get(&account_id).copied().flatten() else {
                results[index] = Some(invalid("account_id", "UNKNOWN_ACCOUNT"));
                continue;
            };
            let event = NewEvent {
                event_id: event.event_id.clone(),
                account_id,
                meter_code: event.meter_code.clone(),
                quantity,
                dimensions: event.dimensions.clone(),
                occurred_at,
            };
            accepted.push((index, IngestEvent { event, price, scale }));
        }
        let indexes: Vec<usize> = accepted.iter().map(|(index, _)| *index).collect();
        let new_events: Vec<IngestEvent> = accepted.into_iter().map(|(_, event)| event).collect();
        let checked = started.elapsed();
        let (stored, lines) = self.batcher.store(tenant, new_events, now).await?;
        let stored_at = started.elapsed();
        let drawn = if asynchronously {
            // Accepted once an account's earlier accepted batch is drawn.
            let repeated: Vec<Uuid> = stored
                .iter()
                .filter_map(|outcome| match outcome {
                    Stored::Duplicate(event) if event.status == EventStatus::Pending => Some(event.account_id),
                    _ => None,
                })
                .collect();
            if let Err(error) = self.drawdown.accept(tenant, lines, &repeated).await {
                tracing::warn!(%error, "accepted usage is left to the worker");
            }
            HashMap::new()
        } else {
            draw_lines(&self.store, &self.wallet, tenant, lines, now).await?
        };
        tracing::debug!(
            events = indexes.len(),
            check_us = checked.as_micros() as u64,
            store_us = (stored_at - checked).as_micros() as u64,
            draw_us = (started.elapsed() - stored_at).as_micros() as u64,
            asynchronously,
            "ingest"
        );
        for (index, outcome) in indexes.into_iter().zip(stored) {
            let result = match outcome {
                Stored::New(event) if asynchronously => {
                    pb::EventResult { status: pb::EventStatus::Accepted.into(), ..event_result(&event, false) }
                }
                Stored::New(event) => event_result(drawn.get(&event.event_id).unwrap_or(&event), false),
                Stored::Duplicate(event) => event_result(&event, true),
                Stored::Unpriced(reason) => pb::EventResult {
                    event_id: events[index].event_id.clone(),
                    status: pb::EventStatus::Invalid.into(),
                    field: "quantity".to_owned(),
                    reason,
                    ..Default::default()
                },
            };
            results[index] = Some(result);
        }
        Ok(results.into_iter().map(Option::unwrap_or_default).collect())
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

    async fn authorization_response(&self, tenant: TenantId, id: Uuid) -> Result<pb::Authorization, MeteringError> {
        let row = self.store.authorization(tenant, id).await?.ok_or(MeteringError::NotFound("authorization"))?;
        Ok(authorization_to_pb(&row))
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
        let aggregation = match pb::Aggregation::try_from(request.aggregation) {
            Ok(pb::Aggregation::Sum) => "SUM",
            Ok(pb::Aggregation::Count) => "COUNT",
            _ => {
                violations.add("aggregation", "must be SUM or COUNT");
                ""
            }
        };
        violations.finish().map_err(MeteringError::from)?;
        let meter = self
            .store
            .create_meter(
                tenant,
                MeterRow {
                    id: Uuid::now_v7(),
                    code: request.code,
                    unit_name: request.unit_name,
                    aggregation: aggregation.to_owned(),
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
        if let Some(response) = self.store.replay(tenant, &request.idempotency_key, "SetPrice", &hash).await? {
            return Ok(Response::new(response));
        }
        let meter = self.meter(tenant, "meter_code", &request.meter_code).await?;
        let Some(version) = version else {
            return Err(MeteringError::internal("a checked price went missing").into());
        };
        self.store.add_price(tenant, meter.id, &version, now).await?;
        let response = pb::SetPriceResponse { price: Some(price_to_pb(&meter.code, &version)) };
        self.store.record(tenant, &request.idempotency_key, "SetPrice", &hash, &response, now).await?;
        Ok(Response::new(response))
    }

    async fn get_price(&self, request: Request<pb::GetPriceRequest>) -> Result<Response<pb::GetPriceResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let at = violations.time("at", request.at.as_ref()).unwrap_or_else(now);
        violations.finish().map_err(MeteringError::from)?;
        let meter = self.meter(tenant, "meter_code", &request.meter_code).await?;
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
        let account_id = violations.id("account_id", &request.account_id, |id| id);
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
        let hash = request_hash(&request);
        let row = match self.store.authorization_by_key(tenant, &request.idempotency_key).await? {
            Some(existing) if existing.request_hash != hash => return Err(MeteringError::IdempotencyKeyReused.into()),
            Some(existing) => existing,
            None => {
                let meter = self.meter(tenant, "meter_code", &request.meter_code).await?;
                let prices = self.store.prices(meter.id).await?;
                let version = price_at(&prices, now)
                    .ok_or_else(|| MeteringError::precondition("NO_PRICE", "the meter has no price in effect"))?;
                let scale = self.account_scale(tenant, account_id).await?.ok_or(MeteringError::NotFound("account"))?;
                let estimate = if meter.aggregation == "COUNT" { Decimal::ONE.max(estimate.ceil()) } else { estimate };
                let before = self.store.usage_so_far(tenant, account_id, &meter.code, &month_of(now)).await?;
                let amount = version
                    .charge(&request.dimensions, before, estimate, scale)
                    .map_err(|error| MeteringError::field("estimated_quantity", error.to_string()))?;
                let row = AuthorizationRow {
                    id: Uuid::now_v7(),
                    tenant_id: tenant,
                    idempotency_key: request.idempotency_key.clone(),
                    request_hash: hash,
                    account_id,
                    meter_code: meter.code.clone(),
                    dimensions: request.dimensions.clone(),
                    estimated_quantity: estimate,
                    estimated_amount: amount,
                    hold_id: None,
                    status: AuthorizationStatus::Pending,
                    expires_at: now + Duration::seconds(i64::from(ttl_seconds)),
                    actual_quantity: None,
                    actual_amount: None,
                    charged_amount: None,
                    uncovered_amount: None,
                };
                self.store.insert_authorization(&row, now).await?;
                row
            }
        };
        if row.status.awaits_hold() {
            if row.estimated_amount.is_zero() {
                self.store.transition_authorization(row.id, row.status, AuthorizationStatus::Active, None, now).await?;
            } else {
                let reserve = wallet_pb::ReserveRequest {
                    account_id: row.account_id.to_string(),
                    amount: row.estimated_amount.normalize().to_string(),
                    ttl_seconds,
                    meter_code: row.meter_code.clone(),
                    idempotency_key: wallet_key("authorize", &row.id.to_string()),
                    correlation_id: row.id.to_string(),
                };
                match self.wallet.reserve(tenant, reserve).await {
                    Ok(response) => {
                        let hold = response.hold.and_then(|hold| Uuid::parse_str(&hold.id).ok());
                        self.store
                            .transition_authorization(row.id, row.status, AuthorizationStatus::Active, hold, now)
                            .await?;
                    }
                    Err(status) if is_final_refusal(status.code()) => {
                        self.store
                            .transition_authorization(row.id, row.status, AuthorizationStatus::Refused, None, now)
                            .await?;
                        let reason = reservoir_common::status::reason_of(&status).unwrap_or_else(|| "REFUSED".into());
                        return Err(MeteringError::precondition(&reason, status.message().to_owned()).into());
                    }
                    Err(status) => return Err(MeteringError::Unavailable(format!("wallet: {status}")).into()),
                }
            }
        }
        Ok(Response::new(pb::AuthorizeResponse {
            authorization: Some(self.authorization_response(tenant, row.id).await?),
        }))
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
        let mut row = self.store.authorization(tenant, id).await?.ok_or(MeteringError::NotFound("authorization"))?;
        let meter = self.meter(tenant, "meter_code", &row.meter_code).await?;
        // A COUNT meter counts whole events.
        let actual = if meter.aggregation == "COUNT" { actual.ceil() } else { actual };
        if row.status == AuthorizationStatus::Active && row.expires_at <= now {
            return Err(MeteringError::precondition("AUTHORIZATION_EXPIRED", "the authorization has expired").into());
        }
        match row.status {
            AuthorizationStatus::Active => {
                let prices = self.store.prices(meter.id).await?;
                let scale =
                    self.account_scale(tenant, row.account_id).await?.ok_or(MeteringError::NotFound("account"))?;
                let price = |event: &NewEvent, before: Decimal| -> Result<Decimal, MeteringError> {
                    let version = price_at(&prices, event.occurred_at)
                        .ok_or_else(|| MeteringError::precondition("NO_PRICE", "the meter has no price in effect"))?;
                    version
                        .charge(&event.dimensions, before, event.quantity, scale)
                        .map_err(|error| MeteringError::field("actual_quantity", error.to_string()))
                };
                self.store.begin_settlement(&row, actual, now, price).await?;
                row = self.store.authorization(tenant, id).await?.ok_or(MeteringError::NotFound("authorization"))?;
            }
            AuthorizationStatus::Settling | AuthorizationStatus::Settled => {}
            AuthorizationStatus::Expired => {
                return Err(
                    MeteringError::precondition("AUTHORIZATION_EXPIRED", "the authorization has expired").into()
                );
            }
            AuthorizationStatus::Pending | AuthorizationStatus::Refused => {
                return Err(
                    MeteringError::precondition("AUTHORIZATION_NOT_ACTIVE", "the authorization holds nothing").into()
                );
            }
        }
        if row.actual_quantity.is_some_and(|settled| settled != actual) {
            return Err(MeteringError::precondition(
                "AUTHORIZATION_SETTLED",
                "the authorization was settled with another quantity",
            )
            .into());
        }
        if row.status == AuthorizationStatus::Settling {
            settle_authorization(&self.store, &self.wallet, tenant, &row, now).await?;
        }
        let event = self
            .store
            .event(tenant, &crate::store::settlement_event_id(id))
            .await?
            .ok_or_else(|| MeteringError::internal("the settlement's usage event is missing"))?;
        Ok(Response::new(pb::SettleResponse {
            authorization: Some(self.authorization_response(tenant, id).await?),
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
        let account_id = violations.id("account_id", &request.account_id, |id| id);
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
