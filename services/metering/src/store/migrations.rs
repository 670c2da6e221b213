//! Metering's schema, one text for both backends with their column types
//! substituted (exact NUMERIC amounts on PostgreSQL, exact text on SQLite).

use reservoir_common::db::render_schema;
use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;

pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(Initial),
            Box::new(UsageLines),
            Box::new(SettlingRoom),
            Box::new(RecordedAnswers),
            Box::new(Aggregations),
        ]
    }
}

const SCHEMA: &str = r#"
CREATE TABLE meters (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    code TEXT NOT NULL,
    unit_name TEXT NOT NULL,
    aggregation TEXT NOT NULL CHECK (aggregation IN ('SUM', 'COUNT')),
    description TEXT NOT NULL,
    created_at {time} NOT NULL,
    UNIQUE (tenant_id, code)
);

CREATE TABLE prices (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    meter_id {uuid} NOT NULL REFERENCES meters (id),
    effective_from {time} NOT NULL,
    definition TEXT NOT NULL,
    created_at {time} NOT NULL,
    UNIQUE (meter_id, effective_from)
);

CREATE TABLE accounts (
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    unit_code TEXT NOT NULL,
    unit_scale INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, account_id)
);

CREATE TABLE usage_counters (
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    meter_code TEXT NOT NULL,
    month TEXT NOT NULL,
    quantity {amount} NOT NULL,
    PRIMARY KEY (tenant_id, account_id, meter_code, month)
);

CREATE TABLE usage_events (
    tenant_id {uuid} NOT NULL,
    event_id TEXT NOT NULL,
    account_id {uuid} NOT NULL,
    meter_code TEXT NOT NULL,
    quantity {amount} NOT NULL,
    dimensions TEXT NOT NULL,
    occurred_at {time} NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'CHARGED', 'UNCOVERED')),
    amount {amount} NOT NULL,
    charged_amount {amount} NOT NULL,
    uncovered_amount {amount} NOT NULL,
    entry_ids TEXT NOT NULL,
    reason TEXT NOT NULL,
    origin TEXT NOT NULL CHECK (origin IN ('INGEST', 'SETTLEMENT')),
    claimed_until {time} NOT NULL,
    created_at {time} NOT NULL,
    updated_at {time} NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX usage_events_pending ON usage_events (status, claimed_until);
CREATE INDEX usage_events_by_account ON usage_events (tenant_id, account_id, occurred_at);

CREATE TABLE authorizations (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    account_id {uuid} NOT NULL,
    meter_code TEXT NOT NULL,
    dimensions TEXT NOT NULL,
    estimated_quantity {amount} NOT NULL,
    estimated_amount {amount} NOT NULL,
    hold_id {uuid},
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'ACTIVE', 'REFUSED', 'SETTLING', 'SETTLED', 'EXPIRED')),
    expires_at {time} NOT NULL,
    actual_quantity {amount},
    actual_amount {amount},
    charged_amount {amount},
    uncovered_amount {amount},
    created_at {time} NOT NULL,
    updated_at {time} NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX authorizations_open ON authorizations (status, updated_at);

CREATE TABLE idempotency_keys (
    tenant_id {uuid} NOT NULL,
    key TEXT NOT NULL,
    method TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response {bytes} NOT NULL,
    created_at {time} NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
"#;

struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m0001_metering"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&render_schema(SCHEMA, db.get_database_backend())).await?;
        Ok(())
    }
}

/// Usage drawn a line at a time: each ingested event belongs to a line (its
/// batch, account and meter), drawn from the wallet in one go under the
/// line's key. Lines not yet drawn are listed on their own, so no index of
/// the events names their status and settling an event can stay a HOT update.
struct UsageLines;

impl MigrationName for UsageLines {
    fn name(&self) -> &str {
        "m0002_usage_lines"
    }
}

const USAGE_LINES: &str = r#"
ALTER TABLE usage_events ADD COLUMN draw_key TEXT;
ALTER TABLE usage_events ADD COLUMN draw_position INTEGER;
CREATE INDEX usage_events_by_line ON usage_events (tenant_id, draw_key) WHERE draw_key IS NOT NULL;
CREATE TABLE usage_lines (
    tenant_id {uuid} NOT NULL,
    draw_key TEXT NOT NULL,
    account_id {uuid} NOT NULL,
    meter_code TEXT NOT NULL,
    claimed_until {time} NOT NULL,
    created_at {time} NOT NULL,
    PRIMARY KEY (tenant_id, draw_key)
);
CREATE INDEX usage_lines_due ON usage_lines (claimed_until);
INSERT INTO usage_lines (tenant_id, draw_key, account_id, meter_code, claimed_until, created_at)
    SELECT tenant_id, 'legacy:' || event_id, account_id, meter_code, claimed_until, created_at
    FROM usage_events WHERE status = 'PENDING' AND origin = 'INGEST';
DROP INDEX usage_events_pending;
"#;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for UsageLines {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        db.execute_unprepared(&render_schema(USAGE_LINES, backend)).await?;
        if backend == sea_orm::DbBackend::Postgres {
            // Room on each page for a settled event's new version beside the old.
            db.execute_unprepared("ALTER TABLE usage_events SET (fillfactor = 70)").await?;
        }
        Ok(())
    }
}

/// Room on each page for every event's settled version beside the one
/// ingested (PostgreSQL). At 70% less than half of the settlements fitted
/// (a settled event carries its entries and amounts, so it is longer), and
/// each that did not wrote an entry into every index of the events. Pages
/// written from now on are half full; HOT pruning gives the old versions'
/// room back.
struct SettlingRoom;

impl MigrationName for SettlingRoom {
    fn name(&self) -> &str {
        "m0003_settling_room"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for SettlingRoom {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == sea_orm::DbBackend::Postgres {
            db.execute_unprepared("ALTER TABLE usage_events SET (fillfactor = 45)").await?;
        }
        Ok(())
    }
}

/// Replay records keep what rebuilds an answer (as JSON) instead of the
/// encoded response; records written before keep theirs, and answer as
/// they did.
struct RecordedAnswers;

impl MigrationName for RecordedAnswers {
    fn name(&self) -> &str {
        "m0004_recorded_answers"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for RecordedAnswers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("ALTER TABLE idempotency_keys ADD COLUMN answer TEXT").await?;
        Ok(())
    }
}

/// Meters of a month's peak (MAX), of distinct values of a dimension
/// (UNIQUE_COUNT) and of the last quantity reported (LATEST): the values
/// each account's month has seen, and the latest quantity of each month
/// with where its charge stands.
struct Aggregations;

impl MigrationName for Aggregations {
    fn name(&self) -> &str {
        "m0005_aggregations"
    }
}

const UNIQUE_VALUES: &str = "
CREATE TABLE unique_values (
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    meter_code TEXT NOT NULL,
    month TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (tenant_id, account_id, meter_code, month, value)
);
CREATE TABLE latest_values (
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    meter_code TEXT NOT NULL,
    month TEXT NOT NULL,
    quantity {amount} NOT NULL,
    occurred_at {time} NOT NULL,
    event_id TEXT NOT NULL,
    dimensions TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('OPEN', 'CLOSED', 'CHARGED')),
    PRIMARY KEY (tenant_id, account_id, meter_code, month)
);
CREATE INDEX latest_values_to_charge ON latest_values (month) WHERE state <> 'CHARGED'";

const AGGREGATION_NAMES: &str = "'SUM', 'COUNT', 'MAX', 'UNIQUE_COUNT', 'LATEST'";

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Aggregations {
    /// One transaction on SQLite too: the meters table is rebuilt there.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        if backend == sea_orm::DbBackend::Postgres {
            db.execute_unprepared(&format!(
                "ALTER TABLE meters DROP CONSTRAINT meters_aggregation_check; \
                 ALTER TABLE meters ADD CONSTRAINT meters_aggregation_check CHECK (aggregation IN ({AGGREGATION_NAMES})); \
                 ALTER TABLE meters ADD COLUMN value_dimension TEXT"
            ))
            .await?;
        } else {
            // SQLite changes no CHECK in place: the table is made again. Its
            // rows leave and come back within the transaction, so the prices
            // naming them are checked against the new table at commit.
            db.execute_unprepared("PRAGMA defer_foreign_keys = ON").await?;
            db.execute_unprepared(&render_schema(
                &format!(
                    "CREATE TABLE meters_before AS SELECT * FROM meters; \
                     DROP TABLE meters; \
                     CREATE TABLE meters ( \
                         id {{uuid}} PRIMARY KEY, \
                         tenant_id {{uuid}} NOT NULL, \
                         code TEXT NOT NULL, \
                         unit_name TEXT NOT NULL, \
                         aggregation TEXT NOT NULL CHECK (aggregation IN ({AGGREGATION_NAMES})), \
                         description TEXT NOT NULL, \
                         created_at {{time}} NOT NULL, \
                         value_dimension TEXT, \
                         UNIQUE (tenant_id, code) \
                     ); \
                     INSERT INTO meters (id, tenant_id, code, unit_name, aggregation, description, created_at) \
                     SELECT id, tenant_id, code, unit_name, aggregation, description, created_at FROM meters_before; \
                     DROP TABLE meters_before;"
                ),
                backend,
            ))
            .await?;
        }
        db.execute_unprepared(&render_schema(UNIQUE_VALUES, backend)).await?;
        Ok(())
    }
}
