//! Ingesting a batch of usage events: each checked event priced at its
//! instant, the batch stored (deduplicated) in lines — an account's usage of
//! a meter — and the lines drawn from the wallets; or, asynchronously,
//! answered once stored and drawn behind the answer by the drawdown.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::ids::AccountId;
use rust_decimal::Decimal;

use crate::clients::wallet::WalletGateway;
use crate::domain::{Aggregation, EventStatus, PriceVersion};
use crate::error::MeteringError;
use crate::store::batcher::StoreBatcher;
use crate::store::{IngestEvent, MeterRow, NewEvent, Store, Stored, StoredEvent};
use crate::usecases::accounts::Accounts;
use crate::usecases::charge::draw_lines;
use crate::usecases::drawdown::Drawdown;

/// An event whose own fields were found well formed.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    pub event_id: String,
    pub account_id: AccountId,
    pub meter_code: String,
    /// The quantity read, or why it cannot be; a COUNT meter ignores it.
    pub quantity: Result<Decimal, String>,
    pub dimensions: BTreeMap<String, String>,
    pub occurred_at: DateTime<Utc>,
}

/// What the caller sent for one event: well formed, or the field at fault.
#[derive(Debug, Clone)]
pub enum Checked {
    Event(UsageEvent),
    Invalid { field: String, reason: String },
}

/// What became of one event, in the order sent.
#[derive(Debug, Clone)]
pub enum EventOutcome {
    /// Refused on its own (INVALID): the field and why.
    Invalid { field: String, reason: String },
    /// Stored, to be drawn behind the answer (ACCEPTED).
    Accepted(StoredEvent),
    /// Stored and drawn: CHARGED, UNCOVERED or still PENDING.
    Drawn(StoredEvent),
    /// Its id was seen before: what was stored then.
    Duplicate(StoredEvent),
}

/// A meter with its aggregation and prices, oldest first.
type PricedMeter = (MeterRow, Arc<Aggregation>, Vec<Arc<PriceVersion>>);

#[derive(Clone)]
pub struct Ingestion {
    store: Store,
    wallet: WalletGateway,
    accounts: Accounts,
    drawdown: Drawdown,
    batcher: StoreBatcher,
}

impl Ingestion {
    pub fn start(store: Store, wallet: WalletGateway, accounts: Accounts) -> Self {
        let drawdown = Drawdown::start(store.clone(), wallet.clone());
        let batcher = StoreBatcher::start(store.clone());
        Self { store, wallet, accounts, drawdown, batcher }
    }

    /// Ingests one batch and answers each event in the order sent.
    pub async fn ingest(
        &self,
        tenant: TenantId,
        events: Vec<Checked>,
        now: DateTime<Utc>,
        asynchronously: bool,
    ) -> Result<Vec<EventOutcome>, MeteringError> {
        let started = std::time::Instant::now();
        let mut outcomes: Vec<Option<EventOutcome>> = vec![None; events.len()];
        let mut meters: HashMap<String, Option<PricedMeter>> = HashMap::new();
        // Every account's scale first, in one go.
        let mut scales: HashMap<AccountId, Option<u32>> = self
            .accounts
            .scales(
                tenant,
                events.iter().filter_map(|checked| match checked {
                    Checked::Event(event) => Some(event.account_id),
                    Checked::Invalid { .. } => None,
                }),
            )
            .await?;
        let mut accepted: Vec<(usize, IngestEvent)> = Vec::new();
        for (index, checked) in events.into_iter().enumerate() {
            let invalid = |field: &str, reason: &str| {
                Some(EventOutcome::Invalid { field: field.to_owned(), reason: reason.to_owned() })
            };
            let event = match checked {
                Checked::Event(event) => event,
                Checked::Invalid { field, reason } => {
                    outcomes[index] = Some(EventOutcome::Invalid { field, reason });
                    continue;
                }
            };
            if !meters.contains_key(&event.meter_code) {
                let found = match self.store.meter(tenant, &event.meter_code).await? {
                    Some(meter) => {
                        let prices = self.store.prices(meter.id).await?;
                        let aggregation = Arc::new(meter.aggregation.clone());
                        Some((meter, aggregation, prices.into_iter().map(Arc::new).collect()))
                    }
                    None => None,
                };
                meters.insert(event.meter_code.clone(), found);
            }
            let Some(Some((_, aggregation, prices))) = meters.get(&event.meter_code) else {
                outcomes[index] = invalid("meter_code", "UNKNOWN_METER");
                continue;
            };
            // The latest price effective at the event's instant.
            let Some(price) = prices
                .iter()
                .filter(|price| price.effective_from <= event.occurred_at)
                .max_by_key(|price| price.effective_from)
                .cloned()
            else {
                outcomes[index] = invalid("meter_code", "NO_PRICE");
                continue;
            };
            let quantity = if aggregation.reads_quantity() {
                match event.quantity {
                    Ok(quantity) => quantity,
                    Err(reason) => {
                        outcomes[index] = invalid("quantity", &reason);
                        continue;
                    }
                }
            } else {
                Decimal::ONE
            };
            if let Err(missing) = aggregation.counted_value(&event.dimensions) {
                outcomes[index] = invalid(&format!("dimensions.{}", missing.0), "MISSING_VALUE_DIMENSION");
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(vacant) = scales.entry(event.account_id) {
                vacant.insert(self.accounts.scale(tenant, event.account_id).await?);
            }
            let Some(scale) = scales.get(&event.account_id).copied().flatten() else {
                outcomes[index] = invalid("account_id", "UNKNOWN_ACCOUNT");
                continue;
            };
            let event = NewEvent {
                event_id: event.event_id,
                account_id: event.account_id,
                meter_code: event.meter_code,
                quantity,
                dimensions: event.dimensions,
                occurred_at: event.occurred_at,
            };
            accepted.push((index, IngestEvent { event, price, scale, aggregation: aggregation.clone() }));
        }
        let indexes: Vec<usize> = accepted.iter().map(|(index, _)| *index).collect();
        let new_events: Vec<IngestEvent> = accepted.into_iter().map(|(_, event)| event).collect();
        let checked = started.elapsed();
        let (stored, lines) = self.batcher.store(tenant, new_events, now).await?;
        let stored_at = started.elapsed();
        let mut drawn = if asynchronously {
            // Accepted once an account's earlier accepted batch is drawn.
            let repeated: Vec<AccountId> = stored
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
            outcomes[index] = Some(match outcome {
                Stored::New(event) if asynchronously => EventOutcome::Accepted(event),
                Stored::New(event) => EventOutcome::Drawn(drawn.remove(&event.event_id).unwrap_or(event)),
                Stored::Duplicate(event) => EventOutcome::Duplicate(event),
                Stored::Unpriced(reason) => EventOutcome::Invalid { field: "quantity".to_owned(), reason },
                Stored::Closed => {
                    EventOutcome::Invalid { field: "timestamp".to_owned(), reason: "PERIOD_CLOSED".to_owned() }
                }
            });
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.ok_or_else(|| MeteringError::internal("an event was left unanswered")))
            .collect()
    }
}
