//! Driving the wallet under test: funded accounts opened, debits of one cent
//! and balance reads (in closed loops, at a fixed rate, or once on each
//! account), the plain-SQL baseline's debits beside them, and the books
//! checked after a run on one account.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use reservoir_proto::wallet as pb;
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, Statement};

use crate::setup::Wallet;
use crate::stats::{Random, RunResult};
use crate::{Args, CENT, baseline, load};

pub async fn open_account(wallet: &Wallet, funds: i64) -> anyhow::Result<pb::Account> {
    let account = wallet
        .clone()
        .create_account(pb::CreateAccountRequest {
            external_id: uuid::Uuid::now_v7().to_string(),
            unit: Some(pb::Unit { code: "USD".into(), ..Default::default() }),
            overdraft_policy: pb::OverdraftPolicy::None.into(),
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .account
        .context("no account")?;
    wallet
        .clone()
        .grant_credits(pb::GrantCreditsRequest {
            account_id: account.id.clone(),
            amount: funds.to_string(),
            kind: pb::GrantKind::Paid.into(),
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await?;
    Ok(account)
}

/// GetBalance of one account from 4 clients in a closed loop.
pub async fn read_latency(wallet: &Wallet, account: &str, args: &Args) -> RunResult {
    let (client, account) = (wallet.clone(), account.to_owned());
    load::closed_loop(4, Duration::from_secs(args.seconds), move |_, _| {
        let (client, account) = (client.clone(), account.clone());
        async move { available(&client, &account).await.is_ok() }
    })
    .await
}

/// Opens `total` funded accounts with `clients` concurrent callers.
pub async fn open_accounts(
    wallet: &Wallet,
    total: usize,
    clients: usize,
    funds: i64,
) -> anyhow::Result<Arc<Vec<pb::Account>>> {
    let opened = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(total)));
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (wallet, opened, next) = (wallet.clone(), opened.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total as u64 {
                    if let Ok(account) = open_account(&wallet, funds).await {
                        opened.lock().await.push(account);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    let opened = std::mem::take(&mut *opened.lock().await);
    Ok(Arc::new(opened))
}

async fn debit(wallet: &Wallet, account: &str) -> bool {
    let request = pb::DebitRequest {
        account_id: account.to_owned(),
        amount: "0.01".into(),
        idempotency_key: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    };
    wallet.clone().debit(request).await.is_ok()
}

pub async fn available(wallet: &Wallet, account: &str) -> anyhow::Result<Decimal> {
    let balance = wallet
        .clone()
        .get_balance(pb::GetBalanceRequest { account_id: account.to_owned() })
        .await?
        .into_inner()
        .balance
        .context("no balance")?;
    Ok(balance.available.parse()?)
}

/// The books after a candidate run: the balance fell by exactly the debits
/// acknowledged, each key is in the ledger once, nothing below the floor.
async fn check_wallet_books(
    database: &sea_orm::DatabaseConnection,
    wallet: &Wallet,
    accounts: &[pb::Account],
    before: Decimal,
    acknowledged: u64,
) -> anyhow::Result<()> {
    let mut after = Decimal::ZERO;
    for account in accounts {
        let balance = available(wallet, &account.id).await?;
        if balance < Decimal::ZERO {
            bail!("account {} below its floor: {balance}", account.id);
        }
        after += balance;
    }
    let acknowledged_amount = CENT * Decimal::from(acknowledged);
    if before - after != acknowledged_amount {
        bail!("balances fell by {} but {acknowledged_amount} was acknowledged", before - after);
    }
    let row = database
        .query_one_raw(Statement::from_string(
            database.get_database_backend(),
            "SELECT COUNT(*) AS n, (SELECT COUNT(*) FROM (SELECT DISTINCT account_number, idempotency_key, grant_id FROM ledger WHERE kind = 2) AS distinct_keys) AS k FROM ledger WHERE kind = 2",
        ))
        .await?
        .context("no count")?;
    let (entries, keys): (i64, i64) = (row.try_get("", "n")?, row.try_get("", "k")?);
    if entries != keys {
        bail!("{entries} debit entries but {keys} distinct keys and grants: a key applied twice");
    }
    check_chains(wallet, accounts).await
}

/// Every entry of the accounts still matches the ledger's hash chain, as
/// VerifyLedger recomputes it: the batched writes chained each debit on.
pub async fn check_chains(wallet: &Wallet, accounts: &[pb::Account]) -> anyhow::Result<()> {
    for account in accounts {
        let request = pb::VerifyLedgerRequest { account_id: account.id.clone(), ..Default::default() };
        let found = wallet.clone().verify_ledger(request).await?.into_inner();
        if !found.intact {
            bail!("the ledger of account {} does not match its hash chain: {:?}", account.id, found.first_break);
        }
    }
    Ok(())
}

async fn sum_available(wallet: &Wallet, accounts: &[pb::Account]) -> anyhow::Result<Decimal> {
    let mut total = Decimal::ZERO;
    for account in accounts {
        total += available(wallet, &account.id).await?;
    }
    Ok(total)
}

/// Hot wallet or spread, on the service: debits of one cent in a closed loop.
pub async fn run_debits(
    wallet: &Wallet,
    books: &sea_orm::DatabaseConnection,
    accounts: &Arc<Vec<pb::Account>>,
    pick: Arc<dyn Fn(&mut Random) -> usize + Send + Sync>,
    args: &Args,
    round: usize,
) -> anyhow::Result<RunResult> {
    let before = sum_available(wallet, if accounts.len() == 1 { accounts } else { &[] }).await?;
    let acknowledged = Arc::new(AtomicU64::new(0));
    let (client, accounts_run, counter) = (wallet.clone(), accounts.clone(), acknowledged.clone());
    let result = load::closed_loop(args.concurrency, Duration::from_secs(args.seconds), move |worker, sequence| {
        let (client, accounts, counter, pick) = (client.clone(), accounts_run.clone(), counter.clone(), pick.clone());
        async move {
            let mut random = Random::new((round as u64 + 1) * 1_000_003 + worker as u64 * 7_919 + sequence);
            let account = &accounts[pick(&mut random)];
            let ok = debit(&client, &account.id).await;
            if ok {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            ok
        }
    })
    .await;
    if accounts.len() == 1 {
        check_wallet_books(books, wallet, accounts, before, acknowledged.load(Ordering::Relaxed)).await?;
    }
    Ok(result)
}

pub async fn run_baseline_debits(
    db: &sea_orm::DatabaseConnection,
    pick: Arc<dyn Fn(&mut Random) -> usize + Send + Sync>,
    args: &Args,
    round: usize,
) -> RunResult {
    let db = db.clone();
    load::closed_loop(args.concurrency, Duration::from_secs(args.seconds), move |worker, sequence| {
        let (db, pick) = (db.clone(), pick.clone());
        async move {
            let mut random = Random::new((round as u64 + 1) * 1_000_003 + worker as u64 * 7_919 + sequence);
            let account = pick(&mut random) as i64;
            baseline::debit(&db, account, &uuid::Uuid::now_v7().to_string()).await
        }
    })
    .await
}

/// One debit on each account, in order: afterwards the service has met
/// every account, as it has the accounts of a steady load.
pub async fn warm_up(wallet: &Wallet, accounts: &Arc<Vec<pb::Account>>, concurrency: usize) -> RunResult {
    let (client, accounts) = (wallet.clone(), accounts.clone());
    load::each_once(concurrency, accounts.len(), move |index| {
        let (client, accounts) = (client.clone(), accounts.clone());
        async move { debit(&client, &accounts[index].id).await }
    })
    .await
}

/// The baseline's warm-up: one plain transaction on each account.
pub async fn warm_up_baseline(db: &sea_orm::DatabaseConnection, count: usize, concurrency: usize) -> RunResult {
    let db = db.clone();
    load::each_once(concurrency, count, move |index| {
        let db = db.clone();
        async move { baseline::debit(&db, index as i64, &uuid::Uuid::now_v7().to_string()).await }
    })
    .await
}

/// Bulk-opened accounts as the load functions take them.
pub fn as_accounts(ids: Vec<String>) -> Arc<Vec<pb::Account>> {
    Arc::new(ids.into_iter().map(|id| pb::Account { id, ..Default::default() }).collect())
}

/// Debits of one cent at `rate` per second for `duration`, counting those acknowledged.
pub fn debits_at_rate(
    wallet: &Wallet,
    account: &str,
    rate: f64,
    duration: Duration,
    acknowledged: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<RunResult> {
    let (client, account) = (wallet.clone(), account.to_owned());
    tokio::spawn(load::open_loop(rate, duration, move |_| {
        let (client, account, count) = (client.clone(), account.clone(), acknowledged.clone());
        async move {
            let ok = debit(&client, &account).await;
            if ok {
                count.fetch_add(1, Ordering::Relaxed);
            }
            ok
        }
    }))
}
