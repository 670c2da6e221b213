//! What every replica of metering does by itself, in passes: draws the
//! usage lines a crash, an outage or a claim that ran out left pending,
//! finishes interrupted settlements, expires lapsed authorizations, and
//! charges LATEST meters whose month has ended.

use std::collections::BTreeMap;
use std::time::Duration;

use reservoir_common::time::now;
use tokio::sync::watch;

use crate::clients::wallet::WalletGateway;
use crate::error::MeteringError;
use crate::store::{Line, Store};
use crate::usecases::charge::draw_lines;
use crate::usecases::latest::close_months;
use crate::usecases::settle::resume_settlements;

/// Pending events the worker takes per pass.
const WORKER_BATCH: u64 = 1_000;
/// The worker leaves a settlement alone for this long after it last moved:
/// a Settle call still in flight (its wallet calls may take 10 s each) is
/// about to finish it itself.
const SETTLEMENT_GRACE: chrono::Duration = chrono::Duration::seconds(30);

/// Finishes what ingestion and settlement left pending. Every replica may run
/// it: the wallet's idempotency keys make a repeated debit a replay, and a
/// settled event is never changed again.
pub async fn work(store: Store, wallet: WalletGateway, interval: Duration, stopping: watch::Receiver<bool>) {
    reservoir_common::serve::every(interval, stopping, || async {
        if let Err(error) = work_once(&store, &wallet).await {
            tracing::warn!(%error, "metering worker pass failed; retried next pass");
        }
    })
    .await;
}

async fn work_once(store: &Store, wallet: &WalletGateway) -> Result<(), MeteringError> {
    let now = now();
    // Each line is claimed before it is drawn, so no two senders (another
    // replica's worker, an ingest or the drawdown still at it) ever race on it.
    let lines = store.claim_lines(now, WORKER_BATCH).await?;
    let mut by_tenant: BTreeMap<_, Vec<Line>> = BTreeMap::new();
    for line in lines {
        by_tenant.entry(line.tenant).or_default().push(line);
    }
    for (tenant, lines) in by_tenant {
        if let Err(error) = draw_lines(store, wallet, tenant, lines, now).await {
            tracing::warn!(%error, %tenant, "pending usage not drawn; its claim runs out and it is retried");
        }
    }
    resume_settlements(store, wallet, now - SETTLEMENT_GRACE).await;
    store.expire_authorizations(now).await?;
    close_months(store, wallet, now).await?;
    Ok(())
}
