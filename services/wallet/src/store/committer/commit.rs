//! Committing one batch: its commands decided in arrival order on their
//! wallets (kept ones, or loaded), everything they did written at once (on
//! PostgreSQL one statement held to the versions read, on SQLite one write
//! transaction), tried again while it comes back stale or finds a key
//! recorded, and each caller answered after the commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use reservoir_common::auth::TenantId;
use reservoir_common::db::WriteTransaction;
use sea_orm::DatabaseConnection;

use super::{Accounts, Job, Shared, Wallets};
use crate::domain::{AccountId, Answer, Command, OperationContext, Wallet};
use crate::error::WalletError;
use crate::store::batch::{self, Record, Refused, Touched};
use crate::store::cache::WalletCache;
use crate::store::loads::{account_versions_statement, load_many, recorded_keys, replayed, versions_of};
use crate::store::replay::{self, Recorded};
use crate::store::write::write_in_transaction;
use crate::store::{IdempotencyCheck, Reply};

/// Commits one batch and answers each of its requests.
pub(super) async fn commit_and_answer(shared: Shared, jobs: Vec<Job>) {
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
            if *method == check.method_code() && replay::same_request(hash, &check.request_hash) {
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
                    let same = *method == operation.check.method_code()
                        && replay::same_request(hash, &operation.check.request_hash);
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
