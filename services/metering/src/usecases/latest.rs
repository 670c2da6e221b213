//! Charging LATEST meters once their month has ended. Each month of an
//! account is closed (no more of its events are taken), then charged by one
//! closing event whose id names the account, meter and month, priced at the
//! month's last instant for the latest quantity reported; the event is stored
//! and drawn like any other. Every step can be repeated: a closed month stays
//! closed, and the closing event stored twice is a duplicate, so a crash
//! anywhere charges the month once.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::clients::wallet::WalletGateway;
use crate::domain::{Aggregation, closing_event_id, month_end, month_of, price_at};
use crate::error::MeteringError;
use crate::store::{IngestEvent, MonthToClose, NewEvent, Store, Stored};
use crate::usecases::charge::draw_lines;

/// Months closed per pass; the next pass takes the rest.
const MONTHS_PER_PASS: u64 = 200;

/// Closes and charges the months of LATEST meters that ended before `now`.
pub async fn close_months(store: &Store, wallet: &WalletGateway, now: DateTime<Utc>) -> Result<(), MeteringError> {
    for month in store.months_to_close(&month_of(now), MONTHS_PER_PASS).await? {
        if let Err(error) = close(store, wallet, &month, now).await {
            tracing::warn!(%error, account = %month.account_id, meter = %month.meter_code, month = %month.month,
                "a LATEST meter's month not charged; retried next pass");
        }
    }
    Ok(())
}

async fn close(
    store: &Store,
    wallet: &WalletGateway,
    month: &MonthToClose,
    now: DateTime<Utc>,
) -> Result<(), MeteringError> {
    let Some(closed) = store.close_month(month).await? else { return Ok(()) };
    let tenant = month.tenant;
    let at = month_end(&month.month).ok_or_else(|| MeteringError::internal("a stored month is not YYYY-MM"))?;
    let meter = store.meter(tenant, &month.meter_code).await?.ok_or(MeteringError::NotFound("meter"))?;
    let prices = store.prices(meter.id).await?;
    let price = price_at(&prices, at).cloned().ok_or(MeteringError::NotFound("price"))?;
    let (_, scale) = store.account_unit(tenant, month.account_id).await?.ok_or(MeteringError::NotFound("account"))?;
    let closing = IngestEvent {
        event: NewEvent {
            event_id: closing_event_id(month.account_id, &month.meter_code, &month.month),
            account_id: month.account_id,
            meter_code: month.meter_code.clone(),
            quantity: closed.quantity,
            // The latest report's, so its price's overrides apply as they would have to it.
            dimensions: closed.dimensions,
            occurred_at: at,
        },
        price: Arc::new(price),
        scale,
        // The month's one charge: the latest quantity, priced from nothing,
        // as one event of a sum would be.
        aggregation: Arc::new(Aggregation::Sum),
    };
    let Some((mut outcomes, lines)) = store.store_batches(tenant, vec![vec![closing]], now).await?.pop() else {
        return Err(MeteringError::internal("a stored batch went missing"));
    };
    match outcomes.pop() {
        Some(Stored::New(_) | Stored::Duplicate(_)) => {}
        // Left CLOSED, tried again each pass, and said so: a month is never
        // marked charged without its charge.
        Some(Stored::Unpriced(reason)) => return Err(MeteringError::internal(format!("cannot be priced: {reason}"))),
        Some(Stored::Closed) | None => return Err(MeteringError::internal("the closing event was not stored")),
    }
    store.month_charged(month).await?;
    // Stored now: drawn now (the worker draws it otherwise, once its claim runs out).
    draw_lines(store, wallet, tenant, lines, now).await?;
    Ok(())
}
