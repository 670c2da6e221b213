//! Metering's persistence. Events are stored (priced, with the monthly usage
//! counter advanced) in one transaction before their debit is sent, so an
//! accepted event survives any crash; its status follows once the wallet
//! answers.

mod accounts;
mod authorizations;
pub mod batcher;
mod counters;
mod entities;
mod events;
mod latest;
mod lines;
mod meters;
pub mod migrations;
mod unique;
mod usage;

pub use self::authorizations::{AuthorizationRow, SETTLEMENT_EVENT_PREFIX, settlement_event_id};
pub use self::events::{NewEvent, Settlement, Stored, StoredEvent};
pub use self::latest::{ClosedMonth, MonthToClose};
pub use self::lines::{LEGACY_LINE_PREFIX, Line};
pub use self::meters::MeterRow;
pub use self::usage::{IngestEvent, StoredBatch};

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::Database;
use reservoir_common::db::replay::{self, Call, OnSameKey};
use reservoir_common::idempotency::Replayed;
use reservoir_common::settings::DatabaseSettings;
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::MeteringError;

/// How long whoever sends an event's debit holds the event: longer than a
/// wallet call may take (10 s), so two senders never both get an answer for
/// one event. A sender that fails lets go at once; only a crashed one makes
/// its events wait this long.
pub(crate) const CLAIM: chrono::Duration = chrono::Duration::seconds(15);

#[derive(Clone)]
pub struct Store {
    database: Database,
    db: DatabaseConnection,
}

pub(crate) use reservoir_common::db::json;

fn corrupt(what: &str) -> MeteringError {
    MeteringError::internal(format!("stored {what} is not valid"))
}

impl Store {
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, MeteringError> {
        let database = Database::connect(settings).await?;
        Ok(Self { db: database.connection().clone(), database })
    }

    /// The connection pool, for its figures.
    pub fn database(&self) -> &Database {
        &self.database
    }

    pub async fn migrate(&self) -> Result<(), MeteringError> {
        self.database
            .migrate_exclusively(|connection| async move {
                migrations::Migrator::up(&connection, None).await.map_err(MeteringError::from)
            })
            .await
    }

    // ---- idempotency -------------------------------------------------------------

    /// The answer recorded under a key, if any: the record of it this store
    /// keeps (`T`, serialized as JSON), or, for a record from before that,
    /// the encoded response. The key used for another method or request is
    /// refused.
    pub async fn replay<T: DeserializeOwned>(
        &self,
        tenant: TenantId,
        key: &str,
        method: &str,
        request_hash: &str,
    ) -> Result<Option<Replayed<T>>, MeteringError> {
        Ok(replay::replay(&self.db, Call { tenant, key, method, request_hash }).await?)
    }

    /// Records what rebuilds an answer under its key; a key recorded
    /// meanwhile keeps its first record.
    pub async fn record<T: Serialize>(
        &self,
        tenant: TenantId,
        key: &str,
        method: &str,
        request_hash: &str,
        answer: &T,
        now: DateTime<Utc>,
    ) -> Result<(), MeteringError> {
        let call = Call { tenant, key, method, request_hash };
        Ok(replay::record(&self.db, call, answer, now, OnSameKey::KeepFirst).await?)
    }
}
