//! Invoicing's schema, one text for both backends with their column types
//! substituted (exact NUMERIC amounts on PostgreSQL, exact text on SQLite).

use reservoir_common::db::render_schema;
use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;

pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Initial), Box::new(ScheduledReports), Box::new(InvoiceEvents), Box::new(BillingAlerts)]
    }
}

const SCHEMA: &str = r#"
CREATE TABLE invoices (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('TOP_UP', 'STATEMENT')),
    status TEXT NOT NULL CHECK (status IN ('DRAFT', 'OPEN', 'PAID', 'VOID', 'UNCOLLECTIBLE')),
    invoice_number BIGINT,
    currency TEXT NOT NULL,
    unit_code TEXT NOT NULL,
    total {amount} NOT NULL,
    credits {amount} NOT NULL,
    uncovered_amount {amount} NOT NULL,
    overdraft_policy TEXT NOT NULL,
    period_start {time} NOT NULL,
    period_end {time} NOT NULL,
    issued_at {time},
    due_at {time},
    paid_at {time},
    voided_at {time},
    payment_reference TEXT NOT NULL,
    repayment_pending BOOLEAN NOT NULL,
    description TEXT NOT NULL,
    metadata TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    created_at {time} NOT NULL,
    updated_at {time} NOT NULL,
    UNIQUE (tenant_id, idempotency_key),
    UNIQUE (tenant_id, invoice_number),
    -- Every invoice that left DRAFT other than by voiding it has a number.
    CHECK (status IN ('DRAFT', 'VOID') OR invoice_number IS NOT NULL),
    CHECK (status <> 'DRAFT' OR invoice_number IS NULL)
);
CREATE INDEX invoices_by_account ON invoices (tenant_id, account_id, period_start);
CREATE INDEX invoices_by_period ON invoices (tenant_id, period_start);
CREATE INDEX invoices_due ON invoices (status, due_at);

CREATE TABLE invoice_lines (
    invoice_id {uuid} NOT NULL REFERENCES invoices (id),
    line_number INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('CREDITS', 'USAGE', 'OTHER', 'CREDITS_APPLIED')),
    description TEXT NOT NULL,
    meter_code TEXT NOT NULL,
    dimension_key TEXT NOT NULL,
    dimension_value TEXT NOT NULL,
    quantity {amount} NOT NULL,
    unit_price {amount},
    amount {amount} NOT NULL,
    PRIMARY KEY (invoice_id, line_number)
);

-- The last number given per tenant: finalization increments it in the same
-- transaction that numbers the invoice, so a rolled-back finalization gives
-- its number back and the sequence has no gaps.
CREATE TABLE invoice_numbers (
    tenant_id {uuid} PRIMARY KEY,
    last_number BIGINT NOT NULL
);

CREATE TABLE tenant_settings (
    tenant_id {uuid} PRIMARY KEY,
    payment_due_days INTEGER NOT NULL,
    monthly_cycle BOOLEAN NOT NULL,
    last_cycle TEXT NOT NULL,
    updated_at {time} NOT NULL
);

-- Credit blocks invoicing asked the wallet for. `generation` counts the
-- changes, so each change has an idempotency key of its own at the wallet.
CREATE TABLE credit_blocks (
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    blocked BOOLEAN NOT NULL,
    generation BIGINT NOT NULL,
    applied BOOLEAN NOT NULL,
    updated_at {time} NOT NULL,
    PRIMARY KEY (tenant_id, account_id)
);
"#;

struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m0001_invoicing"
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

/// Scheduled billing reports: one schedule per tenant, one run per period sent.
struct ScheduledReports;

impl MigrationName for ScheduledReports {
    fn name(&self) -> &str {
        "m0002_scheduled_reports"
    }
}

const SCHEDULED_REPORTS: &str = r#"
CREATE TABLE report_schedules (
    tenant_id {uuid} PRIMARY KEY,
    frequency TEXT NOT NULL CHECK (frequency IN ('DAILY', 'WEEKLY', 'MONTHLY')),
    billing_contact TEXT NOT NULL,
    -- Further recipients, one address per line.
    recipients TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    -- The end of the next period to report; the run starts then.
    next_run_at {time} NOT NULL,
    updated_at {time} NOT NULL
);

CREATE TABLE report_runs (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    frequency TEXT NOT NULL,
    period_start {time} NOT NULL,
    period_end {time} NOT NULL,
    recipients TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
    attempts INTEGER NOT NULL,
    next_attempt_at {time} NOT NULL,
    last_error TEXT NOT NULL,
    created_at {time} NOT NULL,
    sent_at {time},
    UNIQUE (tenant_id, frequency, period_start)
);
CREATE INDEX report_runs_by_status ON report_runs (status, next_attempt_at);
"#;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for ScheduledReports {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&render_schema(SCHEDULED_REPORTS, db.get_database_backend())).await?;
        Ok(())
    }
}

/// The invoice events other services (the orchestrator's webhooks) follow.
struct InvoiceEvents;

impl MigrationName for InvoiceEvents {
    fn name(&self) -> &str {
        "m0003_invoice_events"
    }
}

const INVOICE_EVENTS: &str = r#"
CREATE TABLE event_sequence (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_sequence BIGINT NOT NULL
);
INSERT INTO event_sequence (id, last_sequence) VALUES (1, 0);

CREATE TABLE events (
    sequence BIGINT PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    event_type TEXT NOT NULL,
    account_id {uuid} NOT NULL,
    invoice_id {uuid} NOT NULL,
    kind TEXT NOT NULL,
    invoice_number BIGINT,
    total TEXT NOT NULL,
    currency TEXT NOT NULL,
    occurred_at {time} NOT NULL
);
CREATE INDEX events_by_tenant ON events (tenant_id, sequence);
"#;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for InvoiceEvents {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&render_schema(INVOICE_EVENTS, db.get_database_backend())).await?;
        Ok(())
    }
}

/// Billing alerts by email: who gets them, the mails made (one per event
/// alerted on), and how far each tenant's events have been read for them.
struct BillingAlerts;

impl MigrationName for BillingAlerts {
    fn name(&self) -> &str {
        "m0004_billing_alerts"
    }
}

const BILLING_ALERTS: &str = r#"
CREATE TABLE billing_alerts (
    tenant_id {uuid} PRIMARY KEY,
    -- One address a line.
    recipients TEXT NOT NULL,
    -- Events that happened before this instant are not mailed.
    enabled_at {time} NOT NULL,
    updated_at {time} NOT NULL
);

CREATE TABLE alert_cursors (
    tenant_id {uuid} NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('wallet', 'invoicing')),
    after_sequence BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, source)
);

CREATE TABLE alert_mails (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('wallet', 'invoicing')),
    sequence BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('BALANCE_LOW', 'BALANCE_WARNING', 'BALANCE_DEPLETED', 'SPENDING_CAP', 'TOP_UP_PAID')),
    account_id {uuid} NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    recipients TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
    attempts INTEGER NOT NULL,
    next_attempt_at {time} NOT NULL,
    last_error TEXT NOT NULL,
    occurred_at {time} NOT NULL,
    created_at {time} NOT NULL,
    sent_at {time},
    -- One mail per event, however often the event is read.
    UNIQUE (tenant_id, source, sequence)
);
CREATE INDEX alert_mails_by_status ON alert_mails (status, next_attempt_at);
CREATE INDEX alert_mails_by_tenant ON alert_mails (tenant_id, created_at);
"#;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for BillingAlerts {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&render_schema(BILLING_ALERTS, db.get_database_backend())).await?;
        Ok(())
    }
}
