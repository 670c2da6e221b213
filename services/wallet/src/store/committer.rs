//! Group commit. Concurrent commands queue here and are committed together:
//! one transaction locks every account the batch touches (in id order, so
//! committers never deadlock), applies the commands in arrival order, each
//! succeeding or failing on its own exactly as it would alone, records each
//! answer under its key, writes what changed, and commits once. Nobody is
//! answered before that commit, so a crash loses only unanswered requests.
//!
//! Accounts are spread over several committers by id: one account's commands
//! always go through one committer, in order, while batches of different
//! accounts commit side by side (nothing they write is shared).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use reservoir_common::auth::TenantId;
use reservoir_common::db::{Database, WriteTransaction};
use sea_orm::DatabaseConnection;
use tokio::sync::{Notify, mpsc, oneshot};

use super::cache::WalletCache;
use super::replay::{self, Recorded};
use super::{IdempotencyCheck, Reply, load_many, recorded_keys, replayed, write::write_changes};
use crate::domain::{AccountId, Answer, Changes, Command, OperationContext, Wallet};
use crate::error::WalletError;

/// Commands per transaction: large enough to spread a commit's fsync over
/// many requests, small enough to keep a batch's latency in milliseconds.
pub const BATCH_MAX: usize = 512;
/// Requests waiting per committer; past this, callers wait to enqueue,
/// which is the back-pressure a flood of requests meets.
const QUEUE_MAX: usize = 8_192;

/// How long a batch waits for the requests of the previous one to come back.
const GATHER_WINDOW: Duration = Duration::from_millis(1);

/// One command waiting to be committed.
pub struct Job {
    pub tenant: TenantId,
    pub account: AccountId,
    pub check: IdempotencyCheck,
    pub ctx: OperationContext,
    pub command: Command,
    pub reply: oneshot::Sender<Result<Reply, WalletError>>,
}

/// The queues of the committers.
#[derive(Clone)]
pub struct Committers {
    queues: Vec<mpsc::Sender<Job>>,
}

/// What the committers share.
#[derive(Clone)]
pub struct Shared {
    pub database: Database,
    pub pool: DatabaseConnection,
    pub events_written: Arc<Notify>,
    pub cache: Arc<WalletCache>,
}

impl Committers {
    pub fn start(shared: Shared, count: usize) -> Self {
        let queues = (0..count.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(QUEUE_MAX);
                tokio::spawn(run(shared.clone(), receiver));
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

async fn run(shared: Shared, mut receiver: mpsc::Receiver<Job>) {
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
        let (replies, operations): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .map(|job| (job.reply, Operation { tenant: job.tenant, account: job.account, check: job.check, ctx: job.ctx, command: job.command }))
            .unzip();
        // Optimistically without reading the keys first: a key already
        // recorded shows when the batch records its own, and then the batch
        // is rolled back and run again, checking every key under the locks.
        let mut outcome = commit(&shared, &operations, false).await;
        if matches!(outcome, Ok(Attempt::KeysTaken)) {
            outcome = commit(&shared, &operations, true).await;
        }
        let results = match outcome {
            Ok(Attempt::Done(results, wrote_events)) => {
                if wrote_events {
                    shared.events_written.notify_waiters();
                }
                finish_replays(&shared.pool, &operations, results).await
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

/// The same failure for every request of a failed batch.
fn same_error(error: &WalletError) -> WalletError {
    match error {
        WalletError::Conflict(message) => WalletError::Conflict(message.clone()),
        WalletError::Unavailable(message) => WalletError::Unavailable(message.clone()),
        other => WalletError::Internal(other.to_string()),
    }
}

struct Operation {
    tenant: TenantId,
    account: AccountId,
    check: IdempotencyCheck,
    ctx: OperationContext,
    command: Command,
}

/// What became of one command in a committed batch.
enum Decided {
    Applied(Answer),
    /// Its key was recorded before: answered from the record after the commit.
    Replay(Recorded),
    Refused(WalletError),
}

/// What one try of a batch came to.
enum Attempt {
    /// Committed: each command's fate, and whether events were written.
    Done(Vec<Decided>, bool),
    /// Rolled back: a key of the batch was already recorded.
    KeysTaken,
}

/// Answers replays from their records, now that the batch is committed.
async fn finish_replays(
    pool: &DatabaseConnection,
    operations: &[Operation],
    decided: Vec<Decided>,
) -> Vec<Result<Reply, WalletError>> {
    let mut results = Vec::with_capacity(decided.len());
    for (operation, decided) in operations.iter().zip(decided) {
        results.push(match decided {
            Decided::Applied(answer) => Ok(Reply::Answer(answer)),
            Decided::Refused(error) => Err(error),
            Decided::Replay(recorded) => replayed(pool, operation.tenant, recorded).await,
        });
    }
    results
}

/// One try of a batch in one transaction. With `look_up_keys` every key is
/// read under the locks first, so recorded ones replay; without, a recorded
/// key makes the try roll back with [`Attempt::KeysTaken`].
async fn commit(shared: &Shared, operations: &[Operation], look_up_keys: bool) -> Result<Attempt, WalletError> {
    let started = std::time::Instant::now();
    let size = operations.len();
    let WriteTransaction { transaction, turn: _turn } = shared.database.begin_write().await?;
    let began = started.elapsed();
    let now = operations.iter().map(|operation| operation.ctx.now).max().unwrap_or_else(chrono::Utc::now);

    // Lock and load every account once, in id order.
    let accounts: BTreeSet<(TenantId, AccountId)> =
        operations.iter().map(|operation| (operation.tenant, operation.account)).collect();
    let mut wallets: BTreeMap<(TenantId, AccountId), Wallet> = load_many(&transaction, &accounts, now).await?;
    let loaded = started.elapsed();

    // Every key the batch uses that is already recorded, read under the locks.
    let mut recorded: HashMap<Vec<u8>, (i16, Vec<u8>, Vec<u8>)> = if look_up_keys {
        recorded_keys(&transaction, operations.iter().map(|operation| operation.check.digest.clone())).await?
    } else {
        HashMap::new()
    };
    let checked = started.elapsed();
    let mut decided: Vec<Decided> = Vec::with_capacity(size);
    let mut outcomes: Vec<&'static str> = Vec::with_capacity(size);
    let mut new_records: Vec<(Vec<u8>, i16, Vec<u8>, Vec<u8>)> = Vec::new();
    for operation in operations {
        let check = &operation.check;
        if let Some((method, hash, answer)) = recorded.get(&check.digest) {
            let same = *method == check.method_code() && *hash == check.request_hash;
            if same {
                decided.push(Decided::Replay(replay::decode(answer)?));
                outcomes.push("replayed");
            } else {
                decided.push(Decided::Refused(WalletError::IdempotencyKeyReused));
                outcomes.push("refused");
            }
            continue;
        }
        let Some(wallet) = wallets.get_mut(&(operation.tenant, operation.account)) else {
            decided.push(Decided::Refused(WalletError::NotFound("account")));
            outcomes.push("refused");
            continue;
        };
        match operation.command.apply(wallet, &operation.ctx) {
            Ok(answer) => {
                let number = wallet.account.number;
                let account = wallet.account.id;
                let encoded = replay::encode(&answer, |id| (id == account).then_some(number))?;
                recorded.insert(check.digest.clone(), (check.method_code(), check.request_hash.clone(), encoded.clone()));
                new_records.push((check.digest.clone(), check.method_code(), check.request_hash.clone(), encoded));
                decided.push(Decided::Applied(answer));
                outcomes.push("applied");
            }
            Err(error) => {
                decided.push(Decided::Refused(WalletError::Domain(error)));
                outcomes.push("refused");
            }
        }
    }

    if !look_up_keys {
        // A refused command records nothing, so a recorded key would not
        // show when the batch records its own: look up the keys of the refused.
        let refused: Vec<Vec<u8>> = operations
            .iter()
            .zip(&decided)
            .filter(|(_, decided)| matches!(decided, Decided::Refused(_)))
            .map(|(operation, _)| operation.check.digest.clone())
            .collect();
        if !refused.is_empty() {
            let found = recorded_keys(&transaction, refused.into_iter()).await?;
            for ((operation, decided), outcome) in operations.iter().zip(decided.iter_mut()).zip(outcomes.iter_mut()) {
                if !matches!(decided, Decided::Refused(_)) {
                    continue;
                }
                if let Some((method, hash, answer)) = found.get(&operation.check.digest) {
                    let same = *method == operation.check.method_code() && *hash == operation.check.request_hash;
                    *decided = if same {
                        Decided::Replay(replay::decode(answer)?)
                    } else {
                        Decided::Refused(WalletError::IdempotencyKeyReused)
                    };
                    *outcome = if same { "replayed" } else { "refused" };
                }
            }
        }
    }
    let applied = started.elapsed();
    // In digest order, so two batches recording the same keys (one key reused
    // on two accounts) take them in one order and cannot deadlock.
    new_records.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = new_records.len() as u64;
    let inserted = super::insert_records(&transaction, new_records).await?;
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
        shared.cache.put(wallet);
    }
    for (operation, outcome) in operations.iter().zip(&outcomes) {
        metrics::counter!("reservoir_wallet_changes_total", "method" => operation.check.method, "outcome" => *outcome)
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
    Ok(Attempt::Done(decided, wrote_events))
}
