//! Group commit. Concurrent changes queue here and are committed together:
//! one transaction locks every account the batch touches (in id order, so two
//! committers never deadlock), applies the changes in arrival order, each
//! succeeding or failing on its own exactly as it would alone, writes all
//! entries and events in multi-row inserts, records every idempotency key,
//! and commits once. Nobody is answered before that commit, so a crash loses
//! only unanswered requests. There is no artificial wait: while one batch
//! commits, the next one gathers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Database, WriteTransaction, rows_per_insert};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use tokio::sync::{Notify, mpsc, oneshot};

use super::entities::idempotency;
use super::{IdempotencyCheck, load_many, write_changes};
use crate::domain::{AccountId, Changes, Wallet};
use crate::error::WalletError;

/// Changes per transaction: large enough to spread a commit's fsync over
/// many requests, small enough to keep a batch's latency in milliseconds.
pub const BATCH_MAX: usize = 512;
/// Requests waiting per committer; past this, callers wait to enqueue,
/// which is the back-pressure a flood of requests meets.
const QUEUE_MAX: usize = 8_192;

type Operate = Box<dyn FnOnce(&mut Wallet) -> Result<Vec<u8>, WalletError> + Send>;

/// One change waiting to be committed.
pub struct Job {
    pub tenant: TenantId,
    pub account: AccountId,
    pub check: IdempotencyCheck,
    pub now: DateTime<Utc>,
    /// Applies the change and returns the encoded response to record and answer.
    pub operate: Operate,
    pub reply: oneshot::Sender<Result<Vec<u8>, WalletError>>,
}

/// The queues of the committers; accounts are spread over them by id, so one
/// account's changes always go through one committer, in order.
#[derive(Clone)]
pub struct Committers {
    queues: Vec<mpsc::Sender<Job>>,
}

impl Committers {
    pub fn start(database: Database, events_written: Arc<Notify>, count: usize) -> Self {
        let queues = (0..count.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(QUEUE_MAX);
                tokio::spawn(run(database.clone(), events_written.clone(), receiver));
                sender
            })
            .collect();
        Self { queues }
    }

    pub async fn submit(&self, job: Job) -> Result<(), WalletError> {
        let index = (job.account.0.as_u128() % self.queues.len() as u128) as usize;
        self.queues[index].send(job).await.map_err(|_| WalletError::Unavailable("the committer has stopped".into()))
    }
}

async fn run(database: Database, events_written: Arc<Notify>, mut receiver: mpsc::Receiver<Job>) {
    while let Some(first) = receiver.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < BATCH_MAX {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (replies, operations): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|job| (job.reply, (job.tenant, job.account, job.check, job.now, job.operate))).unzip();
        let results = match commit(&database, operations).await {
            Ok((results, wrote_events)) => {
                if wrote_events {
                    events_written.notify_waiters();
                }
                results
            }
            Err(error) => {
                tracing::warn!(%error, requests = replies.len(), "a group commit failed; its requests are answered with the error");
                replies.iter().map(|_| Err(same_error(&error))).collect()
            }
        };
        for (reply, result) in replies.into_iter().zip(results) {
            // The caller may have gone; its change stands regardless.
            let _ = reply.send(result);
        }
    }
}

/// The same failure for every request of a failed batch.
fn same_error(error: &WalletError) -> WalletError {
    match error {
        WalletError::Conflict(message) => WalletError::Conflict(message.clone()),
        WalletError::Unavailable(message) => WalletError::Unavailable(message.clone()),
        other => WalletError::Internal(other.to_string()),
    }
}

type Operation = (TenantId, AccountId, IdempotencyCheck, DateTime<Utc>, Operate);

async fn commit(
    database: &Database,
    operations: Vec<Operation>,
) -> Result<(Vec<Result<Vec<u8>, WalletError>>, bool), WalletError> {
    let WriteTransaction { transaction, turn: _turn } = database.begin_write().await?;
    let now = operations.iter().map(|operation| operation.3).max().unwrap_or_else(Utc::now);

    // Lock and load every account once, in id order.
    let accounts: BTreeSet<(TenantId, AccountId)> =
        operations.iter().map(|(tenant, account, ..)| (*tenant, *account)).collect();
    let mut wallets: BTreeMap<(TenantId, AccountId), Wallet> = load_many(&transaction, &accounts, now).await?;

    // Every key the batch uses that is already recorded, read under the locks.
    let mut recorded: HashMap<(TenantId, String), (String, String, Vec<u8>)> = HashMap::new();
    let mut keys_by_tenant: BTreeMap<TenantId, Vec<String>> = BTreeMap::new();
    for (tenant, _, check, ..) in &operations {
        keys_by_tenant.entry(*tenant).or_default().push(check.key.clone());
    }
    for (tenant, keys) in keys_by_tenant {
        for chunk in keys.chunks(500) {
            let rows = idempotency::Entity::find()
                .filter(idempotency::Column::TenantId.eq(tenant.0))
                .filter(idempotency::Column::Key.is_in(chunk.to_vec()))
                .all(&transaction)
                .await?;
            for row in rows {
                recorded.insert((tenant, row.key), (row.method, row.request_hash, row.response));
            }
        }
    }

    // Apply in arrival order; each change stands or falls on its own.
    let mut results = Vec::with_capacity(operations.len());
    let mut new_records: Vec<idempotency::ActiveModel> = Vec::new();
    for (tenant, account, check, _, operate) in operations {
        if let Some((method, hash, response)) = recorded.get(&(tenant, check.key.clone())) {
            let same = method == check.method && *hash == check.request_hash;
            results.push(if same { Ok(response.clone()) } else { Err(WalletError::IdempotencyKeyReused) });
            continue;
        }
        let Some(wallet) = wallets.get_mut(&(tenant, account)) else {
            results.push(Err(WalletError::NotFound("account")));
            continue;
        };
        match operate(wallet) {
            Ok(response) => {
                new_records.push(idempotency::ActiveModel {
                    tenant_id: Set(tenant.0),
                    key: Set(check.key.clone()),
                    method: Set(check.method.to_owned()),
                    request_hash: Set(check.request_hash.clone()),
                    response: Set(response.clone()),
                    created_at: Set(now),
                });
                recorded.insert((tenant, check.key), (check.method.to_owned(), check.request_hash, response.clone()));
                results.push(Ok(response));
            }
            Err(error) => results.push(Err(error)),
        }
    }

    let changes: Vec<Changes> = wallets.values_mut().map(Wallet::take_changes).collect();
    let wrote_events = changes.iter().any(|changes| !changes.events.is_empty());
    let batch: Vec<(&Wallet, Changes)> = wallets.values().zip(changes).collect();
    write_changes(&transaction, &batch).await?;
    let expected = new_records.len() as u64;
    let mut inserted = 0;
    // A recorded response is about a kilobyte.
    for chunk in new_records.chunks(rows_per_insert(1_500)) {
        inserted += idempotency::Entity::insert_many(chunk.to_vec())
            .on_conflict(
                OnConflict::columns([idempotency::Column::TenantId, idempotency::Column::Key]).do_nothing().to_owned(),
            )
            .exec_without_returning(&transaction)
            .await?;
    }
    if inserted != expected {
        // A key of this batch was recorded concurrently elsewhere: nothing of
        // the batch may commit; the retries replay or are told of the reuse.
        return Err(WalletError::Conflict("an idempotency key was recorded concurrently".into()));
    }
    transaction.commit().await?;
    Ok((results, wrote_events))
}
