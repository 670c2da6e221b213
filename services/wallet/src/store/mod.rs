//! Persistence through sea-orm: SQLite by default, PostgreSQL (schema
//! `wallet`) in production. Every change to a wallet happens in one
//! transaction that locks the account row, re-checks the idempotency key,
//! lets the domain decide, and writes the account, grants, holds, ledger
//! entries, outbox events and the idempotency record together.

mod cache;
mod committer;
mod entities;
pub mod migrations;
mod rows;

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use reservoir_common::auth::{Caller, KeyResolver, TenantId, generate_key, hash_key, key_display_prefix};
use reservoir_common::db::{Amount, Database, WriteTransaction, is_unique_violation, rows_per_insert, values_list};
use reservoir_common::settings::DatabaseSettings;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use sea_orm_migration::MigratorTrait;
use tokio::sync::Notify;
use uuid::Uuid;

use self::entities::{account, api_key, entry, grant, hold, idempotency, outbox, tenant};
use crate::domain::{Account, AccountId, Changes, Entry, EntryId, Grant, GrantId, Hold, HoldId, OperationId, Wallet};
use crate::error::WalletError;

pub use self::rows::{EntryFilter, entry_kind_name, grant_kind_name, grant_source_name};

/// The tenant that owns the service keys.
const SERVICES_TENANT: &str = "reservoir-services";

/// What an idempotent call is checked against.
#[derive(Debug, Clone)]
pub struct IdempotencyCheck {
    pub key: String,
    /// The RPC, so one key cannot replay another method's result.
    pub method: &'static str,
    /// SHA-256 of the encoded request.
    pub request_hash: String,
}

/// What to load besides the account's live grants and due holds.
#[derive(Debug, Clone, Default)]
pub struct LoadPlan {
    pub grant_ids: Vec<GrantId>,
    pub hold_ids: Vec<HoldId>,
    /// For a refund: the operation whose entries are refunded.
    pub refund_of: Option<OperationId>,
}

/// A wallet loaded for a change, with what a refund needs.
#[derive(Debug)]
pub struct Loaded {
    pub wallet: Wallet,
    /// The entries of `LoadPlan::refund_of`.
    pub operation_entries: Vec<Entry>,
    /// REFUND entries already written against those entries.
    pub prior_refunds: Vec<Entry>,
}

/// The result of an idempotent call: done now, or replayed from the record.
#[derive(Debug)]
pub enum Outcome<M> {
    Applied(M),
    Replayed(M),
}

impl<M> Outcome<M> {
    pub fn into_inner(self) -> M {
        match self {
            Self::Applied(message) | Self::Replayed(message) => message,
        }
    }
}

/// An issued API key (the key itself is shown once and never stored).
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub key: String,
}

#[derive(Debug, Clone)]
pub struct TenantRow {
    pub id: TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub active_keys: usize,
}

#[derive(Clone)]
pub struct Store {
    committers: committer::Committers,
    /// Wallets as last committed or read, for balance reads.
    cache: Arc<cache::WalletCache>,
    database: Database,
    /// The pool of `database`, for queries.
    db: DatabaseConnection,
    /// Woken after every commit that wrote events, so event streams need not poll.
    events_written: Arc<Notify>,
}

impl Store {
    /// Connects (creating the PostgreSQL schema or the SQLite file as needed).
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, WalletError> {
        let database = Database::connect(settings).await?;
        let events_written = Arc::new(Notify::new());
        // SQLite has one writer, so one committer; PostgreSQL commits two
        // batches at once, one filling while the other flushes.
        let count = if settings.is_postgres() { 2 } else { 1 };
        let cache = Arc::new(cache::WalletCache::default());
        let committers = committer::Committers::start(database.clone(), events_written.clone(), cache.clone(), count);
        Ok(Self { committers, cache, db: database.connection().clone(), database, events_written })
    }

    /// The connection pool, for its figures.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Applies every migration not yet applied.
    pub async fn migrate(&self) -> Result<(), WalletError> {
        self.database
            .migrate_exclusively(|connection| async move {
                migrations::Migrator::up(&connection, None).await.map_err(WalletError::from)
            })
            .await
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub fn events_written(&self) -> Arc<Notify> {
        self.events_written.clone()
    }

    pub async fn close(self) -> Result<(), WalletError> {
        self.db.close().await?;
        Ok(())
    }

    // ---- tenants and keys -------------------------------------------------

    pub async fn create_tenant(&self, name: &str, now: DateTime<Utc>) -> Result<TenantId, WalletError> {
        let id = Uuid::now_v7();
        tenant::Entity::insert(tenant::ActiveModel {
            id: Set(id),
            name: Set(name.to_owned()),
            created_at: Set(now),
            allow_promotional_transfers: Set(false),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(TenantId(id))
    }

    pub async fn list_tenants(&self) -> Result<Vec<TenantRow>, WalletError> {
        let tenants = tenant::Entity::find().order_by_asc(tenant::Column::CreatedAt).all(&self.db).await?;
        let keys = api_key::Entity::find().filter(api_key::Column::RevokedAt.is_null()).all(&self.db).await?;
        Ok(tenants
            .into_iter()
            .map(|row| TenantRow {
                id: TenantId(row.id),
                name: row.name,
                created_at: row.created_at,
                active_keys: keys.iter().filter(|key| key.tenant_id == row.id).count(),
            })
            .collect())
    }

    /// Whether the tenant lets promotional credits be transferred.
    pub async fn allow_promotional_transfers(&self, tenant_id: TenantId) -> Result<bool, WalletError> {
        let row =
            tenant::Entity::find_by_id(tenant_id.0).one(&self.db).await?.ok_or(WalletError::NotFound("tenant"))?;
        Ok(row.allow_promotional_transfers)
    }

    pub async fn set_allow_promotional_transfers(&self, tenant_id: TenantId, allow: bool) -> Result<(), WalletError> {
        tenant::Entity::update_many()
            .col_expr(tenant::Column::AllowPromotionalTransfers, Expr::value(allow))
            .filter(tenant::Column::Id.eq(tenant_id.0))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    pub async fn tenant_exists(&self, tenant_id: TenantId) -> Result<bool, WalletError> {
        Ok(tenant::Entity::find_by_id(tenant_id.0).one(&self.db).await?.is_some())
    }

    /// Issues a key for a tenant; only its peppered hash is stored.
    pub async fn issue_key(
        &self,
        tenant: TenantId,
        pepper: &str,
        now: DateTime<Utc>,
    ) -> Result<IssuedKey, WalletError> {
        if !self.tenant_exists(tenant).await? {
            return Err(WalletError::NotFound("tenant"));
        }
        self.insert_key(tenant, "TENANT", pepper, now).await
    }

    /// Issues a key for Reservoir's own services (metering, invoicing, ...),
    /// which act for whichever tenant each call names. It belongs to a tenant
    /// of its own that holds no accounts.
    pub async fn issue_service_key(&self, pepper: &str, now: DateTime<Utc>) -> Result<IssuedKey, WalletError> {
        let existing = tenant::Entity::find().filter(tenant::Column::Name.eq(SERVICES_TENANT)).one(&self.db).await?;
        let tenant = match existing {
            Some(row) => TenantId(row.id),
            None => self.create_tenant(SERVICES_TENANT, now).await?,
        };
        self.insert_key(tenant, "SERVICE", pepper, now).await
    }

    async fn insert_key(
        &self,
        tenant_id: TenantId,
        kind: &str,
        pepper: &str,
        now: DateTime<Utc>,
    ) -> Result<IssuedKey, WalletError> {
        let key = generate_key();
        let id = Uuid::now_v7();
        api_key::Entity::insert(api_key::ActiveModel {
            id: Set(id),
            tenant_id: Set(tenant_id.0),
            key_hash: Set(hash_key(pepper, &key)),
            display_prefix: Set(key_display_prefix(&key)),
            created_at: Set(now),
            revoked_at: Set(None),
            kind: Set(kind.to_owned()),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(IssuedKey { id, tenant_id, key })
    }

    /// Revokes a key by its id; `false` when there is no such active key.
    pub async fn revoke_key(&self, key_id: Uuid, now: DateTime<Utc>) -> Result<bool, WalletError> {
        let result = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(now))
            .filter(api_key::Column::Id.eq(key_id))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Who holds the key with this hash, if it is issued and not revoked.
    pub async fn caller_for_key_hash(&self, key_hash: &str) -> Result<Option<Caller>, WalletError> {
        let row = api_key::Entity::find()
            .filter(api_key::Column::KeyHash.eq(key_hash))
            .filter(api_key::Column::RevokedAt.is_null())
            .one(&self.db)
            .await?;
        Ok(row.map(|row| if row.kind == "SERVICE" { Caller::Service } else { Caller::Tenant(TenantId(row.tenant_id)) }))
    }

    // ---- reads --------------------------------------------------------------

    pub async fn account(&self, tenant_id: TenantId, account_id: AccountId) -> Result<Account, WalletError> {
        let row = account::Entity::find_by_id(account_id.0)
            .filter(account::Column::TenantId.eq(tenant_id.0))
            .one(&self.db)
            .await?
            .ok_or(WalletError::NotFound("account"))?;
        rows::account_from_row(row)
    }

    /// One page of the tenant's accounts in the order they were opened
    /// (account ids are time-ordered), after the account `after`.
    pub async fn accounts_page(
        &self,
        tenant_id: TenantId,
        after: Option<AccountId>,
        limit: u64,
    ) -> Result<Vec<Account>, WalletError> {
        let mut query = account::Entity::find().filter(account::Column::TenantId.eq(tenant_id.0));
        if let Some(after) = after {
            query = query.filter(account::Column::Id.gt(after.0));
        }
        let rows = query.order_by_asc(account::Column::Id).limit(limit).all(&self.db).await?;
        rows.into_iter().map(rows::account_from_row).collect()
    }

    /// The units of those of `account_ids` the tenant has, in one query per
    /// 500 ids.
    pub async fn units(
        &self,
        tenant_id: TenantId,
        account_ids: &[AccountId],
    ) -> Result<Vec<(AccountId, reservoir_common::money::Unit)>, WalletError> {
        let mut units = Vec::with_capacity(account_ids.len());
        for chunk in account_ids.chunks(500) {
            let rows = account::Entity::find()
                .filter(account::Column::TenantId.eq(tenant_id.0))
                .filter(account::Column::Id.is_in(chunk.iter().map(|id| id.0)))
                .all(&self.db)
                .await?;
            for row in rows {
                let account = rows::account_from_row(row)?;
                units.push((account.id, account.unit));
            }
        }
        Ok(units)
    }

    /// The wallet as of `now`, for reads: nothing is locked or written. One
    /// statement reads the account's version; the wallet cached at that
    /// version answers if there is one, and otherwise the account, grants
    /// and holds are read from one snapshot, so a balance never mixes the
    /// state before a commit with the state after it.
    pub async fn wallet(
        &self,
        tenant_id: TenantId,
        account_id: AccountId,
        now: DateTime<Utc>,
    ) -> Result<Wallet, WalletError> {
        let current: Option<(i64, Amount)> = account::Entity::find_by_id(account_id.0)
            .filter(account::Column::TenantId.eq(tenant_id.0))
            .select_only()
            .column(account::Column::Version)
            .column(account::Column::Held)
            .into_tuple()
            .one(&self.db)
            .await?;
        let (version, held) = current.ok_or(WalletError::NotFound("account"))?;
        if held.0.is_zero()
            && let Some(wallet) = self.cache.get(tenant_id, account_id, u64::try_from(version).unwrap_or(0))
        {
            return Ok(wallet);
        }
        let snapshot = self.database.begin_snapshot().await?;
        let loaded = load(&snapshot, tenant_id, account_id, &LoadPlan::default(), now, false).await?;
        snapshot.commit().await?;
        self.cache.put(&loaded.wallet);
        Ok(loaded.wallet)
    }

    pub async fn grants(
        &self,
        tenant_id: TenantId,
        account_id: AccountId,
        include_inactive: bool,
    ) -> Result<Vec<Grant>, WalletError> {
        self.account(tenant_id, account_id).await?;
        let mut query = grant::Entity::find().filter(grant::Column::AccountId.eq(account_id.0));
        if !include_inactive {
            query = query.filter(grant::Column::Status.eq("ACTIVE"));
        }
        let rows = query.order_by_desc(grant::Column::CreatedSequence).all(&self.db).await?;
        rows.into_iter().map(rows::grant_from_row).collect()
    }

    pub async fn hold(&self, tenant_id: TenantId, hold_id: HoldId) -> Result<Hold, WalletError> {
        let row = hold::Entity::find_by_id(hold_id.0)
            .filter(hold::Column::TenantId.eq(tenant_id.0))
            .one(&self.db)
            .await?
            .ok_or(WalletError::NotFound("hold"))?;
        rows::hold_from_row(row)
    }

    pub async fn grant(&self, tenant_id: TenantId, grant_id: GrantId) -> Result<Grant, WalletError> {
        let row = grant::Entity::find_by_id(grant_id.0)
            .filter(grant::Column::TenantId.eq(tenant_id.0))
            .one(&self.db)
            .await?
            .ok_or(WalletError::NotFound("grant"))?;
        rows::grant_from_row(row)
    }

    pub async fn entry(&self, tenant_id: TenantId, entry_id: EntryId) -> Result<Entry, WalletError> {
        let row = entry::Entity::find_by_id(entry_id.0)
            .filter(entry::Column::TenantId.eq(tenant_id.0))
            .one(&self.db)
            .await?
            .ok_or(WalletError::NotFound("entry"))?;
        rows::entry_from_row(row)
    }

    /// One page of a wallet's ledger in sequence order, after `after_sequence`.
    pub async fn entries(
        &self,
        tenant_id: TenantId,
        account_id: AccountId,
        filter: &EntryFilter,
        after_sequence: u64,
        limit: u64,
    ) -> Result<Vec<Entry>, WalletError> {
        self.account(tenant_id, account_id).await?;
        let mut query = entry::Entity::find()
            .filter(entry::Column::AccountId.eq(account_id.0))
            .filter(entry::Column::Sequence.gt(to_i64(after_sequence)));
        if !filter.kinds.is_empty() {
            query =
                query.filter(entry::Column::Kind.is_in(filter.kinds.iter().map(|kind| rows::entry_kind_name(*kind))));
        }
        if let Some(start) = filter.start {
            query = query.filter(entry::Column::CreatedAt.gte(start));
        }
        if let Some(end) = filter.end {
            query = query.filter(entry::Column::CreatedAt.lt(end));
        }
        if let Some(through) = filter.through_sequence {
            query = query.filter(entry::Column::Sequence.lte(to_i64(through)));
        }
        let rows = query.order_by_asc(entry::Column::Sequence).limit(limit).all(&self.db).await?;
        rows.into_iter().map(rows::entry_from_row).collect()
    }

    /// A wallet's ledger as of one snapshot, for a report that works back
    /// from it: every grant (written off or not), the last entry's sequence,
    /// and the running balance after it.
    pub async fn ledger_snapshot(
        &self,
        tenant_id: TenantId,
        account_id: AccountId,
    ) -> Result<(Vec<Grant>, u64, rust_decimal::Decimal), WalletError> {
        let snapshot = self.database.begin_snapshot().await?;
        let account = account::Entity::find_by_id(account_id.0)
            .filter(account::Column::TenantId.eq(tenant_id.0))
            .one(&snapshot)
            .await?
            .ok_or(WalletError::NotFound("account"))?;
        let grants = grant::Entity::find()
            .filter(grant::Column::AccountId.eq(account_id.0))
            .all(&snapshot)
            .await?
            .into_iter()
            .map(rows::grant_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let last = entry::Entity::find()
            .filter(entry::Column::AccountId.eq(account_id.0))
            .filter(entry::Column::Sequence.eq(account.last_sequence))
            .one(&snapshot)
            .await?;
        snapshot.commit().await?;
        let balance = last.map(|row| row.balance_after.0).unwrap_or_default();
        Ok((grants, u64::try_from(account.last_sequence).unwrap_or(0), balance))
    }

    /// The tenant's outbox events after `after_sequence`, oldest first.
    pub async fn events_after(
        &self,
        tenant_id: TenantId,
        after_sequence: u64,
        limit: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, WalletError> {
        let rows = outbox::Entity::find()
            .filter(outbox::Column::TenantId.eq(tenant_id.0))
            .filter(outbox::Column::Sequence.gt(to_i64(after_sequence)))
            .order_by_asc(outbox::Column::Sequence)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|row| (u64::try_from(row.sequence).unwrap_or(0), row.payload)).collect())
    }

    /// Accounts with a grant or hold past its expiry at `now` and not yet written off.
    pub async fn accounts_due_for_expiry(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<(TenantId, AccountId)>, WalletError> {
        let grants = grant::Entity::find()
            .filter(grant::Column::Status.eq("ACTIVE"))
            .filter(grant::Column::ExpiresAt.lte(now))
            .limit(limit)
            .all(&self.db)
            .await?;
        let holds = hold::Entity::find()
            .filter(hold::Column::Status.eq("ACTIVE"))
            .filter(hold::Column::ExpiresAt.lte(now))
            .limit(limit)
            .all(&self.db)
            .await?;
        let due: BTreeSet<(Uuid, Uuid)> = grants
            .iter()
            .map(|row| (row.tenant_id, row.account_id))
            .chain(holds.iter().map(|row| (row.tenant_id, row.account_id)))
            .collect();
        Ok(due.into_iter().map(|(tenant, account)| (TenantId(tenant), AccountId(account))).collect())
    }

    // ---- writes -------------------------------------------------------------

    /// Looks up an idempotency record: the stored response for the same
    /// request, an error for a different one, `None` for a fresh key.
    async fn replay<M: prost::Message + Default>(
        connection: &impl ConnectionTrait,
        tenant_id: TenantId,
        check: &IdempotencyCheck,
    ) -> Result<Option<M>, WalletError> {
        let Some(record) = idempotency::Entity::find_by_id((tenant_id.0, check.key.clone())).one(connection).await?
        else {
            return Ok(None);
        };
        if record.method != check.method || record.request_hash != check.request_hash {
            return Err(WalletError::IdempotencyKeyReused);
        }
        M::decode(record.response.as_slice())
            .map(Some)
            .map_err(|error| WalletError::Internal(format!("stored response does not decode: {error}")))
    }

    /// Checks an idempotency key without taking any lock: a retry of a
    /// finished call is answered without touching the wallet.
    pub async fn replay_only<M: prost::Message + Default>(
        &self,
        tenant_id: TenantId,
        check: &IdempotencyCheck,
    ) -> Result<Option<M>, WalletError> {
        Self::replay(&self.db, tenant_id, check).await
    }

    /// Opens an account. `build` turns the new wallet into the response that
    /// is recorded under the idempotency key.
    pub async fn create_account<M: prost::Message + Default>(
        &self,
        check: &IdempotencyCheck,
        mut wallet: Wallet,
        build: impl FnOnce(&Wallet) -> M,
    ) -> Result<Outcome<M>, WalletError> {
        let tenant_id = wallet.account.tenant_id;
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        if let Some(response) = Self::replay(&transaction, tenant_id, check).await? {
            return Ok(Outcome::Replayed(response));
        }
        let exists = account::Entity::find()
            .filter(account::Column::TenantId.eq(tenant_id.0))
            .filter(account::Column::ExternalId.eq(wallet.account.external_id.clone()))
            .one(&transaction)
            .await?;
        if exists.is_some() {
            return Err(WalletError::AccountExists);
        }
        let inserted =
            account::Entity::insert(rows::account_to_row(&wallet.account)).exec_without_returning(&transaction).await;
        if let Err(error) = inserted {
            if !is_unique_violation(&error) {
                return Err(error.into());
            }
            // A concurrent call opened the account first: this may be its
            // retry, which replays, or another request, which is refused.
            transaction.rollback().await?;
            return match Self::replay(&self.db, tenant_id, check).await? {
                Some(response) => Ok(Outcome::Replayed(response)),
                None => Err(WalletError::AccountExists),
            };
        }
        let response = build(&wallet);
        let changes = wallet.take_changes();
        // The key first, the events (and the outbox counter) last.
        record(&transaction, tenant_id, check, &response).await?;
        write_changes(&transaction, &[(&wallet, changes)]).await?;
        transaction.commit().await?;
        metrics::counter!("reservoir_wallet_changes_total", "method" => check.method, "outcome" => "applied")
            .increment(1);
        self.events_written.notify_waiters();
        Ok(Outcome::Applied(response))
    }

    /// Changes one wallet through the group committer: concurrent changes,
    /// of any wallets, are committed together in one transaction, each
    /// standing or falling on its own. For changes that need no more than
    /// the wallet's live grants and due holds (debits).
    pub async fn mutate_grouped<M: prost::Message + Default>(
        &self,
        tenant: TenantId,
        account: AccountId,
        check: IdempotencyCheck,
        now: DateTime<Utc>,
        operate: impl Fn(&mut Wallet) -> Result<M, WalletError> + Send + Sync + 'static,
    ) -> Result<M, WalletError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = committer::Job {
            tenant,
            account,
            check,
            now,
            operate: Box::new(move |wallet| operate(wallet).map(|response| response.encode_to_vec())),
            reply,
        };
        self.committers.submit(job).await?;
        let encoded = answer.await.map_err(|_| WalletError::Unavailable("the committer has stopped".into()))??;
        M::decode(encoded.as_slice())
            .map_err(|error| WalletError::Internal(format!("a response does not decode: {error}")))
    }

    /// Changes two wallets of a tenant in one transaction, as [`Store::mutate`]
    /// does one: both account rows are locked in id order, so two transfers
    /// between the same accounts in opposite directions cannot deadlock.
    /// `operate` gets the wallets in the order given and the tenant's
    /// promotional-transfer setting, read under the same transaction.
    pub async fn mutate_pair<M: prost::Message + Default>(
        &self,
        tenant_id: TenantId,
        accounts: (AccountId, AccountId),
        check: &IdempotencyCheck,
        now: DateTime<Utc>,
        operate: impl FnOnce(&mut Wallet, &mut Wallet, bool) -> Result<M, WalletError>,
    ) -> Result<Outcome<M>, WalletError> {
        if accounts.0 == accounts.1 {
            // Loaded twice, one wallet would be written as two.
            return Err(WalletError::field("to_account_id", "must differ from from_account_id"));
        }
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let (low, high) = if accounts.0 <= accounts.1 { accounts } else { (accounts.1, accounts.0) };
        let plan = LoadPlan::default();
        let low_wallet = load(&transaction, tenant_id, low, &plan, now, true).await?.wallet;
        let high_wallet = load(&transaction, tenant_id, high, &plan, now, true).await?.wallet;
        let (mut first, mut second) =
            if accounts.0 == low { (low_wallet, high_wallet) } else { (high_wallet, low_wallet) };
        if let Some(response) = Self::replay(&transaction, tenant_id, check).await? {
            return Ok(Outcome::Replayed(response));
        }
        let allow_promotional = tenant::Entity::find_by_id(tenant_id.0)
            .one(&transaction)
            .await?
            .is_some_and(|row| row.allow_promotional_transfers);
        let response = operate(&mut first, &mut second, allow_promotional)?;
        self.commit_changes(transaction, tenant_id, Some(check), &response, [&mut first, &mut second]).await?;
        Ok(Outcome::Applied(response))
    }

    /// The end of a change: the response recorded under the key first, then
    /// what the wallets changed (the events, and the outbox counter, last),
    /// the commit, and afterwards the cache, the metrics and the event streams.
    async fn commit_changes<M: prost::Message, const N: usize>(
        &self,
        transaction: DatabaseTransaction,
        tenant_id: TenantId,
        check: Option<&IdempotencyCheck>,
        response: &M,
        mut wallets: [&mut Wallet; N],
    ) -> Result<(), WalletError> {
        let changes: Vec<Changes> = wallets.iter_mut().map(|wallet| wallet.take_changes()).collect();
        let has_events = changes.iter().any(|changes| !changes.events.is_empty());
        if let Some(check) = check {
            record(&transaction, tenant_id, check, response).await?;
        }
        let batch: Vec<(&Wallet, Changes)> = wallets.iter().map(|wallet| &**wallet).zip(changes).collect();
        write_changes(&transaction, &batch).await?;
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
    /// changed is written with the response recorded under the key. A domain
    /// refusal rolls everything back.
    pub async fn mutate<M: prost::Message + Default>(
        &self,
        tenant_id: TenantId,
        account_id: AccountId,
        check: Option<&IdempotencyCheck>,
        plan: &LoadPlan,
        now: DateTime<Utc>,
        operate: impl FnOnce(&mut Loaded) -> Result<M, WalletError>,
    ) -> Result<Outcome<M>, WalletError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let mut loaded = load(&transaction, tenant_id, account_id, plan, now, true).await?;
        // Checked under the row lock: a retry that waited for the original
        // call to commit must replay its result, not run again against the
        // state that call left.
        if let Some(check) = check
            && let Some(response) = Self::replay(&transaction, tenant_id, check).await?
        {
            return Ok(Outcome::Replayed(response));
        }
        let response = operate(&mut loaded)?;
        self.commit_changes(transaction, tenant_id, check, &response, [&mut loaded.wallet]).await?;
        Ok(Outcome::Applied(response))
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Loads and locks many wallets at once, for the group committer: three
/// queries for the whole batch rather than three per account. Accounts of
/// another tenant are left out, as if they did not exist.
pub(crate) async fn load_many(
    connection: &impl ConnectionTrait,
    wanted: &BTreeSet<(TenantId, AccountId)>,
    now: DateTime<Utc>,
) -> Result<std::collections::BTreeMap<(TenantId, AccountId), Wallet>, WalletError> {
    let ids: Vec<Uuid> = wanted.iter().map(|(_, account)| account.0).collect();
    let mut accounts = Vec::new();
    let mut grants: std::collections::HashMap<Uuid, Vec<Grant>> = std::collections::HashMap::new();
    let mut holds: std::collections::HashMap<Uuid, Vec<Hold>> = std::collections::HashMap::new();
    for chunk in ids.chunks(500) {
        let rows = account::Entity::find()
            .filter(account::Column::Id.is_in(chunk.to_vec()))
            .order_by_asc(account::Column::Id)
            .lock_exclusive()
            .all(connection)
            .await?;
        for row in rows {
            accounts.push(rows::account_from_row(row)?);
        }
        for row in grant::Entity::find()
            .filter(grant::Column::AccountId.is_in(chunk.to_vec()))
            .filter(grant::Column::Status.eq("ACTIVE"))
            .all(connection)
            .await?
        {
            grants.entry(row.account_id).or_default().push(rows::grant_from_row(row)?);
        }
        for row in hold::Entity::find()
            .filter(hold::Column::AccountId.is_in(chunk.to_vec()))
            .filter(hold::Column::Status.eq("ACTIVE"))
            .filter(hold::Column::ExpiresAt.lte(now))
            .all(connection)
            .await?
        {
            holds.entry(row.account_id).or_default().push(rows::hold_from_row(row)?);
        }
    }
    Ok(accounts
        .into_iter()
        .filter(|account| wanted.contains(&(account.tenant_id, account.id)))
        .map(|account| {
            let id = account.id.0;
            let key = (account.tenant_id, account.id);
            (key, Wallet::new(account, grants.remove(&id).unwrap_or_default(), holds.remove(&id).unwrap_or_default()))
        })
        .collect())
}

/// Loads a wallet: the account (locked when `for_update`), its active grants
/// and any others the plan names, its active holds already past expiry and
/// those the plan names, and for a refund the refunded operation's entries.
async fn load(
    connection: &impl ConnectionTrait,
    tenant_id: TenantId,
    account_id: AccountId,
    plan: &LoadPlan,
    now: DateTime<Utc>,
    for_update: bool,
) -> Result<Loaded, WalletError> {
    let mut query = account::Entity::find_by_id(account_id.0).filter(account::Column::TenantId.eq(tenant_id.0));
    if for_update {
        query = query.lock_exclusive();
    }
    let account_row = query.one(connection).await?.ok_or(WalletError::NotFound("account"))?;
    let account = rows::account_from_row(account_row)?;

    let (operation_entries, prior_refunds) = match plan.refund_of {
        Some(operation) => {
            let entries: Vec<Entry> = entry::Entity::find()
                .filter(entry::Column::OperationId.eq(operation.0))
                .filter(entry::Column::AccountId.eq(account_id.0))
                .order_by_asc(entry::Column::Sequence)
                .all(connection)
                .await?
                .into_iter()
                .map(rows::entry_from_row)
                .collect::<Result<_, _>>()?;
            let ids: Vec<Uuid> = entries.iter().map(|entry| entry.id.0).collect();
            let refunds: Vec<Entry> = entry::Entity::find()
                .filter(entry::Column::RefundedEntryId.is_in(ids))
                .all(connection)
                .await?
                .into_iter()
                .map(rows::entry_from_row)
                .collect::<Result<_, _>>()?;
            (entries, refunds)
        }
        None => (Vec::new(), Vec::new()),
    };

    let mut grant_ids: BTreeSet<Uuid> = plan.grant_ids.iter().map(|id| id.0).collect();
    grant_ids.extend(operation_entries.iter().filter_map(|entry| entry.grant_id.map(|id| id.0)));
    let mut grant_rows = grant::Entity::find()
        .filter(grant::Column::AccountId.eq(account_id.0))
        .filter(grant::Column::Status.eq("ACTIVE"))
        .all(connection)
        .await?;
    let missing: Vec<Uuid> =
        grant_ids.iter().filter(|id| !grant_rows.iter().any(|row| row.id == **id)).copied().collect();
    if !missing.is_empty() {
        grant_rows.extend(
            grant::Entity::find()
                .filter(grant::Column::AccountId.eq(account_id.0))
                .filter(grant::Column::Id.is_in(missing))
                .all(connection)
                .await?,
        );
    }
    let grants: Vec<Grant> = grant_rows.into_iter().map(rows::grant_from_row).collect::<Result<_, _>>()?;

    let mut hold_rows = hold::Entity::find()
        .filter(hold::Column::AccountId.eq(account_id.0))
        .filter(hold::Column::Status.eq("ACTIVE"))
        .filter(hold::Column::ExpiresAt.lte(now))
        .all(connection)
        .await?;
    let wanted: Vec<Uuid> =
        plan.hold_ids.iter().map(|id| id.0).filter(|id| !hold_rows.iter().any(|row| row.id == *id)).collect();
    if !wanted.is_empty() {
        hold_rows.extend(
            hold::Entity::find()
                .filter(hold::Column::AccountId.eq(account_id.0))
                .filter(hold::Column::Id.is_in(wanted))
                .all(connection)
                .await?,
        );
    }
    let holds: Vec<Hold> = hold_rows.into_iter().map(rows::hold_from_row).collect::<Result<_, _>>()?;
    Ok(Loaded { wallet: Wallet::new(account, grants, holds), operation_entries, prior_refunds })
}

/// Writes what operations changed, for one or many wallets at once: each
/// wallet's own rows, then every entry and every event together. Entries are
/// only ever inserted.
pub(crate) async fn write_changes(
    transaction: &DatabaseTransaction,
    batch: &[(&Wallet, Changes)],
) -> Result<(), WalletError> {
    let mut entries: Vec<entry::ActiveModel> = Vec::new();
    let mut events: Vec<(&crate::domain::Event, &Wallet)> = Vec::new();
    let changed: Vec<&(&Wallet, Changes)> = batch.iter().filter(|(_, changes)| !changes.is_empty()).collect();
    // On PostgreSQL one UPDATE for all accounts, one for all grants.
    let together = transaction.get_database_backend() == DbBackend::Postgres;
    if together {
        update_accounts_together(transaction, &changed).await?;
    }
    for (wallet, changes) in &changed {
        if !together {
            account::Entity::update(rows::account_to_row(&wallet.account)).exec(transaction).await?;
        }
        write_grants_and_holds(transaction, wallet, changes, together).await?;
        let tenant = wallet.account.tenant_id;
        entries.extend(changes.entries.iter().map(|entry| rows::entry_to_row(entry, tenant)));
        events.extend(changes.events.iter().map(|event| (event, *wallet)));
    }
    if together {
        update_grants_together(transaction, &changed).await?;
    }
    // An entry row is a few hundred bytes on the wire.
    for chunk in entries.chunks(rows_per_insert(400)) {
        entry::Entity::insert_many(chunk.to_vec()).exec_without_returning(transaction).await?;
    }
    if !events.is_empty() {
        write_events(transaction, &events).await?;
    }
    Ok(())
}

/// Many accounts' rows in one UPDATE … FROM (VALUES …) on PostgreSQL, whose
/// driver sends typed parameters, so no casts are needed.
async fn update_accounts_together(
    transaction: &DatabaseTransaction,
    changed: &[&(&Wallet, Changes)],
) -> Result<(), WalletError> {
    // Twenty-three parameters a row; 400 rows stay far below the parameter limit.
    for chunk in changed.chunks(400) {
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 23);
        for (wallet, _) in chunk {
            let account = &wallet.account;
            let spend = &account.spend;
            values.extend([
                account.id.0.into(),
                rows::account_status_name(account.status).into(),
                rows::overdraft_policy_name(&account.overdraft).into(),
                Amount(account.overdraft.credit_limit()).into(),
                account.low_balance_threshold.map(Amount).into(),
                account.low_balance_alerted.into(),
                account.depleted_alerted.into(),
                Amount(account.overdraft_used).into(),
                Amount(account.held).into(),
                i64::try_from(account.last_sequence).unwrap_or(i64::MAX).into(),
                account.updated_at.into(),
                account.credit_blocked.into(),
                i64::try_from(account.version).unwrap_or(i64::MAX).into(),
                spend.monthly_cap.map(Amount).into(),
                spend.low_balance_warning.map(Amount).into(),
                spend.low_balance_warned.into(),
                spend.transfer_max.map(Amount).into(),
                spend.transfer_daily_limit.map(Amount).into(),
                spend.month.clone().into(),
                Amount(spend.month_spend).into(),
                i32::try_from(spend.cap_alerted_percent).unwrap_or(0).into(),
                spend.day.clone().into(),
                Amount(spend.transferred_today).into(),
            ]);
        }
        let sql = format!(
            "UPDATE accounts SET status = v.status, overdraft_policy = v.policy, credit_limit = v.credit_limit, \
             low_balance_threshold = v.threshold, low_balance_alerted = v.low, depleted_alerted = v.depleted, \
             overdraft_used = v.overdraft_used, held = v.held, last_sequence = v.last_sequence, updated_at = v.updated_at, \
             credit_blocked = v.credit_blocked, version = v.version, monthly_cap = v.monthly_cap, \
             low_balance_warning = v.warning, low_balance_warned = v.warned, transfer_max = v.transfer_max, \
             transfer_daily_limit = v.transfer_daily_limit, spend_month = v.spend_month, month_spend = v.month_spend, \
             cap_alerted_percent = v.cap_alerted, transfer_day = v.transfer_day, transferred_today = v.transferred_today \
             FROM (VALUES {}) AS v(id, status, policy, credit_limit, threshold, low, depleted, overdraft_used, held, \
             last_sequence, updated_at, credit_blocked, version, monthly_cap, warning, warned, transfer_max, \
             transfer_daily_limit, spend_month, month_spend, cap_alerted, transfer_day, transferred_today) \
             WHERE accounts.id = v.id",
            values_list(chunk.len(), 23, 0)
        );
        transaction.execute_raw(sea_orm::Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    }
    Ok(())
}

/// Many grants' remainders in one UPDATE on PostgreSQL.
async fn update_grants_together(
    transaction: &DatabaseTransaction,
    changed: &[&(&Wallet, Changes)],
) -> Result<(), WalletError> {
    let touched: Vec<&Grant> = changed
        .iter()
        .flat_map(|(wallet, changes)| {
            wallet
                .grants
                .iter()
                .filter(|grant| changes.touched_grants.contains(&grant.id) && !changes.new_grants.contains(&grant.id))
        })
        .collect();
    for chunk in touched.chunks(1_000) {
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(chunk.len() * 3);
        for grant in chunk {
            values.extend([
                grant.id.0.into(),
                Amount(grant.remaining).into(),
                rows::grant_status_name(grant.status).into(),
            ]);
        }
        let sql = format!(
            "UPDATE grants SET remaining_amount = v.remaining, status = v.status \
             FROM (VALUES {}) AS v(id, remaining, status) WHERE grants.id = v.id",
            values_list(chunk.len(), 3, 0)
        );
        transaction.execute_raw(sea_orm::Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    }
    Ok(())
}

/// The grants and holds an operation created or changed; changed grants are
/// left to [`update_grants_together`] when `grants_together`.
async fn write_grants_and_holds(
    transaction: &DatabaseTransaction,
    wallet: &Wallet,
    changes: &Changes,
    grants_together: bool,
) -> Result<(), WalletError> {
    let account = &wallet.account;
    let new_grants: Vec<grant::ActiveModel> = wallet
        .grants
        .iter()
        .filter(|grant| changes.new_grants.contains(&grant.id))
        .map(|grant| rows::grant_to_row(grant, account.tenant_id))
        .collect();
    if !new_grants.is_empty() {
        grant::Entity::insert_many(new_grants).exec_without_returning(transaction).await?;
    }
    for grant in wallet.grants.iter().filter(|grant| {
        !grants_together && changes.touched_grants.contains(&grant.id) && !changes.new_grants.contains(&grant.id)
    }) {
        grant::Entity::update_many()
            .col_expr(grant::Column::RemainingAmount, Expr::value(Amount(grant.remaining)))
            .col_expr(grant::Column::Status, Expr::value(rows::grant_status_name(grant.status)))
            .filter(grant::Column::Id.eq(grant.id.0))
            .exec(transaction)
            .await?;
    }
    let new_holds: Vec<hold::ActiveModel> = wallet
        .holds
        .iter()
        .filter(|hold| changes.new_holds.contains(&hold.id))
        .map(|hold| rows::hold_to_row(hold, account.tenant_id))
        .collect();
    if !new_holds.is_empty() {
        hold::Entity::insert_many(new_holds).exec_without_returning(transaction).await?;
    }
    for hold in wallet
        .holds
        .iter()
        .filter(|hold| changes.touched_holds.contains(&hold.id) && !changes.new_holds.contains(&hold.id))
    {
        hold::Entity::update_many()
            .col_expr(hold::Column::Status, Expr::value(rows::hold_status_name(hold.status)))
            .col_expr(hold::Column::CapturedAmount, Expr::value(Amount(hold.captured)))
            .filter(hold::Column::Id.eq(hold.id.0))
            .exec(transaction)
            .await?;
    }
    Ok(())
}

/// Appends events to the outbox, last in the transaction. Sequence numbers
/// come from one counter row: writers queue on it only for the moment before
/// their commit, and events become visible in sequence order, so a reader
/// that resumes after a sequence never misses an event committed later with
/// a lower number. The payload leaves the sequence out; the reader sets it
/// from the row. On PostgreSQL the counter and the rows are written by one
/// statement per chunk.
async fn write_events(
    transaction: &DatabaseTransaction,
    events: &[(&crate::domain::Event, &Wallet)],
) -> Result<(), WalletError> {
    let backend = transaction.get_database_backend();
    // An event row carries its encoded payload, a few hundred bytes.
    for chunk in events.chunks(rows_per_insert(400)) {
        let count = i64::try_from(chunk.len()).unwrap_or(i64::MAX);
        let rows = chunk.iter().map(|(event, wallet)| {
            (
                wallet.account.tenant_id.0,
                event.account_id.0,
                rows::event_type_name(event.event_type),
                crate::convert::event_payload(event, &wallet.account.unit, 0),
                event.occurred_at,
            )
        });
        if backend == DbBackend::Postgres {
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(1 + chunk.len() * 6);
            values.push(count.into());
            for (offset, (tenant, account, event_type, payload, occurred_at)) in rows.enumerate() {
                values.extend([
                    i64::try_from(offset + 1).unwrap_or(i64::MAX).into(),
                    tenant.into(),
                    account.into(),
                    event_type.into(),
                    payload.into(),
                    occurred_at.into(),
                ]);
            }
            let sql = format!(
                "WITH counter AS (UPDATE outbox_counter SET last_sequence = last_sequence + $1 WHERE id = 1 \
                 RETURNING last_sequence) \
                 INSERT INTO outbox_events (sequence, tenant_id, account_id, event_type, payload, created_at) \
                 SELECT counter.last_sequence - $1 + v.n, v.tenant_id, v.account_id, v.event_type, v.payload, v.created_at \
                 FROM counter, (VALUES {}) AS v(n, tenant_id, account_id, event_type, payload, created_at)",
                values_list(chunk.len(), 6, 1)
            );
            let written = transaction
                .execute_raw(sea_orm::Statement::from_sql_and_values(DbBackend::Postgres, sql, values))
                .await?
                .rows_affected();
            if written != chunk.len() as u64 {
                return Err(WalletError::Internal("the outbox counter row is missing".into()));
            }
            continue;
        }
        let statement = sea_orm::Statement::from_sql_and_values(
            backend,
            "UPDATE outbox_counter SET last_sequence = last_sequence + $1 WHERE id = 1 RETURNING last_sequence",
            [count.into()],
        );
        let row = transaction
            .query_one_raw(statement)
            .await?
            .ok_or_else(|| WalletError::Internal("the outbox counter row is missing".into()))?;
        let last: i64 = row.try_get("", "last_sequence")?;
        let first = last - count + 1;
        let models: Vec<outbox::ActiveModel> = rows
            .enumerate()
            .map(|(offset, (tenant, account, event_type, payload, occurred_at))| outbox::ActiveModel {
                sequence: Set(first + i64::try_from(offset).unwrap_or(0)),
                tenant_id: Set(tenant),
                account_id: Set(account),
                event_type: Set(event_type.to_owned()),
                payload: Set(payload),
                created_at: Set(occurred_at),
            })
            .collect();
        outbox::Entity::insert_many(models).exec_without_returning(transaction).await?;
    }
    Ok(())
}

async fn record<M: prost::Message>(
    transaction: &DatabaseTransaction,
    tenant_id: TenantId,
    check: &IdempotencyCheck,
    response: &M,
) -> Result<(), WalletError> {
    idempotency::Entity::insert(idempotency::ActiveModel {
        tenant_id: Set(tenant_id.0),
        key: Set(check.key.clone()),
        method: Set(check.method.to_owned()),
        request_hash: Set(check.request_hash.clone()),
        response: Set(response.encode_to_vec()),
        created_at: Set(Utc::now()),
    })
    .on_conflict(OnConflict::columns([idempotency::Column::TenantId, idempotency::Column::Key]).do_nothing().to_owned())
    .exec_without_returning(transaction)
    .await
    .map(|inserted| {
        if inserted == 0 {
            // Another call with the same key committed first (on another
            // account, so the row lock did not order them): this one must not
            // commit; its retry will replay or be told the key was reused.
            Err(WalletError::Conflict("the idempotency key was recorded concurrently".into()))
        } else {
            Ok(())
        }
    })?
}

/// Answers the auth layer from the key table.
pub struct StoreKeyResolver {
    pub store: Store,
    pub pepper: String,
}

impl KeyResolver for StoreKeyResolver {
    fn resolve(&self, key: String) -> futures::future::BoxFuture<'static, Result<Option<Caller>, String>> {
        let store = self.store.clone();
        let hash = hash_key(&self.pepper, &key);
        Box::pin(async move { store.caller_for_key_hash(&hash).await.map_err(|error| error.to_string()) })
    }
}
