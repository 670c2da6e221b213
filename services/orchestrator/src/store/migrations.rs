//! The orchestrator's schema, one text for both backends with their column
//! types substituted (exact NUMERIC amounts on PostgreSQL, exact text on SQLite).

use reservoir_common::db::render_schema;
use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;

pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(Initial),
            Box::new(ReplenishWarning),
            Box::new(Webhooks),
            Box::new(RecurringAnchor),
            Box::new(Rollovers),
            Box::new(Bonuses),
        ]
    }
}

const SCHEMA: &str = r#"
CREATE TABLE top_ups (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    trigger_kind TEXT NOT NULL CHECK (trigger_kind IN ('MANUAL', 'AUTO_REPLENISH', 'RECURRING', 'VOUCHER')),
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'REQUIRES_ACTION', 'SUCCEEDED', 'FAILED')),
    step TEXT NOT NULL,
    credits {amount} NOT NULL,
    -- PAID credits bought, or PROMOTIONAL ones given by a recurring allowance.
    grant_kind TEXT NOT NULL CHECK (grant_kind IN ('PAID', 'PROMOTIONAL')),
    payment_method_id {uuid},
    reconcile_later BOOLEAN NOT NULL,
    credits_expire_at {time},
    invoice_id {uuid},
    payment_id {uuid},
    grant_id {uuid},
    voucher_id {uuid},
    -- A voucher's code, kept only until it is redeemed.
    voucher_code TEXT,
    amount {amount},
    currency TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at {time} NOT NULL,
    claimed_until {time} NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    created_at {time} NOT NULL,
    updated_at {time} NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX top_ups_runnable ON top_ups (status, next_attempt_at);
CREATE INDEX top_ups_by_account ON top_ups (tenant_id, account_id, created_at);
-- At most one automatic top-up in flight per account.
CREATE UNIQUE INDEX top_ups_one_automatic_in_flight ON top_ups (tenant_id, account_id)
    WHERE trigger_kind = 'AUTO_REPLENISH' AND status IN ('PENDING', 'REQUIRES_ACTION');

CREATE TABLE top_up_steps (
    top_up_id {uuid} NOT NULL REFERENCES top_ups (id),
    position INTEGER NOT NULL,
    step TEXT NOT NULL,
    outcome TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    detail TEXT NOT NULL,
    at {time} NOT NULL,
    PRIMARY KEY (top_up_id, position)
);

CREATE TABLE auto_replenish (
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    threshold {amount} NOT NULL,
    strategy TEXT NOT NULL CHECK (strategy IN ('FIXED', 'TO_TARGET')),
    strategy_amount {amount} NOT NULL,
    payment_method_id {uuid} NOT NULL,
    max_top_ups_per_day INTEGER NOT NULL,
    max_credits_per_month {amount},
    min_credits {amount},
    max_credits {amount},
    enabled BOOLEAN NOT NULL,
    paused BOOLEAN NOT NULL,
    consecutive_declines INTEGER NOT NULL,
    updated_at {time} NOT NULL,
    PRIMARY KEY (tenant_id, account_id)
);

CREATE TABLE recurring_top_ups (
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    credits {amount} NOT NULL,
    interval_kind TEXT NOT NULL CHECK (interval_kind IN ('WEEKLY', 'MONTHLY')),
    mode TEXT NOT NULL CHECK (mode IN ('PAID', 'GRANTED')),
    payment_method_id {uuid},
    credits_expire_after_days INTEGER NOT NULL,
    next_run_at {time} NOT NULL,
    enabled BOOLEAN NOT NULL,
    runs BIGINT NOT NULL,
    updated_at {time} NOT NULL,
    PRIMARY KEY (tenant_id, account_id)
);
CREATE INDEX recurring_due ON recurring_top_ups (enabled, next_run_at);

-- How far the orchestrator has read another service's events, per tenant.
CREATE TABLE watch_cursors (
    tenant_id {uuid} NOT NULL,
    source TEXT NOT NULL,
    after_sequence BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, source)
);

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
    top_up_id {uuid},
    credits TEXT NOT NULL,
    reason TEXT NOT NULL,
    occurred_at {time} NOT NULL
);
CREATE INDEX events_by_tenant ON events (tenant_id, sequence);
"#;

struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m0001_orchestrator"
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

/// The low-balance warning an auto-replenish sets, as a percentage of its refill amount.
struct ReplenishWarning;

impl MigrationName for ReplenishWarning {
    fn name(&self) -> &str {
        "m0002_replenish_warning"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for ReplenishWarning {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE auto_replenish ADD COLUMN warning_percent INTEGER NOT NULL DEFAULT 0 \
                 CHECK (warning_percent BETWEEN 0 AND 100)",
            )
            .await?;
        Ok(())
    }
}

/// Webhook endpoints, the events kept for them, and every delivery and attempt.
struct Webhooks;

impl MigrationName for Webhooks {
    fn name(&self) -> &str {
        "m0003_webhooks"
    }
}

const WEBHOOKS: &str = r#"
CREATE TABLE webhook_endpoints (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    url TEXT NOT NULL,
    description TEXT NOT NULL,
    -- Comma-separated event types; empty for all.
    event_types TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_expires_at {time},
    enabled BOOLEAN NOT NULL,
    idempotency_key TEXT NOT NULL,
    created_at {time} NOT NULL,
    updated_at {time} NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
);

-- One row per event kept for delivery; its id is what receivers deduplicate by.
CREATE TABLE webhook_messages (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    source TEXT NOT NULL,
    source_sequence BIGINT NOT NULL,
    account_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at {time} NOT NULL,
    UNIQUE (tenant_id, source, source_sequence)
);

CREATE TABLE webhook_deliveries (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    endpoint_id {uuid} NOT NULL REFERENCES webhook_endpoints (id),
    message_id {uuid} NOT NULL REFERENCES webhook_messages (id),
    account_id TEXT NOT NULL,
    source TEXT NOT NULL,
    source_sequence BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('PENDING', 'SUCCEEDED', 'FAILED')),
    attempts INTEGER NOT NULL,
    next_attempt_at {time} NOT NULL,
    -- Retries stop this long after this instant: the delivery's creation or its last replay.
    retry_from {time} NOT NULL,
    claimed_until {time},
    last_status_code INTEGER,
    last_error TEXT NOT NULL,
    created_at {time} NOT NULL,
    updated_at {time} NOT NULL,
    UNIQUE (endpoint_id, message_id)
);
CREATE INDEX webhook_deliveries_by_status ON webhook_deliveries (status, endpoint_id, account_id, source, source_sequence);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id);

CREATE TABLE webhook_attempts (
    id {uuid} PRIMARY KEY,
    delivery_id {uuid} NOT NULL REFERENCES webhook_deliveries (id),
    tenant_id {uuid} NOT NULL,
    attempted_at {time} NOT NULL,
    status_code INTEGER,
    error TEXT NOT NULL,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id, attempted_at);
"#;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Webhooks {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&render_schema(WEBHOOKS, db.get_database_backend())).await?;
        Ok(())
    }
}

/// The instant a recurring top-up's periods count from, so a monthly one
/// set for the 31st comes back to the 31st after a short month. Rows from
/// before it count from their next run.
struct RecurringAnchor;

impl MigrationName for RecurringAnchor {
    fn name(&self) -> &str {
        "m0004_recurring_anchor"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for RecurringAnchor {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&render_schema(
            "ALTER TABLE recurring_top_ups ADD COLUMN anchor_at {time}",
            db.get_database_backend(),
        ))
        .await?;
        Ok(())
    }
}

/// A recurring top-up's rollover policy, and the rollover each period's
/// top-up asks of the wallet with its grant (domain values as JSON).
struct Rollovers;

impl MigrationName for Rollovers {
    fn name(&self) -> &str {
        "m0005_rollovers"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Rollovers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("ALTER TABLE recurring_top_ups ADD COLUMN rollover TEXT").await?;
        db.execute_unprepared("ALTER TABLE top_ups ADD COLUMN rollover TEXT").await?;
        Ok(())
    }
}

/// A top-up's bonus (a domain value as JSON), what each refund of its
/// payment takes back of it, and top-ups found by their payment.
struct Bonuses;

impl MigrationName for Bonuses {
    fn name(&self) -> &str {
        "m0006_bonuses"
    }
}

const BONUSES: &str = r#"
ALTER TABLE top_ups ADD COLUMN bonus TEXT;
CREATE INDEX top_ups_by_payment ON top_ups (payment_id);
CREATE TABLE bonus_clawbacks (
    refund_id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    top_up_id {uuid} NOT NULL,
    -- The payments event that told of the refund: shares are taken in this order.
    sequence BIGINT NOT NULL,
    refunded_amount {amount} NOT NULL,
    asked {amount} NOT NULL,
    -- What the wallet took; NULL until it has.
    clawed_back {amount},
    refunded_at {time} NOT NULL,
    applied_at {time}
);
CREATE INDEX bonus_clawbacks_by_top_up ON bonus_clawbacks (top_up_id, sequence);
CREATE INDEX bonus_clawbacks_pending ON bonus_clawbacks (applied_at, refunded_at);
"#;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Bonuses {
    /// One transaction on SQLite too: all of it or none.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&render_schema(BONUSES, db.get_database_backend())).await?;
        Ok(())
    }
}
