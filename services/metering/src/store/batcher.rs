//! Group storing. Batches ingested at the same time are stored together, in
//! one transaction per tenant, in the order they arrived: concurrent batches
//! of one tenant touch the same monthly counters, and one transaction that
//! locks them once does in one go what separate ones would do one after the
//! other, each waiting for the last to commit. Nobody is answered before
//! that commit; an event whose charge cannot be computed is refused on its
//! own and never fails a batch.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use tokio::sync::{mpsc, oneshot};

use super::{IngestEvent, Store, StoredBatch};
use crate::error::MeteringError;

/// Batches waiting; past this, ingest calls wait to hand theirs over.
const QUEUE_MAX: usize = 256;
/// Events stored in one transaction at most: a few ingest calls' worth,
/// so a transaction stays well under a second.
const EVENTS_PER_STORE_MAX: usize = 8_000;

struct Job {
    tenant: TenantId,
    events: Vec<IngestEvent>,
    now: DateTime<Utc>,
    reply: oneshot::Sender<Result<StoredBatch, MeteringError>>,
}

#[derive(Clone)]
pub struct StoreBatcher {
    queue: mpsc::Sender<Job>,
}

impl StoreBatcher {
    pub fn start(store: Store) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_MAX);
        tokio::spawn(run(store, receiver));
        Self { queue }
    }

    /// Stores one batch with whatever else is being stored now.
    pub async fn store(
        &self,
        tenant: TenantId,
        events: Vec<IngestEvent>,
        now: DateTime<Utc>,
    ) -> Result<StoredBatch, MeteringError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { tenant, events, now, reply })
            .await
            .map_err(|_| MeteringError::Unavailable("the store has stopped".into()))?;
        answer.await.map_err(|_| MeteringError::Unavailable("the store has stopped".into()))?
    }
}

/// The same failure for every batch of a failed transaction.
fn same_error(error: &MeteringError) -> MeteringError {
    match error {
        MeteringError::Conflict(message) => MeteringError::Conflict(message.clone()),
        MeteringError::Unavailable(message) => MeteringError::Unavailable(message.clone()),
        // Its cause once, not wrapped again.
        MeteringError::Internal(cause) => MeteringError::Internal(cause.clone()),
        other => MeteringError::internal(other.to_string()),
    }
}

async fn run(store: Store, mut receiver: mpsc::Receiver<Job>) {
    while let Some(first) = receiver.recv().await {
        let mut events = first.events.len();
        let mut jobs = vec![first];
        while events < EVENTS_PER_STORE_MAX {
            match receiver.try_recv() {
                Ok(job) => {
                    events += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut by_tenant: BTreeMap<TenantId, Vec<Job>> = BTreeMap::new();
        for job in jobs {
            by_tenant.entry(job.tenant).or_default().push(job);
        }
        for (tenant, jobs) in by_tenant {
            let now = jobs.iter().map(|job| job.now).max().unwrap_or_else(Utc::now);
            let (replies, batches): (Vec<_>, Vec<_>) = jobs.into_iter().map(|job| (job.reply, job.events)).unzip();
            match store.store_batches(tenant, batches, now).await {
                Ok(results) => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        // The caller may have gone; what was stored stays and is drawn by the worker.
                        let _ = reply.send(Ok(result));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, batches = replies.len(), "storing usage failed; the batches are answered with the error");
                    for reply in replies {
                        let _ = reply.send(Err(same_error(&error)));
                    }
                }
            }
        }
    }
}
