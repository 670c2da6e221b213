//! Drawing stored usage from wallets: one BatchDebit per tenant and batch,
//! each debit keyed by its event, and the answers recorded. Ingestion calls
//! it right after storing a batch; the worker calls it for whatever is still
//! pending after a crash or an outage.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use rust_decimal::Decimal;

use crate::domain::EventStatus;
use crate::error::MeteringError;
use crate::store::{Settlement, Store, StoredEvent};
use crate::wallet::{WalletGateway, debit_for, settlement_of};

/// Debits per BatchDebit: the wallet's limit.
const DEBITS_PER_CALL_MAX: usize = 1_000;

/// Charges pending events of one tenant and returns every event as it now
/// stands (still PENDING where the wallet could not be reached).
pub async fn charge_events(
    store: &Store,
    wallet: &WalletGateway,
    tenant: TenantId,
    events: Vec<StoredEvent>,
    now: DateTime<Utc>,
) -> Result<HashMap<String, StoredEvent>, MeteringError> {
    let mut settlements: Vec<(String, Settlement)> = Vec::new();
    let (free, priced): (Vec<StoredEvent>, Vec<StoredEvent>) = events
        .iter()
        .filter(|event| event.status == EventStatus::Pending)
        .cloned()
        .partition(|event| event.amount.is_zero());
    for event in &free {
        let settlement = Settlement {
            status: EventStatus::Charged,
            charged_amount: Decimal::ZERO,
            uncovered_amount: Decimal::ZERO,
            entry_ids: Vec::new(),
            reason: String::new(),
        };
        settlements.push((event.event_id.clone(), settlement));
    }
    for chunk in priced.chunks(DEBITS_PER_CALL_MAX) {
        match wallet.batch_debit(tenant, chunk.iter().map(debit_for).collect()).await {
            Ok(results) => {
                for (event, result) in chunk.iter().zip(results.iter()) {
                    if let Some(settlement) = settlement_of(event, result) {
                        settlements.push((event.event_id.clone(), settlement));
                    }
                }
            }
            Err(error) => {
                // Stored and pending: the worker finishes them once the wallet answers.
                tracing::warn!(%error, events = chunk.len(), "wallet unreachable; usage stays pending");
                let ids: Vec<String> = chunk.iter().map(|event| event.event_id.clone()).collect();
                store.release_claims(tenant, &ids, now).await?;
            }
        }
    }
    store.settle_events(tenant, &settlements, now).await?;
    let mut outcome: HashMap<String, StoredEvent> =
        events.into_iter().map(|event| (event.event_id.clone(), event)).collect();
    for (event_id, settlement) in settlements {
        if let Some(event) = outcome.get_mut(&event_id) {
            event.status = settlement.status;
            event.charged_amount = settlement.charged_amount;
            event.uncovered_amount = settlement.uncovered_amount;
            event.entry_ids = settlement.entry_ids;
            event.reason = settlement.reason;
        }
    }
    Ok(outcome)
}
