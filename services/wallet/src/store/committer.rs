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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use reservoir_common::auth::TenantId;
use reservoir_common::db::{Database, WriteTransaction};
use sea_orm::DatabaseConnection;
use tokio::sync::{Notify, mpsc, oneshot};

use super::batch::{self, Record, Refused, Touched};
use super::cache::WalletCache;
use super::loads::{account_versions_statement, load_many, recorded_keys, replayed, versions_of};
use super::replay::{self, Recorded};
use super::write::write_in_transaction;
use super::{IdempotencyCheck, Reply};
use crate::domain::{AccountId, Answer, Command, OperationContext, Wallet};
use crate::error::WalletError;

/// Commands per transaction: large enough to spread a commit's fsync over
/// many requests, small enough to keep a batch's latency in milliseconds.
pub const BATCH_MAX: usize = 512;
/// Requests waiting per committer; past this, callers wait to enqueue,
/// which is the back-pressure a flood of requests meets.
const QUEUE_MAX: usize = 8_192;

/// Batches of one committer written at once: while one is written, the next
/// is read and decided. 3 and 4 measured slower on 2 cores (smaller batches,
/// each paying the statement's planning and commit); with the callers split
/// evenly between them (`Demand`), 3 measured the same as 2.
const IN_FLIGHT_MAX: usize = 2;

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

/// The accounts of a batch.
type Accounts = BTreeSet<(TenantId, AccountId)>;
/// The wallets of a batch, by account.
type Wallets = BTreeMap<(TenantId, AccountId), Wallet>;

async fn run(shared: Shared, mut receiver: mpsc::Receiver<Job>) {
    let mut demand = Demand::default();
    // The batches being written, their accounts and sizes: the next batch is
    // gathered and, if it shares no account with them, decided and written
    // beside them, so one batch's round trips overlap another's. One
    // account's commands still commit in arrival order: a batch sharing an
    // account waits.
    let mut in_flight: VecDeque<(tokio::task::JoinHandle<()>, Accounts, usize)> = VecDeque::new();
    while let Some(first) = receiver.recv().await {
        // A batch written and answered has its callers back in the queue.
        in_flight.retain(|(writing, _, _)| !writing.is_finished());
        let writing: usize = in_flight.iter().map(|(_, _, size)| size).sum();
        let callers = demand.callers();
        let share = Demand::share_of(callers);
        let mut jobs = vec![first];
        drain(&mut receiver, &mut jobs, share);
        // While the callers not in a batch come back, a new batch waits
        // briefly for them instead of committing the first few alone.
        let wanted = callers.saturating_sub(writing).clamp(1, share);
        if jobs.len() < wanted {
            let deadline = tokio::time::Instant::now() + GATHER_WINDOW;
            while jobs.len() < wanted {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(job)) => {
                        jobs.push(job);
                        drain(&mut receiver, &mut jobs, share);
                    }
                    _ => break,
                }
            }
        }
        demand.seen(writing + jobs.len() + receiver.len());
        let mut accounts: Accounts = jobs.iter().map(|job| (job.tenant, job.account)).collect();
        // A batch sharing an account with one being written waits for it
        // (and for those before it, which finish first anyway); what joins
        // it meanwhile is checked again against those still in flight.
        while let Some(last_shared) =
            in_flight.iter().rposition(|(_, writing_accounts, _)| !writing_accounts.is_disjoint(&accounts))
        {
            for (writing, _, _) in in_flight.drain(..=last_shared) {
                let _ = writing.await;
            }
            // What queued meanwhile joins this batch.
            drain(&mut receiver, &mut jobs, share);
            accounts = jobs.iter().map(|job| (job.tenant, job.account)).collect();
        }
        let size = jobs.len();
        in_flight.push_back((tokio::spawn(commit_and_answer(shared.clone(), jobs)), accounts, size));
        // The earliest batches finish first.
        while in_flight.len() >= IN_FLIGHT_MAX {
            if let Some((writing, _, _)) = in_flight.pop_front() {
                let _ = writing.await;
            }
        }
    }
    for (writing, _, _) in in_flight {
        let _ = writing.await;
    }
}

/// How many callers a committer has had at once lately (in its batches
/// being written, the one being gathered and its queue), over its last
/// batches. Each batch takes at most an even share of them, so that the
/// batches in flight split the callers between them and take turns: one
/// is written while the callers of the other get their answers and send
/// again. Without it all the callers gathered into one batch, and the
/// database and the service waited on each other in turn (spread over
/// 100,000 accounts: batches of 2 to 48, both slots busy 58% of the time).
#[derive(Default)]
struct Demand {
    recent: VecDeque<usize>,
}

impl Demand {
    /// Batches remembered: enough to ride out one slow gathering, few enough
    /// that a load that falls away stops being waited for within
    /// milliseconds.
    const REMEMBERED: usize = 32;

    fn seen(&mut self, callers: usize) {
        if self.recent.len() == Self::REMEMBERED {
            self.recent.pop_front();
        }
        self.recent.push_back(callers);
    }

    fn callers(&self) -> usize {
        self.recent.iter().copied().max().unwrap_or(1).max(1)
    }

    /// The most a batch takes when `callers` are about.
    fn share_of(callers: usize) -> usize {
        callers.div_ceil(IN_FLIGHT_MAX).clamp(1, BATCH_MAX)
    }

    /// The share of the callers seen lately (the run loop reads `callers`
    /// once and uses `share_of`).
    #[cfg(test)]
    fn share(&self) -> usize {
        Self::share_of(self.callers())
    }
}

/// Commits one batch and answers each of its requests.
async fn commit_and_answer(shared: Shared, jobs: Vec<Job>) {
    let (replies, operations): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .map(|job| {
            (
                job.reply,
                Operation {
                    tenant: job.tenant,
                    account: job.account,
                    check: job.check,
                    ctx: job.ctx,
                    command: job.command,
                },
            )
        })
        .unzip();
    // Optimistically without reading the keys first: a key already
    // recorded shows when the batch records its own, and then the batch
    // is run again, reading every key first.
    let outcome = commit_with_retries(&shared, &operations).await;
    let results = match outcome {
        Ok(Attempt::Done(results, wrote_events)) => {
            if wrote_events {
                shared.events_written.notify_waiters();
            }
            finish_replays(&shared.pool, &operations, results).await
        }
        Ok(Attempt::KeysTaken | Attempt::Stale) => {
            // A key of this batch was recorded concurrently elsewhere, or
            // its accounts kept changing: the retries replay, are told of
            // the reuse, or go through.
            let error = WalletError::Conflict("the batch conflicted with concurrent changes".into());
            replies.iter().map(|_| Err(error.again())).collect()
        }
        Err(error) => {
            tracing::warn!(%error, requests = replies.len(), "a group commit failed; its requests are answered with the error");
            replies.iter().map(|_| Err(error.again())).collect()
        }
    };
    for (reply, result) in replies.into_iter().zip(results) {
        // The caller may have gone; its change stands regardless.
        let _ = reply.send(result);
    }
}

/// Takes what is already queued, up to `most`.
fn drain(receiver: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>, most: usize) {
    while jobs.len() < most {
        match receiver.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
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
    Applied(Box<Answer>),
    /// Its key was recorded before: answered from the record after the commit.
    Replay(Recorded),
    Refused(WalletError),
}

/// What one try of a batch came to.
enum Attempt {
    /// Committed: each command's fate, and whether events were written.
    Done(Vec<Decided>, bool),
    /// Nothing written: a key of the batch was already recorded.
    KeysTaken,
    /// Nothing written: an account changed since it was read.
    Stale,
}

/// Tries of one batch before its callers are told to retry: an account
/// written by another replica makes a try stale, and the next reads it afresh.
const TRIES_MAX: usize = 4;

/// Commits a batch, trying again while it comes back stale or with a key
/// already recorded (then looking every key up first).
async fn commit_with_retries(shared: &Shared, operations: &[Operation]) -> Result<Attempt, WalletError> {
    let mut look_up_keys = false;
    for _ in 0..TRIES_MAX {
        let attempt = if shared.database.backend() == sea_orm::DbBackend::Postgres {
            commit_postgres(shared, operations, look_up_keys).await?
        } else {
            commit_sqlite(shared, operations, look_up_keys).await?
        };
        match attempt {
            Attempt::KeysTaken if !look_up_keys => look_up_keys = true,
            Attempt::Stale => metrics::counter!("reservoir_wallet_stale_batches_total").increment(1),
            other => return Ok(other),
        }
    }
    Err(WalletError::Conflict("the batch's accounts kept changing under it".into()))
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

/// The commands' fates, decided in arrival order on `wallets`, and the
/// records of those applied. `recorded` holds keys already looked up.
struct Decisions {
    decided: Vec<Decided>,
    outcomes: Vec<&'static str>,
    records: Vec<Record>,
}

async fn decide(
    connection: &impl sea_orm::ConnectionTrait,
    operations: &[Operation],
    wallets: &mut BTreeMap<(TenantId, AccountId), Wallet>,
    mut recorded: HashMap<Vec<u8>, (i16, Vec<u8>, Vec<u8>)>,
    looked_up: bool,
) -> Result<Decisions, WalletError> {
    let mut decided: Vec<Decided> = Vec::with_capacity(operations.len());
    let mut outcomes: Vec<&'static str> = Vec::with_capacity(operations.len());
    let mut records: Vec<Record> = Vec::new();
    for operation in operations {
        let check = &operation.check;
        if let Some((method, hash, answer)) = recorded.get(&check.digest) {
            if *method == check.method_code() && *hash == check.request_hash {
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
                recorded
                    .insert(check.digest.clone(), (check.method_code(), check.request_hash.clone(), encoded.clone()));
                records.push((check.digest.clone(), check.method_code(), check.request_hash.clone(), encoded));
                decided.push(Decided::Applied(Box::new(answer)));
                outcomes.push("applied");
            }
            Err(error) => {
                decided.push(Decided::Refused(WalletError::Domain(error)));
                outcomes.push("refused");
            }
        }
    }
    if !looked_up {
        // A refused command records nothing, so a recorded key would not
        // show when the batch records its own: look up the keys of the refused.
        let refused: Vec<Vec<u8>> = operations
            .iter()
            .zip(&decided)
            .filter(|(_, decided)| matches!(decided, Decided::Refused(_)))
            .map(|(operation, _)| operation.check.digest.clone())
            .collect();
        if !refused.is_empty() {
            let found = recorded_keys(connection, refused.into_iter()).await?;
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
    // In digest order, so two batches recording the same keys (one key reused
    // on two accounts) take them in one order and cannot deadlock.
    records.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Decisions { decided, outcomes, records })
}

fn record_metrics(operations: &[Operation], outcomes: &[&'static str], started: std::time::Instant) {
    for (operation, outcome) in operations.iter().zip(outcomes) {
        metrics::counter!("reservoir_wallet_changes_total", "method" => operation.check.method, "outcome" => *outcome)
            .increment(1);
    }
    metrics::histogram!("reservoir_wallet_group_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("reservoir_wallet_group_commit_size").record(operations.len() as f64);
}

/// One try of a batch on PostgreSQL, without a transaction of its own: the
/// wallets come from the cache (or are read, without locking), the commands
/// are decided on them, and everything is written by one statement that
/// holds every account to the version it was read at. The statement is its
/// own transaction: all of the batch is written, or nothing.
async fn commit_postgres(
    shared: &Shared,
    operations: &[Operation],
    look_up_keys: bool,
) -> Result<Attempt, WalletError> {
    let started = std::time::Instant::now();
    let now = operations.iter().map(|operation| operation.ctx.now).max().unwrap_or_else(chrono::Utc::now);
    let accounts: BTreeSet<(TenantId, AccountId)> =
        operations.iter().map(|operation| (operation.tenant, operation.account)).collect();
    let (mut wallets, missing) = from_cache(&shared.cache, &accounts);
    let cached = wallets.len();
    if !missing.is_empty() {
        wallets.extend(load_many(&shared.pool, &missing, now).await?);
    }
    let loaded = started.elapsed();
    let recorded = if look_up_keys {
        recorded_keys(&shared.pool, operations.iter().map(|operation| operation.check.digest.clone())).await?
    } else {
        HashMap::new()
    };
    let read_versions: Vec<u64> = wallets.values().map(|wallet| wallet.account.version).collect();
    let Decisions { decided, outcomes, records } =
        decide(&shared.pool, operations, &mut wallets, recorded, look_up_keys).await?;
    let applied = started.elapsed();
    let touched: Vec<Touched<'_>> = wallets
        .values_mut()
        .zip(read_versions)
        .map(|(wallet, read_version)| (wallet.take_changes(), wallet, read_version))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(changes, wallet, read_version)| Touched { wallet: &*wallet, changes, read_version })
        .collect();
    let wrote_events = touched.iter().any(|touched| !touched.changes.events.is_empty());
    // A read that finds a version this batch is writing waits for the batch
    // to keep the wallet, instead of reading it afresh.
    let writing: Vec<(TenantId, AccountId, u64)> = touched
        .iter()
        .filter(|touched| touched.wallet.account.version != touched.read_version)
        .map(|touched| (touched.wallet.account.tenant_id, touched.wallet.account.id, touched.wallet.account.version))
        .collect();
    let marked = shared.cache.writing(writing);
    let written = batch::write(&shared.pool, &touched, records, true).await;
    if written.is_ok() {
        for touched in &touched {
            shared.cache.put(touched.wallet);
        }
    }
    drop(marked);
    match written {
        Ok(()) => {}
        Err(Refused::KeyRecorded) => return Ok(Attempt::KeysTaken),
        Err(Refused::Stale) => {
            for (tenant, account) in &accounts {
                shared.cache.forget(*tenant, *account);
            }
            return Ok(Attempt::Stale);
        }
        Err(Refused::Failed(error)) => return Err(error),
    }
    record_metrics(operations, &outcomes, started);
    tracing::debug!(
        size = operations.len(),
        accounts = accounts.len(),
        cached,
        load_us = loaded.as_micros() as u64,
        apply_us = (applied - loaded).as_micros() as u64,
        write_us = (started.elapsed() - applied).as_micros() as u64,
        look_up_keys,
        "group commit"
    );
    Ok(Attempt::Done(decided, wrote_events))
}

/// One try of a batch on SQLite, in one write transaction under the single
/// writer's turn: the wallets are read inside it, so they cannot be stale.
async fn commit_sqlite(shared: &Shared, operations: &[Operation], look_up_keys: bool) -> Result<Attempt, WalletError> {
    let started = std::time::Instant::now();
    let now = operations.iter().map(|operation| operation.ctx.now).max().unwrap_or_else(chrono::Utc::now);
    let accounts: BTreeSet<(TenantId, AccountId)> =
        operations.iter().map(|operation| (operation.tenant, operation.account)).collect();
    let (WriteTransaction { transaction, turn: _turn }, mut wallets) = cached_or_loaded(shared, &accounts, now).await?;
    let recorded = if look_up_keys {
        recorded_keys(&transaction, operations.iter().map(|operation| operation.check.digest.clone())).await?
    } else {
        HashMap::new()
    };
    let Decisions { decided, outcomes, records } =
        decide(&transaction, operations, &mut wallets, recorded, look_up_keys).await?;
    let touched: Vec<Touched<'_>> = wallets
        .values_mut()
        .map(|wallet| (wallet.account.version, wallet.take_changes(), wallet))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(read_version, changes, wallet)| Touched { wallet: &*wallet, changes, read_version })
        .collect();
    let wrote_events = touched.iter().any(|touched| !touched.changes.events.is_empty());
    let decided_at = started.elapsed();
    if !write_in_transaction(&transaction, &touched, records).await? {
        transaction.rollback().await?;
        return Ok(Attempt::KeysTaken);
    }
    let written_at = started.elapsed();
    transaction.commit().await?;
    for touched in &touched {
        shared.cache.put(touched.wallet);
    }
    record_metrics(operations, &outcomes, started);
    tracing::debug!(
        size = operations.len(),
        accounts = accounts.len(),
        load_us = decided_at.as_micros() as u64,
        write_us = (written_at - decided_at).as_micros() as u64,
        commit_us = (started.elapsed() - written_at).as_micros() as u64,
        look_up_keys,
        "group commit"
    );
    Ok(Attempt::Done(decided, wrote_events))
}

/// Begins a SQLite batch's write transaction and reads its wallets in it: a
/// cached wallet whose account row still carries its version is current
/// (nothing can write between this read and the commit), so only the
/// version is read for it, in the round trip that takes the write lock; the
/// rest are loaded. Each statement is a round trip to the connection's thread.
async fn cached_or_loaded(
    shared: &Shared,
    accounts: &BTreeSet<(TenantId, AccountId)>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(WriteTransaction, Wallets), WalletError> {
    let (mut wallets, mut missing) = from_cache(&shared.cache, accounts);
    let write = if wallets.is_empty() {
        shared.database.begin_write().await?
    } else {
        let (write, rows) = shared.database.begin_write_with(account_versions_statement(wallets.keys())).await?;
        let current = versions_of(rows)?;
        wallets.retain(|key, wallet| {
            let fresh = current.get(&wallet.account.id.0) == Some(&wallet.account.version);
            if !fresh {
                missing.insert(*key);
            }
            fresh
        });
        write
    };
    if !missing.is_empty() {
        wallets.extend(load_many(&write.transaction, &missing, now).await?);
    }
    Ok((write, wallets))
}

/// The batch's wallets this process keeps, and the accounts it does not.
fn from_cache(cache: &WalletCache, accounts: &Accounts) -> (Wallets, Accounts) {
    let mut wallets = BTreeMap::new();
    let mut missing = BTreeSet::new();
    for &(tenant, account) in accounts {
        match cache.latest(tenant, account) {
            Some(wallet) => {
                wallets.insert((tenant, account), wallet);
            }
            None => {
                missing.insert((tenant, account));
            }
        }
    }
    (wallets, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_caller_is_never_made_to_wait_for_others() {
        let mut demand = Demand::default();
        assert_eq!((demand.callers(), demand.share()), (1, 1));
        demand.seen(1);
        assert_eq!((demand.callers(), demand.share()), (1, 1));
    }

    #[test]
    fn the_batches_in_flight_split_the_callers_between_them() {
        let mut demand = Demand::default();
        demand.seen(48);
        assert_eq!(demand.callers(), 48);
        assert_eq!(demand.share(), 48 / IN_FLIGHT_MAX);
        demand.seen(47);
        assert_eq!(demand.share(), 48_usize.div_ceil(IN_FLIGHT_MAX), "one slow gathering does not shrink the batches");
        demand.seen(100_000);
        assert_eq!(demand.share(), BATCH_MAX);
    }

    #[test]
    fn callers_that_went_away_stop_being_waited_for() {
        let mut demand = Demand::default();
        demand.seen(48);
        for _ in 0..Demand::REMEMBERED {
            demand.seen(2);
        }
        assert_eq!((demand.callers(), demand.share()), (2, 1));
    }
}
