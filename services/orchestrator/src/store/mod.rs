//! The orchestrator's persistence. A top-up's state, the line of its step
//! log and any event it emits are written in one transaction, before and
//! after every step; a runner holds a top-up by a lease it takes with a
//! conditional update, so two replicas never run one top-up at once.

mod auto_replenish;
mod bonuses;
mod entities;
mod events;
pub mod migrations;
mod recurring;
mod top_ups;
mod webhooks;

pub use self::auto_replenish::AutoReplenishRow;
pub use self::bonuses::Refund;
pub use self::events::{NewEvent, StoredEvent};
pub use self::recurring::RecurringRow;
pub use self::top_ups::{StepLine, TopUpRow};
pub use self::webhooks::{AttemptResult, AttemptRow, DeliveryRow, DeliveryStatus, EndpointRow, WebhookMessage};

use reservoir_common::db::Database;
use reservoir_common::settings::DatabaseSettings;
use sea_orm::{DatabaseConnection, DbBackend};
use sea_orm_migration::MigratorTrait;

use crate::error::OrchestratorError;

#[derive(Clone)]
pub struct Store {
    database: Database,
    db: DatabaseConnection,
}

use reservoir_common::db::json;

fn corrupt(what: &str) -> OrchestratorError {
    OrchestratorError::internal(format!("stored {what} is not valid"))
}

impl Store {
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, OrchestratorError> {
        let database = Database::connect(settings).await?;
        Ok(Self { db: database.connection().clone(), database })
    }

    /// The connection pool, for its figures.
    pub fn database(&self) -> &Database {
        &self.database
    }

    pub async fn migrate(&self) -> Result<(), OrchestratorError> {
        self.database
            .migrate_exclusively(|connection| async move {
                migrations::Migrator::up(&connection, None).await.map_err(OrchestratorError::from)
            })
            .await
    }

    /// Whether the database is PostgreSQL, for the few statements that differ.
    pub fn is_postgres(&self) -> bool {
        self.database.backend() == DbBackend::Postgres
    }
}
