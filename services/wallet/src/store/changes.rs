//! How the store changes wallets: a retry of a finished call answered from
//! its record, an account opened, commands handed to the group committers,
//! and one or two wallets changed in a transaction of their own, each change
//! ending with its answer recorded, what it did written and the commit.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{WriteTransaction, is_unique_violation};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, Statement};

use super::entities::account;
use super::loads::{load, lookup, replayed};
use super::{IdempotencyCheck, LoadPlan, Loaded, Reply, Store, Submitted, batch, committer, replay, rows, write};
use crate::domain::{AccountId, Answer, Command, OperationContext, Wallet};
use crate::error::WalletError;

impl Store {
    /// Looks up a replay record without taking any lock: a retry of a
    /// finished call is answered without touching the wallet. `None` for a
    /// fresh key; a different request under the key is refused.
    pub async fn replay_only(
        &self,
        tenant_id: TenantId,
        check: &IdempotencyCheck,
    ) -> Result<Option<Reply>, WalletError> {
        let Some(recorded) = lookup(&self.db, check).await? else {
            return Ok(None);
        };
        replayed(&self.db, tenant_id, recorded).await.map(Some)
    }

    /// Opens an account: gives it the next number, and records `answer`
    /// (which the caller built from the new wallet) under the key.
    pub async fn create_account(
        &self,
        check: &IdempotencyCheck,
        mut wallet: Wallet,
        answer: impl FnOnce(&Wallet) -> Answer,
    ) -> Result<Reply, WalletError> {
        let tenant_id = wallet.account.tenant_id;
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        if let Some(recorded) = lookup(&transaction, check).await? {
            transaction.rollback().await?;
            return replayed(&self.db, tenant_id, recorded).await;
        }
        if let Some(existing) = holder_of(&transaction, tenant_id, &wallet.account.external_id).await? {
            return Err(WalletError::AccountExists(Some(existing)));
        }
        wallet.account.number = next_account_number(&transaction).await?;
        let inserted =
            account::Entity::insert(rows::account_to_row(&wallet.account)).exec_without_returning(&transaction).await;
        if let Err(error) = inserted {
            if !is_unique_violation(&error) {
                return Err(error.into());
            }
            // A concurrent call opened the account first: this may be its
            // retry, which replays, or another request, which is refused.
            transaction.rollback().await?;
            return match lookup(&self.db, check).await? {
                Some(recorded) => replayed(&self.db, tenant_id, recorded).await,
                None => {
                    Err(WalletError::AccountExists(holder_of(&self.db, tenant_id, &wallet.account.external_id).await?))
                }
            };
        }
        let answer = answer(&wallet);
        self.commit_changes(transaction, Some(check), &answer, [&mut wallet]).await?;
        Ok(Reply::Answer(Box::new(answer)))
    }

    /// Changes one wallet through the group committer: concurrent commands,
    /// of any wallets, are committed together in one transaction, each
    /// standing or falling on its own. For commands that need no more than
    /// the wallet's live grants and due holds.
    pub async fn submit(
        &self,
        tenant: TenantId,
        account: AccountId,
        check: IdempotencyCheck,
        ctx: OperationContext,
        command: Command,
    ) -> Result<Reply, WalletError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = committer::Job { tenant, account, check, ctx, command, reply };
        self.committers.submit(job).await?;
        answer.await.map_err(|_| WalletError::Unavailable("the committer has stopped".into()))?
    }

    /// Hands many commands to the group committers at once (each goes to its
    /// account's committer, in the order given) and waits for all their
    /// answers; a command that could not even be made answers its error.
    pub async fn submit_all(&self, commands: Vec<Result<Submitted, WalletError>>) -> Vec<Result<Reply, WalletError>> {
        let mut waiting = Vec::with_capacity(commands.len());
        for command in commands {
            waiting.push(match command {
                Ok(Submitted { tenant, account, check, ctx, command }) => {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let job = committer::Job { tenant, account, check, ctx, command, reply };
                    match self.committers.submit(job).await {
                        Ok(()) => Ok(answer),
                        Err(error) => Err(error),
                    }
                }
                Err(error) => Err(error),
            });
        }
        let mut replies = Vec::with_capacity(waiting.len());
        for waiting in waiting {
            replies.push(match waiting {
                Ok(answer) => answer
                    .await
                    .map_err(|_| WalletError::Unavailable("the committer has stopped".into()))
                    .and_then(|reply| reply),
                Err(error) => Err(error),
            });
        }
        replies
    }

    /// The end of a change: the answer recorded under the key first, then
    /// what the wallets changed (the events last), the commit, and afterwards
    /// the cache, the metrics and the event streams.
    pub(super) async fn commit_changes<const N: usize>(
        &self,
        transaction: DatabaseTransaction,
        check: Option<&IdempotencyCheck>,
        answer: &Answer,
        mut wallets: [&mut Wallet; N],
    ) -> Result<(), WalletError> {
        let mut records = Vec::new();
        if let Some(check) = check {
            let numbers: Vec<(AccountId, u64)> =
                wallets.iter().map(|wallet| (wallet.account.id, wallet.account.number)).collect();
            let encoded = replay::encode(answer, |id| {
                numbers.iter().find(|(account, _)| *account == id).map(|(_, number)| *number)
            })?;
            records.push((check.digest.clone(), check.method_code(), check.request_hash.clone(), encoded));
        }
        let touched: Vec<batch::Touched<'_>> = wallets
            .iter_mut()
            .map(|wallet| (wallet.account.version, wallet.take_changes(), &**wallet))
            .map(|(read_version, changes, wallet)| batch::Touched { wallet, changes, read_version })
            .collect();
        let has_events = touched.iter().any(|touched| !touched.changes.events.is_empty());
        if !write::write_in_transaction(&transaction, &touched, records).await? {
            // Another call with the same key committed first (on another
            // account, so the row lock did not order them): this one must
            // not commit; its retry will replay or be told the key was reused.
            transaction.rollback().await?;
            return Err(WalletError::Conflict("the idempotency key was recorded concurrently".into()));
        }
        transaction.commit().await?;
        for wallet in &wallets {
            self.cache.put(wallet);
        }
        if let Some(check) = check {
            metrics::counter!("reservoir_wallet_changes_total", "method" => check.method, "outcome" => "applied")
                .increment(1);
        }
        if has_events {
            self.events_written.notify_waiters();
        }
        Ok(())
    }

    /// Changes one wallet in one transaction. The account row is locked (on
    /// PostgreSQL `FOR UPDATE`; SQLite has one writer), the idempotency key is
    /// checked again under that lock, `operate` decides, and everything it
    /// changed is written with its answer recorded under the key. A domain
    /// refusal rolls everything back.
    pub async fn mutate(
        &self,
        tenant_id: TenantId,
        account_id: AccountId,
        check: Option<&IdempotencyCheck>,
        plan: &LoadPlan,
        now: DateTime<Utc>,
        operate: impl FnOnce(&mut Loaded) -> Result<Answer, WalletError>,
    ) -> Result<Reply, WalletError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let mut loaded = load(&transaction, tenant_id, account_id, plan, now, true).await?;
        // Checked under the row lock: a retry that waited for the original
        // call to commit must replay its result, not run again against the
        // state that call left.
        if let Some(check) = check
            && let Some(recorded) = lookup(&transaction, check).await?
        {
            transaction.rollback().await?;
            return replayed(&self.db, tenant_id, recorded).await;
        }
        let answer = operate(&mut loaded)?;
        self.commit_changes(transaction, check, &answer, [&mut loaded.wallet]).await?;
        Ok(Reply::Answer(Box::new(answer)))
    }
}

/// The number the next account gets: from a sequence on PostgreSQL; on
/// SQLite, whose one writer holds the database, one more than the highest.
async fn next_account_number(transaction: &DatabaseTransaction) -> Result<u64, WalletError> {
    let backend = transaction.get_database_backend();
    let sql = if backend == DbBackend::Postgres {
        "SELECT nextval('account_numbers') AS number"
    } else {
        "SELECT COALESCE(MAX(number), 0) + 1 AS number FROM accounts"
    };
    let row = transaction
        .query_one_raw(Statement::from_string(backend, sql))
        .await?
        .ok_or_else(|| WalletError::internal("no account number"))?;
    let number: i64 = row.try_get("", "number")?;
    Ok(u64::try_from(number).unwrap_or(0))
}

impl Store {
    /// The account of `tenant` that holds `external_id`, if one does.
    pub async fn account_holding(&self, tenant: TenantId, external_id: &str) -> Result<Option<AccountId>, WalletError> {
        holder_of(&self.db, tenant, external_id).await
    }
}

/// The account of `tenant` that holds `external_id`, if one does.
async fn holder_of(
    connection: &impl ConnectionTrait,
    tenant: TenantId,
    external_id: &str,
) -> Result<Option<AccountId>, WalletError> {
    let row = account::Entity::find()
        .filter(account::Column::TenantId.eq(tenant.0))
        .filter(account::Column::ExternalId.eq(external_id))
        .one(connection)
        .await?;
    Ok(row.map(|row| AccountId(row.id)))
}
