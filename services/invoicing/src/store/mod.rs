//! Invoicing's persistence. An invoice and its lines are written in one
//! transaction; a number is taken in the transaction that finalizes, so a
//! failed finalization gives it back; every state change is a conditional
//! update from the state it was read in, so two racing changes cannot both
//! apply.

mod alerts;
mod credit_blocks;
mod entities;
mod events;
mod invoices;
pub mod migrations;
mod reports;
mod tenant_settings;

pub use self::alerts::{AlertMail, AlertSettings, AlertSource};
pub use self::credit_blocks::CreditBlock;
pub use self::events::InvoiceEvent;
pub use self::invoices::{Change, InvoiceFilter, InvoiceRow, Issue};
pub use self::reports::{ReportRun, ReportSchedule, RunStatus};
pub use self::tenant_settings::TenantSettings;

use reservoir_common::db::Database;
use reservoir_common::settings::DatabaseSettings;
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;

use crate::error::InvoicingError;

#[derive(Clone)]
pub struct Store {
    database: Database,
    db: DatabaseConnection,
}

fn corrupt(what: &str) -> InvoicingError {
    InvoicingError::internal(format!("stored {what} is not valid"))
}

impl Store {
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, InvoicingError> {
        let database = Database::connect(settings).await?;
        Ok(Self { db: database.connection().clone(), database })
    }

    /// The connection pool, for its figures.
    pub fn database(&self) -> &Database {
        &self.database
    }

    pub async fn migrate(&self) -> Result<(), InvoicingError> {
        self.database
            .migrate_exclusively(|connection| async move {
                migrations::Migrator::up(&connection, None).await.map_err(InvoicingError::from)
            })
            .await
    }
}
