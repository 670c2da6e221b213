//! Persistence through sea-orm: SQLite by default, PostgreSQL (schema
//! `wallet`) in production. Every change to a wallet happens in one
//! transaction that locks the account row, checks the idempotency key again,
//! lets the domain decide, and writes the account, grants, holds, ledger
//! entries, events and the replay record together. Nothing here knows the
//! wire: changes come in as domain commands and go out as domain answers.

mod batch;
mod cache;
mod committer;
mod entities;
mod events;
mod kept;
mod keys;
mod ledger;
pub mod migrations;
mod reads;
pub mod replay;
mod rows;
mod versions;
mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Database, WriteTransaction, is_unique_violation};
use reservoir_common::settings::DatabaseSettings;
use sea_orm::sea_query::ArrayType;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Statement, Value,
};
use sea_orm_migration::MigratorTrait;
use tokio::sync::Notify;
use uuid::Uuid;

use self::entities::{account, grant, hold, replay as replay_record, tenant};
use self::ledger::array;
use self::replay::Recorded;
use crate::domain::{
    Account, AccountId, Answer, Command, Entry, EntryId, Event, Grant, GrantId, Hold, HoldId, OperationContext, Wallet,
};
use crate::error::WalletError;

pub use self::keys::{IssuedKey, KeyListed, StoreKeyResolver, TenantRow};
pub use self::rows::{EntryFilter, entry_kind_name, grant_kind_name, grant_source_name};

/// The tenant that owns the service keys.
const SERVICES_TENANT: &str = "reservoir-services";

/// Account numbers remembered for reading events; past this many the map
/// starts over. A number never changes its account, so it is never stale.
const NUMBERS_CACHED_MAX: usize = 100_000;

/// What an idempotent call is checked against.
#[derive(Debug, Clone)]
pub struct IdempotencyCheck {
    pub key: String,
    /// The RPC, so one key cannot replay another method's result.
    pub method: &'static str,
    /// A digest of the encoded request.
    pub request_hash: Vec<u8>,
    /// A digest of the tenant and the key: what the record is found by.
    pub digest: Vec<u8>,
}

impl IdempotencyCheck {
    pub fn new(tenant: TenantId, method: &'static str, key: &str, encoded_request: &[u8]) -> Self {
        Self {
            key: key.to_owned(),
            method,
            request_hash: replay::request_hash(encoded_request),
            digest: replay::digest(tenant, key),
        }
    }

    pub fn method_code(&self) -> i16 {
        replay::method_code(self.method)
    }
}

/// What a change answers: this version's answer, or the encoded response an
/// earlier version recorded under the key (which the api decodes).
#[derive(Debug, Clone)]
pub enum Reply {
    Answer(Box<Answer>),
    Legacy(Vec<u8>),
}

/// What to load besides the account's live grants and due holds.
#[derive(Debug, Clone, Default)]
pub struct LoadPlan {
    pub grant_ids: Vec<GrantId>,
    pub hold_ids: Vec<HoldId>,
    /// For a refund: an entry of the operation whose entries are refunded.
    pub refund_of: Option<EntryId>,
}

/// A wallet loaded for a change, with what a refund needs.
#[derive(Debug)]
pub struct Loaded {
    pub wallet: Wallet,
    /// The entries of the operation `LoadPlan::refund_of` names.
    pub operation_entries: Vec<Entry>,
    /// REFUND entries already written against those entries.
    pub prior_refunds: Vec<Entry>,
}

/// A command for the group committer, with what it is checked and done under.
pub struct Submitted {
    pub tenant: TenantId,
    pub account: AccountId,
    pub check: IdempotencyCheck,
    pub ctx: OperationContext,
    pub command: Command,
}

/// An event read from the outbox: this version's, or an earlier version's
/// encoded wire event (which the api decodes).
#[derive(Debug, Clone)]
pub enum EventRecord {
    Event { sequence: u64, event: Event },
    Legacy { sequence: u64, payload: Vec<u8> },
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
    /// How events are numbered, read once.
    numbering: Arc<tokio::sync::OnceCell<events::Numbering>>,
    /// Account ids by number, for events.
    numbers: Arc<Mutex<HashMap<u64, AccountId>>>,
    /// Balance reads' version checks.
    versions: versions::VersionReader,
}

impl Store {
    /// Connects (creating the PostgreSQL schema or the SQLite file as needed)
    /// and starts `committers` group committers (one on SQLite, which has one
    /// writer).
    pub async fn connect(settings: &DatabaseSettings, committers: usize) -> Result<Self, WalletError> {
        let database = Database::connect(settings).await?;
        let events_written = Arc::new(Notify::new());
        let count = if settings.is_postgres() { committers.max(1) } else { 1 };
        let cache = Arc::new(cache::WalletCache::default());
        let shared = committer::Shared {
            database: database.clone(),
            pool: database.connection().clone(),
            events_written: events_written.clone(),
            cache: cache.clone(),
        };
        let committers = committer::Committers::start(shared, count);
        let versions = versions::VersionReader::start(database.connection().clone());
        Ok(Self {
            versions,
            committers,
            cache,
            db: database.connection().clone(),
            database,
            events_written,
            numbering: Arc::new(tokio::sync::OnceCell::new()),
            numbers: Arc::new(Mutex::new(HashMap::new())),
        })
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

    // ---- writes -------------------------------------------------------------

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

    /// Changes two wallets of a tenant in one transaction, as [`Store::mutate`]
    /// does one: both account rows are locked in id order, so two transfers
    /// between the same accounts in opposite directions cannot deadlock.
    /// `operate` gets the wallets in the order given and the tenant's
    /// promotional-transfer setting, read under the same transaction.
    pub async fn mutate_pair(
        &self,
        tenant_id: TenantId,
        accounts: (AccountId, AccountId),
        check: &IdempotencyCheck,
        now: DateTime<Utc>,
        operate: impl FnOnce(&mut Wallet, &mut Wallet, bool) -> Result<Answer, WalletError>,
    ) -> Result<Reply, WalletError> {
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
        if let Some(recorded) = lookup(&transaction, check).await? {
            transaction.rollback().await?;
            return replayed(&self.db, tenant_id, recorded).await;
        }
        let allow_promotional = tenant::Entity::find_by_id(tenant_id.0)
            .one(&transaction)
            .await?
            .is_some_and(|row| row.allow_promotional_transfers);
        let answer = operate(&mut first, &mut second, allow_promotional)?;
        self.commit_changes(transaction, Some(check), &answer, [&mut first, &mut second]).await?;
        Ok(Reply::Answer(Box::new(answer)))
    }

    /// The end of a change: the answer recorded under the key first, then
    /// what the wallets changed (the events last), the commit, and afterwards
    /// the cache, the metrics and the event streams.
    async fn commit_changes<const N: usize>(
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

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
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

/// The record under a check's digest: its answer for the same request, an
/// error for a different one, `None` for a fresh key.
async fn lookup(connection: &impl ConnectionTrait, check: &IdempotencyCheck) -> Result<Option<Recorded>, WalletError> {
    let Some(record) = replay_record::Entity::find_by_id(check.digest.clone()).one(connection).await? else {
        return Ok(None);
    };
    if record.method != check.method_code() || record.request_hash != check.request_hash {
        return Err(WalletError::IdempotencyKeyReused);
    }
    replay::decode(&record.answer).map(Some)
}

/// The recorded keys among `digests`: method, request hash and answer.
pub(crate) async fn recorded_keys(
    connection: &impl ConnectionTrait,
    digests: impl Iterator<Item = Vec<u8>>,
) -> Result<HashMap<Vec<u8>, (i16, Vec<u8>, Vec<u8>)>, WalletError> {
    let digests: Vec<Vec<u8>> = digests.collect();
    let mut recorded = HashMap::new();
    for chunk in digests.chunks(500) {
        let rows = replay_record::Entity::find()
            .filter(replay_record::Column::Digest.is_in(chunk.to_vec()))
            .all(connection)
            .await?;
        for row in rows {
            recorded.insert(row.digest, (row.method, row.request_hash, row.answer));
        }
    }
    Ok(recorded)
}

/// Answers again from a record: the entries are read back from the ledger,
/// where the record says they are. A record naming another tenant's account
/// (two keys whose digests met) is refused rather than shown.
pub(crate) async fn replayed(
    connection: &impl ConnectionTrait,
    tenant: TenantId,
    recorded: Recorded,
) -> Result<Reply, WalletError> {
    let stored = match recorded {
        Recorded::Legacy(bytes) => return Ok(Reply::Legacy(bytes)),
        Recorded::Answer(stored) => stored,
    };
    let mut wallets = Vec::with_capacity(stored.wallets.len());
    for part in &stored.wallets {
        let row = account::Entity::find()
            .filter(account::Column::Number.eq(to_i64(part.number)))
            .one(connection)
            .await?
            .ok_or_else(|| WalletError::internal("a replayed account is missing"))?;
        if row.tenant_id != tenant.0 {
            return Err(WalletError::IdempotencyKeyReused);
        }
        let rows = ledger::range(connection, part.number, part.first_sequence, part.count).await?;
        if rows.len() as u64 != part.count {
            return Err(WalletError::internal("a replayed answer's entries are missing"));
        }
        wallets.push((AccountId(row.id), ledger::entries_of(connection, AccountId(row.id), rows).await?));
    }
    stored.into_answer(wallets).map(|answer| Reply::Answer(Box::new(answer)))
}

/// The statement that reads the current version of each of `accounts`
/// that exists (a batch's accounts: fewer than SQLite's parameters).
pub(crate) fn account_versions_statement<'a>(accounts: impl Iterator<Item = &'a (TenantId, AccountId)>) -> Statement {
    account::Entity::find()
        .filter(account::Column::Id.is_in(accounts.map(|(_, account)| account.0)))
        .select_only()
        .column(account::Column::Id)
        .column(account::Column::Version)
        .build(DbBackend::Sqlite)
}

/// The versions read by [`account_versions_statement`], by account id.
pub(crate) fn versions_of(rows: Vec<sea_orm::QueryResult>) -> Result<HashMap<Uuid, u64>, WalletError> {
    rows.iter()
        .map(|row| {
            let id: Uuid = row.try_get("", "id")?;
            let version: i64 = row.try_get("", "version")?;
            Ok((id, u64::try_from(version).unwrap_or(0)))
        })
        .collect()
}

/// Loads many wallets at once, for the group committer, which holds its
/// writes to the versions read (PostgreSQL) or reads inside the single
/// writer's transaction (SQLite), so nothing is locked: on PostgreSQL one
/// statement for the accounts and grants of the whole batch (and one for
/// lapsed holds, only when an account holds funds), with its ids bound as
/// one array. Accounts of another tenant are left out, as if they did not
/// exist.
pub(crate) async fn load_many(
    connection: &impl ConnectionTrait,
    wanted: &BTreeSet<(TenantId, AccountId)>,
    now: DateTime<Utc>,
) -> Result<BTreeMap<(TenantId, AccountId), Wallet>, WalletError> {
    let ids: Vec<Uuid> = wanted.iter().map(|(_, account)| account.0).collect();
    let mut accounts = Vec::new();
    let mut grants: HashMap<Uuid, Vec<Grant>> = HashMap::new();
    let mut holds: HashMap<Uuid, Vec<Hold>> = HashMap::new();
    let backend = connection.get_database_backend();
    if backend == DbBackend::Postgres {
        let mut any_held = false;
        for (account, account_grants) in accounts_with_grants(connection, &ids, None).await? {
            any_held |= !account.held.is_zero();
            grants.insert(account.id.0, account_grants);
            accounts.push(account);
        }
        // Only a wallet holding funds can have a hold past its expiry.
        if any_held {
            for row in hold::Entity::find()
                .from_raw_sql(Statement::from_sql_and_values(
                    backend,
                    "SELECT * FROM holds WHERE account_id = ANY($1) AND status = 'ACTIVE' AND expires_at <= $2",
                    [array(ArrayType::Uuid, ids.iter().map(|id| Value::from(*id)).collect()), now.into()],
                ))
                .all(connection)
                .await?
            {
                holds.entry(row.account_id).or_default().push(rows::hold_from_row(row)?);
            }
        }
    } else {
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

/// Accounts and their active grants in one statement (PostgreSQL): a batch
/// of wallets not kept costs one round trip and one snapshot, not one per
/// table. With `tenant`, only that tenant's accounts. Nothing is locked: a
/// `FOR UPDATE OF a` here would wait for a row and then see its newest
/// version beside grants as of the statement's start.
async fn accounts_with_grants(
    connection: &impl ConnectionTrait,
    ids: &[Uuid],
    tenant: Option<TenantId>,
) -> Result<Vec<(Account, Vec<Grant>)>, WalletError> {
    // The account's columns under their own names, the grant's prefixed:
    // an empty prefix spares sea-orm building each column's name per row.
    static SQL: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
        use sea_orm::{IdenStatic, Iterable};
        let grant_columns: Vec<String> =
            grant::Column::iter().map(|column| format!("g.{0} AS g_{0}", column.as_str())).collect();
        let select = format!(
            "SELECT a.*, {} FROM accounts a LEFT JOIN grants g ON g.account_id = a.id AND g.status = 'ACTIVE' \
             WHERE a.id = ANY($1)",
            grant_columns.join(", ")
        );
        let order = "ORDER BY a.id, g.created_sequence, g.id";
        [format!("{select} {order}"), format!("{select} AND a.tenant_id = $2 {order}")]
    });
    let sql = &SQL[usize::from(tenant.is_some())];
    let mut values = vec![array(ArrayType::Uuid, ids.iter().map(|id| Value::from(*id)).collect())];
    if let Some(tenant) = tenant {
        values.push(tenant.0.into());
    }
    let rows = connection.query_all_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    let mut wallets: Vec<(Account, Vec<Grant>)> = Vec::new();
    for row in rows {
        use sea_orm::FromQueryResult;
        let id: Uuid = row.try_get("", "id")?;
        if wallets.last().is_none_or(|(account, _)| account.id.0 != id) {
            wallets.push((rows::account_from_row(account::Model::from_query_result(&row, "")?)?, Vec::new()));
        }
        // An account without active grants has one row, with no grant in it.
        let grant_id: Option<Uuid> = row.try_get("", "g_id")?;
        if grant_id.is_some()
            && let Some((_, grants)) = wallets.last_mut()
        {
            grants.push(rows::grant_from_row(grant::Model::from_query_result(&row, "g_")?)?);
        }
    }
    Ok(wallets)
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
        Some(entry_id) => {
            let row = ledger::by_id(connection, entry_id).await?.ok_or(WalletError::NotFound("entry"))?;
            if row.account_number != to_i64(account.number) {
                return Err(WalletError::NotFound("entry"));
            }
            let rows = ledger::operation_of(connection, &row).await?;
            let sequences: Vec<i64> = rows.iter().map(|row| row.sequence).collect();
            let entries = ledger::entries_of(connection, account.id, rows).await?;
            let refunds = ledger::refunds_of(connection, to_i64(account.number), sequences).await?;
            let refunds = ledger::entries_of(connection, account.id, refunds).await?;
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
