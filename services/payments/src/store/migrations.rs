//! Payments' schema, one text for both backends with their column types
//! substituted (exact NUMERIC amounts on PostgreSQL, exact text on SQLite).

use reservoir_common::db::render_schema;
use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Initial), Box::new(RecordedAnswers), Box::new(Fraud)]
    }
}

const SCHEMA: &str = r#"
CREATE TABLE payment_methods (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('CARD', 'BANK_TRANSFER', 'MOBILE_WALLET')),
    gateway_token TEXT NOT NULL,
    label TEXT NOT NULL,
    created_at {time} NOT NULL
);
CREATE INDEX payment_methods_by_account ON payment_methods (tenant_id, account_id, id);

CREATE TABLE payments (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    invoice_id {uuid} NOT NULL,
    payment_method_id {uuid} REFERENCES payment_methods (id),
    channel TEXT NOT NULL CHECK (channel IN ('GATEWAY', 'MANUAL')),
    gateway_token TEXT NOT NULL,
    amount {amount} NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('PROCESSING', 'SUCCEEDED', 'DECLINED', 'PENDING', 'FAILED')),
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    gateway_reference TEXT NOT NULL,
    external_transaction_id TEXT NOT NULL,
    failure_code TEXT NOT NULL,
    refunded_amount {amount} NOT NULL,
    metadata TEXT NOT NULL,
    created_at {time} NOT NULL,
    updated_at {time} NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX payments_by_tenant ON payments (tenant_id, id);
CREATE INDEX payments_by_account ON payments (tenant_id, account_id, id);
CREATE INDEX payments_by_invoice ON payments (tenant_id, invoice_id, id);

CREATE TABLE payment_attempts (
    payment_id {uuid} NOT NULL REFERENCES payments (id),
    number INTEGER NOT NULL CHECK (number >= 1),
    outcome TEXT NOT NULL CHECK (outcome IN ('SUCCEEDED', 'DECLINED', 'PENDING', 'FAILED', 'TIMED_OUT')),
    gateway_reference TEXT NOT NULL,
    code TEXT NOT NULL,
    attempted_at {time} NOT NULL,
    PRIMARY KEY (payment_id, number)
);

CREATE TABLE refunds (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    payment_id {uuid} NOT NULL REFERENCES payments (id),
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    amount {amount} NOT NULL,
    reason TEXT NOT NULL,
    channel TEXT NOT NULL CHECK (channel IN ('GATEWAY', 'MANUAL')),
    status TEXT NOT NULL CHECK (status IN ('PROCESSING', 'SUCCEEDED', 'DECLINED')),
    gateway_reference TEXT NOT NULL,
    code TEXT NOT NULL,
    created_at {time} NOT NULL,
    updated_at {time} NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX refunds_by_payment ON refunds (payment_id, id);

CREATE TABLE voucher_batches (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    idempotency_key TEXT NOT NULL,
    count INTEGER NOT NULL CHECK (count >= 1),
    value {amount} NOT NULL,
    unit_code TEXT NOT NULL,
    expires_at {time},
    created_at {time} NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
);

CREATE TABLE vouchers (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    batch_id {uuid} NOT NULL REFERENCES voucher_batches (id),
    code_hash TEXT NOT NULL UNIQUE,
    value {amount} NOT NULL,
    unit_code TEXT NOT NULL,
    expires_at {time},
    redeemed_by {uuid},
    redeemed_at {time},
    created_at {time} NOT NULL,
    CHECK ((redeemed_by IS NULL) = (redeemed_at IS NULL))
);

CREATE TABLE voucher_failures (
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    window_started_at {time} NOT NULL,
    failures INTEGER NOT NULL CHECK (failures >= 0),
    PRIMARY KEY (tenant_id, account_id)
);

CREATE TABLE idempotency_keys (
    tenant_id {uuid} NOT NULL,
    key TEXT NOT NULL,
    method TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response {bytes} NOT NULL,
    created_at {time} NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE event_sequence (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_sequence BIGINT NOT NULL CHECK (last_sequence >= 0)
);
INSERT INTO event_sequence (id, last_sequence) VALUES (1, 0);

CREATE TABLE events (
    sequence BIGINT PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    event_type TEXT NOT NULL CHECK (event_type IN ('PAYMENT_SUCCEEDED', 'PAYMENT_DECLINED', 'PAYMENT_PENDING',
        'PAYMENT_CONFIRMED', 'PAYMENT_FAILED', 'PAYMENT_REFUNDED', 'VOUCHER_REDEEMED')),
    account_id {uuid} NOT NULL,
    payment_id {uuid},
    invoice_id {uuid},
    amount {amount} NOT NULL,
    currency TEXT NOT NULL,
    voucher_id {uuid},
    refund_id {uuid},
    occurred_at {time} NOT NULL
);
CREATE INDEX events_by_tenant ON events (tenant_id, sequence);

CREATE TABLE sandbox_charges (
    operation TEXT NOT NULL CHECK (operation IN ('CHARGE', 'REFUND')),
    idempotency_key TEXT NOT NULL,
    calls INTEGER NOT NULL CHECK (calls >= 1),
    outcome TEXT CHECK (outcome IN ('SUCCEEDED', 'DECLINED', 'PENDING')),
    reference TEXT NOT NULL,
    code TEXT NOT NULL,
    amount {amount},
    currency TEXT NOT NULL,
    parent_reference TEXT NOT NULL,
    created_at {time} NOT NULL,
    updated_at {time} NOT NULL,
    PRIMARY KEY (operation, idempotency_key)
);
CREATE INDEX sandbox_charges_by_reference ON sandbox_charges (reference);
CREATE INDEX sandbox_charges_by_parent ON sandbox_charges (parent_reference);
"#;

/// On PostgreSQL the amounts are numbers, so the database itself refuses a
/// payment that is not positive or a refunded total beyond the payment.
/// SQLite keeps amounts as text, where such a comparison would be by
/// characters, so there the store's checks stand alone.
const POSTGRES_GUARDS: &str = r#"
ALTER TABLE payments ADD CONSTRAINT payments_amount_positive CHECK (amount > 0);
ALTER TABLE payments ADD CONSTRAINT payments_refunded_within_amount
    CHECK (refunded_amount >= 0 AND refunded_amount <= amount);
ALTER TABLE refunds ADD CONSTRAINT refunds_amount_positive CHECK (amount > 0);
ALTER TABLE vouchers ADD CONSTRAINT vouchers_value_positive CHECK (value > 0);
"#;

struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m0001_payments"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        db.execute_unprepared(&render_schema(SCHEMA, backend)).await?;
        if backend == DbBackend::Postgres {
            db.execute_unprepared(POSTGRES_GUARDS).await?;
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
        "m0002_recorded_answers"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for RecordedAnswers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("ALTER TABLE idempotency_keys ADD COLUMN answer TEXT").await?;
        Ok(())
    }
}

/// Fraud rules on charges: the tenant's rules, the decisions they made,
/// the PAYMENT_HELD_FOR_REVIEW event, and indexes the rules count by.
struct Fraud;

impl MigrationName for Fraud {
    fn name(&self) -> &str {
        "m0003_fraud"
    }
}

const FRAUD: &str = r#"
CREATE TABLE fraud_rules (
    tenant_id {uuid} PRIMARY KEY,
    rules TEXT NOT NULL,
    updated_at {time} NOT NULL
);
CREATE TABLE fraud_decisions (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    payment_id {uuid},
    payment_method_id {uuid},
    amount {amount} NOT NULL,
    currency TEXT NOT NULL,
    rule TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('REFUSED', 'HELD', 'RELEASED', 'REJECTED')),
    reason TEXT NOT NULL,
    decided_at {time} NOT NULL
);
CREATE INDEX fraud_decisions_by_tenant ON fraud_decisions (tenant_id, id);
CREATE INDEX payments_by_account_time ON payments (account_id, created_at);
CREATE INDEX payments_by_method_time ON payments (payment_method_id, created_at);
CREATE INDEX payments_by_token_time ON payments (tenant_id, gateway_token, updated_at);
"#;

const EVENT_TYPES: &str = "'PAYMENT_SUCCEEDED', 'PAYMENT_DECLINED', 'PAYMENT_PENDING', 'PAYMENT_CONFIRMED', \
    'PAYMENT_FAILED', 'PAYMENT_REFUNDED', 'VOUCHER_REDEEMED', 'PAYMENT_HELD_FOR_REVIEW'";

/// The outbox with one event type more: SQLite changes no CHECK in place.
const WIDENED_EVENTS: &str = r#"
CREATE TABLE events_widened (
    sequence BIGINT PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    event_type TEXT NOT NULL CHECK (event_type IN ({types})),
    account_id {uuid} NOT NULL,
    payment_id {uuid},
    invoice_id {uuid},
    amount {amount} NOT NULL,
    currency TEXT NOT NULL,
    voucher_id {uuid},
    refund_id {uuid},
    occurred_at {time} NOT NULL
);
INSERT INTO events_widened SELECT sequence, tenant_id, event_type, account_id, payment_id, invoice_id, amount,
    currency, voucher_id, refund_id, occurred_at FROM events;
DROP TABLE events;
ALTER TABLE events_widened RENAME TO events;
CREATE INDEX events_by_tenant ON events (tenant_id, sequence);
"#;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Fraud {
    /// One transaction on SQLite too: the outbox is made again there.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        db.execute_unprepared(&render_schema(FRAUD, backend)).await?;
        if backend == sea_orm::DbBackend::Postgres {
            db.execute_unprepared(&format!(
                "ALTER TABLE events DROP CONSTRAINT events_event_type_check; \
                 ALTER TABLE events ADD CONSTRAINT events_event_type_check CHECK (event_type IN ({EVENT_TYPES}))"
            ))
            .await?;
        } else {
            db.execute_unprepared(&render_schema(&WIDENED_EVENTS.replace("{types}", EVENT_TYPES), backend)).await?;
        }
        Ok(())
    }
}
