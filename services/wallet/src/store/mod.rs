//! Persistence through sea-orm: SQLite by default, PostgreSQL (schema
//! `wallet`) in production. Every change to a wallet happens in one
//! transaction that locks the account row, checks the idempotency key again,
//! lets the domain decide, and writes the account, grants, holds, ledger
//! entries, events and the replay record together. Nothing here knows the
//! wire: changes come in as domain commands and go out as domain answers.

mod batch;
mod budgets;
mod cache;
mod changes;
mod committer;
mod entities;
mod events;
mod fraud;
mod kept;
mod keys;
mod ledger;
mod loads;
pub mod migrations;
mod reads;
pub mod replay;
mod rows;
mod stored;
mod versions;
mod write;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reservoir_common::auth::TenantId;
use reservoir_common::db::Database;
use reservoir_common::settings::DatabaseSettings;
use sea_orm::{DatabaseConnection, DbBackend};
use sea_orm_migration::MigratorTrait;
use tokio::sync::Notify;

use crate::domain::{AccountId, Answer, Command, Entry, EntryId, Event, GrantId, HoldId, OperationContext, Wallet};
use crate::error::WalletError;

pub use self::fraud::{HeldReview, Transferred};
pub use self::keys::{IssuedKey, KeyListed, StoreKeyResolver, TenantRow};
pub use self::ledger::CHAIN_PAGE;
pub use self::rows::{EntryFilter, grant_kind_name, grant_source_name};

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
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
