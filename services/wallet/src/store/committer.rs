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
use std::time::Duration;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Database, WriteTransaction, rows_per_insert};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use tokio::sync::{Notify, mpsc, oneshot};

use super::cache::WalletCache;
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

/// How long a batch waits for the requests of the previous one to come back.
const GATHER_WINDOW: Duration = Duration::from_millis(1);

/// A change; run again if its batch must be retried, so it is `Fn`.
type Operate = Box<dyn Fn(&mut Wallet) -> Result<Vec<u8>, WalletError> + Send + Sync>;

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
    pub fn start(database: Database, events_written: Arc<Notify>, cache: Arc<WalletCache>, count: usize) -> Self {
        let queues = (0..count.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(QUEUE_MAX);
                tokio::spawn(run(database.clone(), events_written.clone(), cache.clone(), receiver));
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

async fn run(
    database: Database,
    events_written: Arc<Notify>,
    cache: Arc<WalletCache>,
    mut receiver: mpsc::Receiver<Job>,
) {
    // How many requests the last batch held: while they come back, a new
    // batch waits briefly for them instead of committing the first few alone.
    let mut expected = 1;
    while let Some(first) = receiver.recv().await {
        let mut jobs = vec![first];
        drain(&mut receiver, &mut jobs);
        if jobs.len() < expected {
            let deadline = tokio::time::Instant::now() + GATHER_WINDOW;
            while jobs.len() < expected {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(job)) => {
                        jobs.push(job);
                        drain(&mut receiver, &mut jobs);
                    }
                    _ => break,
                }
            }
        }
        expected = jobs.len();
        let (replies, operations): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|job| (job.reply, (job.tenant, job.account, job.check, job.now, job.operate))).unzip();
        // Optimistically without reading the keys first: a key already
        // recorded shows when the batch records its own, and then the batch
        // is rolled back and run again, checking every key under the locks.
        let mut outcome = commit(&database, &cache, &operations, false).await;
        if matches!(outcome, Ok(Attempt::KeysTaken)) {
            outcome = commit(&database, &cache, &operations, true).await;
        }
        let results = match outcome {
            Ok(Attempt::Done(results, wrote_events)) => {
                if wrote_events {
                    events_written.notify_waiters();
                }
                results
            }
            Ok(Attempt::KeysTaken) => {
                // A key of this batch was recorded concurrently elsewhere:
                // the retries replay or are told of the reuse.
                let error = WalletError::Conflict("an idempotency key was recorded concurrently".into());
                replies.iter().map(|_| Err(same_error(&error))).collect()
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

/// Takes what is already queued, up to a batch.
fn drain(receiver: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
    while jobs.len() < BATCH_MAX {
        match receiver.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

/// The recorded keys among `checks`: method, request hash and response.
async fn recorded_keys<'a>(
    transaction: &sea_orm::DatabaseTransaction,
    checks: impl Iterator<Item = (TenantId, &'a IdempotencyCheck)>,
) -> Result<HashMap<(TenantId, String), (String, String, Vec<u8>)>, WalletError> {
    let mut keys_by_tenant: BTreeMap<TenantId, Vec<String>> = BTreeMap::new();
    for (tenant, check) in checks {
        keys_by_tenant.entry(tenant).or_default().push(check.key.clone());
    }
    let mut recorded = HashMap::new();
    for (tenant, keys) in keys_by_tenant {
        for chunk in keys.chunks(500) {
            let rows = idempotency::Entity::find()
                .filter(idempotency::Column::TenantId.eq(tenant.0))
                .filter(idempotency::Column::Key.is_in(chunk.to_vec()))
                .all(transaction)
                .await?;
            for row in rows {
                recorded.insert((tenant, row.key), (row.method, row.request_hash, row.response));
            }
        }
    }
    Ok(recorded)
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

/// What one try of a batch came to.
enum Attempt {
    /// Committed: each request's result, and whether events were written.
    Done(Vec<Result<Vec<u8>, WalletError>>, bool),
    /// Rolled back: a key of the batch was already recorded.
    KeysTaken,
}

/// One try of a batch in one transaction. With `look_up_keys` every key is
/// read under the locks first, so recorded ones replay; without, a recorded
/// key makes the try roll back with [`Attempt::KeysTaken`].
async fn commit(
    database: &Database,
    cache: &WalletCache,
    operations: &[Operation],
    look_up_keys: bool,
) -> Result<Attempt, WalletError> {
    let started = std::time::Instant::now();
    let size = operations.len();
    let WriteTransaction { transaction, turn: _turn } = database.begin_write().await?;
    let began = started.elapsed();
    let now = operations.iter().map(|operation| operation.3).max().unwrap_or_else(Utc::now);

    // Lock and load every account once, in id order.
    let accounts: BTreeSet<(TenantId, AccountId)> =
        operations.iter().map(|(tenant, account, ..)| (*tenant, *account)).collect();
    let mut wallets: BTreeMap<(TenantId, AccountId), Wallet> = load_many(&transaction, &accounts, now).await?;
    let loaded = started.elapsed();

    // Every key the batch uses that is already recorded, read under the locks.
    let mut recorded = if look_up_keys {
        recorded_keys(&transaction, operations.iter().map(|(tenant, _, check, ..)| (*tenant, check))).await?
    } else {
        HashMap::new()
    };
    let checked = started.elapsed();
    // Apply in arrival order; each change stands or falls on its own.
    let mut results = Vec::with_capacity(operations.len());
    // What became of each change, for the metrics: applied, replayed or refused.
    let mut outcomes: Vec<&'static str> = Vec::with_capacity(operations.len());
    let mut new_records: Vec<((uuid::Uuid, String), idempotency::ActiveModel)> = Vec::new();
    for (tenant, account, check, _, operate) in operations {
        let (tenant, account) = (*tenant, *account);
        if let Some((method, hash, response)) = recorded.get(&(tenant, check.key.clone())) {
            let same = method == check.method && *hash == check.request_hash;
            results.push(if same { Ok(response.clone()) } else { Err(WalletError::IdempotencyKeyReused) });
            outcomes.push(if same { "replayed" } else { "refused" });
            continue;
        }
        let Some(wallet) = wallets.get_mut(&(tenant, account)) else {
            results.push(Err(WalletError::NotFound("account")));
            outcomes.push("refused");
            continue;
        };
        match operate(wallet) {
            Ok(response) => {
                new_records.push((
                    (tenant.0, check.key.clone()),
                    idempotency::ActiveModel {
                        tenant_id: Set(tenant.0),
                        key: Set(check.key.clone()),
                        method: Set(check.method.to_owned()),
                        request_hash: Set(check.request_hash.clone()),
                        response: Set(response.clone()),
                        created_at: Set(now),
                    },
                ));
                recorded.insert(
                    (tenant, check.key.clone()),
                    (check.method.to_owned(), check.request_hash.clone(), response.clone()),
                );
                results.push(Ok(response));
                outcomes.push("applied");
            }
            Err(error) => {
                results.push(Err(error));
                outcomes.push("refused");
            }
        }
    }

    if !look_up_keys {
        // A refused change records nothing, so a recorded key would not show
        // when the batch records its own: look up the keys of the refused.
        let refused = operations.iter().zip(&results).filter(|(_, result)| result.is_err());
        let found = recorded_keys(&transaction, refused.map(|((tenant, _, check, ..), _)| (*tenant, check))).await?;
        for (((tenant, _, check, ..), result), outcome) in
            operations.iter().zip(results.iter_mut()).zip(outcomes.iter_mut())
        {
            if result.is_ok() {
                continue;
            }
            if let Some((method, hash, response)) = found.get(&(*tenant, check.key.clone())) {
                let same = method == check.method && *hash == check.request_hash;
                *result = if same { Ok(response.clone()) } else { Err(WalletError::IdempotencyKeyReused) };
                *outcome = if same { "replayed" } else { "refused" };
            }
        }
    }
    let applied = started.elapsed();
    // In key order, so two batches recording the same keys (one key reused
    // on two accounts) take them in one order and cannot deadlock.
    new_records.sort_by(|a, b| a.0.cmp(&b.0));
    let new_records: Vec<idempotency::ActiveModel> = new_records.into_iter().map(|(_, record)| record).collect();
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
        // A key of this batch is already recorded (or was, concurrently):
        // nothing of the batch may commit.
        transaction.rollback().await?;
        return Ok(Attempt::KeysTaken);
    }
    let recorded_at = started.elapsed();
    let changes: Vec<Changes> = wallets.values_mut().map(Wallet::take_changes).collect();
    let wrote_events = changes.iter().any(|changes| !changes.events.is_empty());
    let batch: Vec<(&Wallet, Changes)> = wallets.values().zip(changes).collect();
    write_changes(&transaction, &batch).await?;
    let written = started.elapsed();
    transaction.commit().await?;
    for wallet in wallets.values() {
        cache.put(wallet);
    }
    for ((_, _, check, ..), outcome) in operations.iter().zip(&outcomes) {
        metrics::counter!("reservoir_wallet_changes_total", "method" => check.method, "outcome" => *outcome)
            .increment(1);
    }
    metrics::histogram!("reservoir_wallet_group_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("reservoir_wallet_group_commit_size").record(size as f64);
    tracing::debug!(
        size,
        accounts = accounts.len(),
        begin_us = began.as_micros() as u64,
        load_us = (loaded - began).as_micros() as u64,
        keys_us = (checked - loaded).as_micros() as u64,
        apply_us = (applied - checked).as_micros() as u64,
        record_us = (recorded_at - applied).as_micros() as u64,
        write_us = (written - recorded_at).as_micros() as u64,
        commit_us = (started.elapsed() - written).as_micros() as u64,
        look_up_keys,
        "group commit"
    );
    Ok(Attempt::Done(results, wrote_events))
}
