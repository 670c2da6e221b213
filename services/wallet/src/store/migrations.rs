//! Versioned migrations, written as SQL for each backend so that every column
//! has the exact type it needs (NUMERIC amounts on PostgreSQL, TEXT on SQLite)
//! and the constraints and triggers that back the domain's rules.

use reservoir_common::db::render_schema;
use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

pub struct Migrator;

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(Initial),
            Box::new(ServiceKeys),
            Box::new(CreditBlock),
            Box::new(AccountVersion),
            Box::new(SpendControl),
            Box::new(LeanLedger),
            Box::new(KeyRoles),
            Box::new(EntryKeys),
            Box::new(AccountsByUnit),
            Box::new(RoomForUpdates),
            Box::new(TenantKeys),
            Box::new(LedgerChain),
            Box::new(Rollovers),
            Box::new(Budgets),
            Box::new(Fraud),
        ]
    }
}

const SCHEMA: &str = r#"
CREATE TABLE tenants (
    id {uuid} PRIMARY KEY,
    name TEXT NOT NULL,
    created_at {time} NOT NULL
);

CREATE TABLE api_keys (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL REFERENCES tenants (id),
    key_hash TEXT NOT NULL UNIQUE,
    display_prefix TEXT NOT NULL,
    created_at {time} NOT NULL,
    revoked_at {time}
);

CREATE TABLE accounts (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL REFERENCES tenants (id),
    external_id TEXT NOT NULL,
    unit_code TEXT NOT NULL,
    unit_scale INTEGER NOT NULL CHECK (unit_scale BETWEEN 0 AND 8),
    unit_price_per_credit TEXT NOT NULL,
    unit_billing_currency TEXT NOT NULL,
    overdraft_policy TEXT NOT NULL CHECK (overdraft_policy IN ('NONE', 'CREDIT_LIMIT', 'UNLIMITED')),
    credit_limit {amount} NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'SUSPENDED', 'CLOSED')),
    low_balance_threshold {amount},
    low_balance_alerted BOOLEAN NOT NULL,
    depleted_alerted BOOLEAN NOT NULL,
    overdraft_used {amount} NOT NULL,
    held {amount} NOT NULL,
    last_sequence BIGINT NOT NULL CHECK (last_sequence >= 0),
    metadata TEXT NOT NULL,
    created_at {time} NOT NULL,
    updated_at {time} NOT NULL,
    UNIQUE (tenant_id, external_id)
);

CREATE TABLE grants (
    id {uuid} PRIMARY KEY,
    account_id {uuid} NOT NULL REFERENCES accounts (id),
    tenant_id {uuid} NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('PAID', 'PROMOTIONAL', 'COURTESY')),
    source TEXT NOT NULL,
    source_reference TEXT NOT NULL,
    original_amount {amount} NOT NULL,
    remaining_amount {amount} NOT NULL,
    priority INTEGER NOT NULL,
    effective_at {time} NOT NULL,
    expires_at {time},
    meter_codes TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'EXPIRED', 'VOIDED')),
    metadata TEXT NOT NULL,
    created_at {time} NOT NULL,
    created_sequence BIGINT NOT NULL
);
CREATE INDEX grants_by_account ON grants (account_id, status);
CREATE INDEX grants_by_expiry ON grants (status, expires_at);

CREATE TABLE holds (
    id {uuid} PRIMARY KEY,
    account_id {uuid} NOT NULL REFERENCES accounts (id),
    tenant_id {uuid} NOT NULL,
    amount {amount} NOT NULL,
    captured_amount {amount} NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'CAPTURED', 'RELEASED', 'EXPIRED')),
    meter_code TEXT,
    expires_at {time} NOT NULL,
    created_at {time} NOT NULL
);
CREATE INDEX holds_by_account ON holds (account_id, status, expires_at);
CREATE INDEX holds_by_expiry ON holds (status, expires_at);

CREATE TABLE ledger_entries (
    id {uuid} PRIMARY KEY,
    account_id {uuid} NOT NULL REFERENCES accounts (id),
    tenant_id {uuid} NOT NULL,
    operation_id {uuid} NOT NULL,
    sequence BIGINT NOT NULL CHECK (sequence >= 1),
    kind TEXT NOT NULL,
    amount {amount} NOT NULL,
    grant_id {uuid},
    hold_id {uuid},
    balance_after {amount} NOT NULL,
    idempotency_key TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    meter_code TEXT,
    description TEXT NOT NULL,
    metadata TEXT NOT NULL,
    refunded_entry_id {uuid},
    created_at {time} NOT NULL,
    UNIQUE (account_id, sequence)
);
CREATE INDEX ledger_entries_by_operation ON ledger_entries (operation_id);
CREATE INDEX ledger_entries_by_refunded ON ledger_entries (refunded_entry_id);

CREATE TABLE idempotency_keys (
    tenant_id {uuid} NOT NULL,
    key TEXT NOT NULL,
    method TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response {bytes} NOT NULL,
    created_at {time} NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE outbox_events (
    sequence BIGINT PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    account_id {uuid} NOT NULL,
    event_type TEXT NOT NULL,
    payload {bytes} NOT NULL,
    created_at {time} NOT NULL
);
CREATE INDEX outbox_events_by_tenant ON outbox_events (tenant_id, sequence);

CREATE TABLE outbox_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_sequence BIGINT NOT NULL
);
INSERT INTO outbox_counter (id, last_sequence) VALUES (1, 0);
"#;

/// On PostgreSQL the amounts are numbers, so the database itself refuses a
/// negative remainder, hold or debt, and a trigger refuses any change to a
/// written ledger entry.
const POSTGRES_GUARDS: &str = r#"
ALTER TABLE accounts ADD CONSTRAINT accounts_amounts_in_range
    CHECK (overdraft_used >= 0 AND held >= 0 AND credit_limit >= 0);
ALTER TABLE grants ADD CONSTRAINT grants_amounts_in_range
    CHECK (original_amount > 0 AND remaining_amount >= 0);
ALTER TABLE holds ADD CONSTRAINT holds_amounts_in_range
    CHECK (amount > 0 AND captured_amount >= 0 AND captured_amount <= amount);
CREATE FUNCTION refuse_ledger_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only';
END;
$$;
CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change();
"#;

const SQLITE_GUARDS: &str = r#"
CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are append-only');
END;
CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
BEGIN
    SELECT RAISE(ABORT, 'ledger entries are append-only');
END;
"#;

struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m0001_wallet"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        db.execute_unprepared(&render_schema(SCHEMA, backend)).await?;
        let guards = if backend == DbBackend::Postgres { POSTGRES_GUARDS } else { SQLITE_GUARDS };
        db.execute_unprepared(guards).await?;
        Ok(())
    }
}

/// Keys of Reservoir's own services, which act for the tenant each call names.
struct ServiceKeys;

impl MigrationName for ServiceKeys {
    fn name(&self) -> &str {
        "m0002_service_keys"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for ServiceKeys {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE api_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'TENANT' CHECK (kind IN ('TENANT', 'SERVICE'))",
            )
            .await?;
        Ok(())
    }
}

/// The flag an overdue postpaid invoice sets to block the overdraft.
struct CreditBlock;

impl MigrationName for CreditBlock {
    fn name(&self) -> &str {
        "m0003_credit_block"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for CreditBlock {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE accounts ADD COLUMN credit_blocked BOOLEAN NOT NULL DEFAULT FALSE")
            .await?;
        Ok(())
    }
}

/// A number every committed change of a wallet raises by one, so a reader
/// can tell with one statement whether a wallet it holds is still current.
struct AccountVersion;

impl MigrationName for AccountVersion {
    fn name(&self) -> &str {
        "m0004_account_version"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for AccountVersion {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE accounts ADD COLUMN version BIGINT NOT NULL DEFAULT 0")
            .await?;
        Ok(())
    }
}

/// Spending caps, transfer limits, the low-balance warning and the counters
/// they are checked against; and whether a tenant lets promotional credits move.
struct SpendControl;

impl MigrationName for SpendControl {
    fn name(&self) -> &str {
        "m0005_spend_control"
    }
}

const SPEND_CONTROL: &str = r#"
ALTER TABLE accounts ADD COLUMN monthly_cap {amount};
ALTER TABLE accounts ADD COLUMN low_balance_warning {amount};
ALTER TABLE accounts ADD COLUMN low_balance_warned BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE accounts ADD COLUMN transfer_max {amount};
ALTER TABLE accounts ADD COLUMN transfer_daily_limit {amount};
ALTER TABLE accounts ADD COLUMN spend_month TEXT NOT NULL DEFAULT '';
ALTER TABLE accounts ADD COLUMN month_spend {amount} NOT NULL DEFAULT '0';
ALTER TABLE accounts ADD COLUMN cap_alerted_percent INTEGER NOT NULL DEFAULT 0 CHECK (cap_alerted_percent IN (0, 50, 80, 100));
ALTER TABLE accounts ADD COLUMN transfer_day TEXT NOT NULL DEFAULT '';
ALTER TABLE accounts ADD COLUMN transferred_today {amount} NOT NULL DEFAULT '0';
ALTER TABLE tenants ADD COLUMN allow_promotional_transfers BOOLEAN NOT NULL DEFAULT FALSE;
"#;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for SpendControl {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        db.execute_unprepared(&render_schema(SPEND_CONTROL, backend)).await?;
        if backend == DbBackend::Postgres {
            db.execute_unprepared(
                "ALTER TABLE accounts ADD CONSTRAINT accounts_spend_in_range CHECK (month_spend >= 0 \
                 AND transferred_today >= 0 AND (monthly_cap IS NULL OR monthly_cap >= 0) \
                 AND (transfer_max IS NULL OR transfer_max > 0) \
                 AND (transfer_daily_limit IS NULL OR transfer_daily_limit > 0))",
            )
            .await?;
        }
        Ok(())
    }
}

/// The ledger keyed by account number and sequence, with one index; replay
/// records keyed by a digest of tenant and key, holding what is needed to
/// answer again rather than the encoded response; and events written once per
/// transaction and tenant, numbered by the transaction that wrote them (on
/// PostgreSQL) instead of a counter row every commit queued on.
struct LeanLedger;

impl MigrationName for LeanLedger {
    fn name(&self) -> &str {
        "m0006_lean_ledger"
    }
}

const LEAN_LEDGER: &str = r#"
CREATE TABLE ledger (
    account_number BIGINT NOT NULL,
    sequence BIGINT NOT NULL CHECK (sequence >= 1),
    created_at {time} NOT NULL,
    grant_id {uuid},
    hold_id {uuid},
    position INTEGER NOT NULL CHECK (position >= 0),
    kind SMALLINT NOT NULL CHECK (kind BETWEEN 1 AND 11),
    amount {amount} NOT NULL,
    balance_after {amount} NOT NULL,
    idempotency_key TEXT NOT NULL,
    correlation_id TEXT,
    meter_code TEXT,
    description TEXT,
    metadata TEXT,
    refunded_sequence BIGINT,
    legacy_id {uuid},
    PRIMARY KEY (account_number, sequence)
);
CREATE INDEX ledger_refunds ON ledger (account_number, refunded_sequence) WHERE refunded_sequence IS NOT NULL;
CREATE UNIQUE INDEX ledger_legacy_ids ON ledger (legacy_id) WHERE legacy_id IS NOT NULL;

CREATE TABLE replay_records (
    digest {bytes} PRIMARY KEY,
    method SMALLINT NOT NULL,
    request_hash {bytes} NOT NULL,
    answer {bytes} NOT NULL
);

CREATE TABLE events (
    tenant_id {uuid} NOT NULL,
    commit_id BIGINT NOT NULL,
    part INTEGER NOT NULL,
    payload {bytes} NOT NULL,
    PRIMARY KEY (tenant_id, commit_id, part)
);

CREATE TABLE event_numbering (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    base BIGINT NOT NULL,
    commit_base BIGINT NOT NULL,
    last_commit BIGINT NOT NULL
);
"#;

/// The entry kinds as the ledger stores them (the codes of `rows::entry_kind_code`).
const KIND_CODES: &str = "CASE e.kind WHEN 'GRANT' THEN 1 WHEN 'DEBIT' THEN 2 WHEN 'HOLD' THEN 3 WHEN 'CAPTURE' THEN 4 \
     WHEN 'RELEASE' THEN 5 WHEN 'EXPIRY' THEN 6 WHEN 'ADJUSTMENT' THEN 7 WHEN 'REFUND' THEN 8 \
     WHEN 'TRANSFER_IN' THEN 9 WHEN 'TRANSFER_OUT' THEN 10 ELSE 11 END";

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for LeanLedger {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        let postgres = backend == DbBackend::Postgres;
        // Account numbers, in the order the accounts were opened.
        db.execute_unprepared("ALTER TABLE accounts ADD COLUMN number BIGINT").await?;
        if postgres {
            db.execute_unprepared(
                "CREATE SEQUENCE account_numbers; \
                 UPDATE accounts SET number = n.number FROM \
                   (SELECT id, row_number() OVER (ORDER BY created_at, id) AS number FROM accounts) n \
                 WHERE accounts.id = n.id; \
                 SELECT setval('account_numbers', COALESCE((SELECT MAX(number) FROM accounts), 0) + 1, false); \
                 ALTER TABLE accounts ALTER COLUMN number SET NOT NULL;",
            )
            .await?;
        } else {
            db.execute_unprepared("UPDATE accounts SET number = rowid").await?;
        }
        db.execute_unprepared("CREATE UNIQUE INDEX accounts_by_number ON accounts (number)").await?;
        db.execute_unprepared(&render_schema(LEAN_LEDGER, backend)).await?;
        // The entries written so far, each at its place in its operation,
        // keeping its id; then the old table goes.
        db.execute_unprepared(&format!(
            "INSERT INTO ledger (account_number, sequence, created_at, grant_id, hold_id, position, kind, amount, \
             balance_after, idempotency_key, correlation_id, meter_code, description, metadata, refunded_sequence, legacy_id) \
             SELECT a.number, e.sequence, e.created_at, e.grant_id, e.hold_id, \
             CAST(row_number() OVER (PARTITION BY e.account_id, e.operation_id ORDER BY e.sequence) - 1 AS INTEGER), \
             {KIND_CODES}, e.amount, e.balance_after, e.idempotency_key, NULLIF(e.correlation_id, ''), e.meter_code, \
             NULLIF(e.description, ''), NULLIF(e.metadata, '{{}}'), r.sequence, e.id \
             FROM ledger_entries e JOIN accounts a ON a.id = e.account_id \
             LEFT JOIN ledger_entries r ON r.id = e.refunded_entry_id"
        ))
        .await?;
        db.execute_unprepared("DROP TABLE ledger_entries").await?;
        if postgres {
            db.execute_unprepared(super::batch::CHECK_FUNCTION).await?;
            db.execute_unprepared(
                "CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger \
                 FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change(); \
                 CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger \
                 FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_change();",
            )
            .await?;
        } else {
            db.execute_unprepared(
                "CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger \
                 BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END; \
                 CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger \
                 BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;",
            )
            .await?;
        }
        // Events from now on are numbered after every event already written;
        // those stay in outbox_events and are read from there.
        let commit_base = if postgres { "pg_current_xact_id()::text::bigint" } else { "0" };
        db.execute_unprepared(&format!(
            "INSERT INTO event_numbering (id, base, commit_base, last_commit) \
             SELECT 1, COALESCE((SELECT MAX(sequence) FROM outbox_events), 0) + 1, {commit_base}, 0"
        ))
        .await?;
        db.execute_unprepared("DROP TABLE outbox_counter").await?;
        // Replay records written so far keep answering, as the encoded
        // responses they hold (the api decodes those).
        crate::store::replay::migrate_legacy_records(db).await?;
        db.execute_unprepared("DROP TABLE idempotency_keys").await?;
        Ok(())
    }
}

/// What each tenant key may do; keys issued before roles keep doing everything.
struct KeyRoles;

impl MigrationName for KeyRoles {
    fn name(&self) -> &str {
        "m0007_key_roles"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for KeyRoles {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'ADMIN' \
                 CHECK (role IN ('ADMIN', 'WRITE', 'READ_ONLY'))",
            )
            .await?;
        Ok(())
    }
}

/// The API key whose call wrote each entry (NULL for entries written before,
/// and for what time does, such as expiries).
struct EntryKeys;

impl MigrationName for EntryKeys {
    fn name(&self) -> &str {
        "m0008_entry_keys"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for EntryKeys {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&render_schema("ALTER TABLE ledger ADD COLUMN key_id {uuid}", db.get_database_backend()))
            .await?;
        Ok(())
    }
}

/// Finding a tenant's account in a unit (GetUnit) without reading all of
/// the tenant's accounts.
struct AccountsByUnit;

impl MigrationName for AccountsByUnit {
    fn name(&self) -> &str {
        "m0009_accounts_by_unit"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for AccountsByUnit {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("CREATE INDEX accounts_by_unit ON accounts (tenant_id, unit_code)")
            .await?;
        Ok(())
    }
}

/// Room on each page of accounts and grants for the new version of a row
/// that a commit writes, so that the update stays on its page and touches
/// none of the indexes (a heap-only update). Filled to the brim, as bulk
/// inserts leave them, a page sent a fifth of the bench's account updates
/// to another page, each writing a new entry into every index. Pages
/// written from now on keep the room; PostgreSQL only.
struct RoomForUpdates;

impl MigrationName for RoomForUpdates {
    fn name(&self) -> &str {
        "m0010_room_for_updates"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for RoomForUpdates {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(
                "ALTER TABLE accounts SET (fillfactor = 80); ALTER TABLE grants SET (fillfactor = 80)",
            )
            .await?;
        }
        Ok(())
    }
}

/// The idempotency key a tenant was created with (CreateTenant), so a
/// retried creation answers the same tenant. Tenants created before have
/// none; many NULLs sit under the unique index on both backends.
struct TenantKeys;

impl MigrationName for TenantKeys {
    fn name(&self) -> &str {
        "m0011_tenant_keys"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for TenantKeys {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("ALTER TABLE tenants ADD COLUMN idempotency_key TEXT").await?;
        db.execute_unprepared("CREATE UNIQUE INDEX tenants_by_idempotency_key ON tenants (idempotency_key)").await?;
        Ok(())
    }
}

/// Every entry hashed and chained to the one before on its account, and
/// each account's head kept beside its last sequence (see `domain::chain`).
/// Entries written before are chained here, in order, as they stand.
struct LedgerChain;

impl MigrationName for LedgerChain {
    fn name(&self) -> &str {
        "m0012_ledger_chain"
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for LedgerChain {
    /// One transaction on SQLite too: the append-only rule is lifted and put
    /// back on the one connection that rewrites the entries.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        db.execute_unprepared(&render_schema("ALTER TABLE ledger ADD COLUMN hash {bytes}", backend)).await?;
        db.execute_unprepared(&render_schema("ALTER TABLE accounts ADD COLUMN ledger_head {bytes}", backend)).await?;
        // The entries' hashes are written once, here, past the rule that
        // entries never change; the rule is back before the migration ends.
        if backend == DbBackend::Postgres {
            db.execute_unprepared("ALTER TABLE ledger DISABLE TRIGGER ledger_append_only").await?;
        } else {
            db.execute_unprepared("DROP TRIGGER ledger_no_update").await?;
        }
        super::ledger::chain_existing(db).await.map_err(|error| DbErr::Migration(error.to_string()))?;
        // From now on every entry has its hash: a replica of an earlier
        // release still running (a rolling upgrade) has its writes refused
        // rather than leave entries out of the chain.
        if backend == DbBackend::Postgres {
            db.execute_unprepared(
                "ALTER TABLE ledger ENABLE TRIGGER ledger_append_only; \
                 ALTER TABLE ledger ALTER COLUMN hash SET NOT NULL",
            )
            .await?;
        } else {
            db.execute_unprepared(
                "CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger \
                 BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END; \
                 CREATE TRIGGER ledger_hash_required BEFORE INSERT ON ledger WHEN NEW.hash IS NULL \
                 BEGIN SELECT RAISE(ABORT, 'a ledger entry needs its hash'); END;",
            )
            .await?;
        }
        Ok(())
    }
}

/// A ledger entry kind for credits carried into a new period (ROLLOVER, 12).
struct Rollovers;

impl MigrationName for Rollovers {
    fn name(&self) -> &str {
        "m0013_rollovers"
    }
}

/// The ledger as it stands after the chain, with ROLLOVER among its kinds:
/// SQLite changes no CHECK in place, so the table is made again.
const WIDENED_LEDGER: &str = r#"
CREATE TABLE ledger_widened (
    account_number BIGINT NOT NULL,
    sequence BIGINT NOT NULL CHECK (sequence >= 1),
    created_at {time} NOT NULL,
    grant_id {uuid},
    hold_id {uuid},
    position INTEGER NOT NULL CHECK (position >= 0),
    kind SMALLINT NOT NULL CHECK (kind BETWEEN 1 AND 12),
    amount {amount} NOT NULL,
    balance_after {amount} NOT NULL,
    idempotency_key TEXT NOT NULL,
    correlation_id TEXT,
    meter_code TEXT,
    description TEXT,
    metadata TEXT,
    refunded_sequence BIGINT,
    legacy_id {uuid},
    key_id {uuid},
    hash {bytes},
    PRIMARY KEY (account_number, sequence)
);
INSERT INTO ledger_widened (account_number, sequence, created_at, grant_id, hold_id, position, kind, amount,
    balance_after, idempotency_key, correlation_id, meter_code, description, metadata, refunded_sequence, legacy_id,
    key_id, hash)
SELECT account_number, sequence, created_at, grant_id, hold_id, position, kind, amount, balance_after,
    idempotency_key, correlation_id, meter_code, description, metadata, refunded_sequence, legacy_id, key_id, hash
FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_widened RENAME TO ledger;
CREATE INDEX ledger_refunds ON ledger (account_number, refunded_sequence) WHERE refunded_sequence IS NOT NULL;
CREATE UNIQUE INDEX ledger_legacy_ids ON ledger (legacy_id) WHERE legacy_id IS NOT NULL;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER ledger_hash_required BEFORE INSERT ON ledger WHEN NEW.hash IS NULL
BEGIN SELECT RAISE(ABORT, 'a ledger entry needs its hash'); END;
"#;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Rollovers {
    /// One transaction on SQLite too: the ledger is made again there.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        if backend == DbBackend::Postgres {
            db.execute_unprepared(
                "ALTER TABLE ledger DROP CONSTRAINT ledger_kind_check; \
                 ALTER TABLE ledger ADD CONSTRAINT ledger_kind_check CHECK (kind BETWEEN 1 AND 12)",
            )
            .await?;
        } else {
            db.execute_unprepared(&render_schema(WIDENED_LEDGER, backend)).await?;
        }
        Ok(())
    }
}

/// Shared budgets: a child account's draws on its parent's credits (the
/// limit per period and what was drawn in it), the parent named on the
/// child's row, and the ledger kind that records a draw on the child
/// (PARENT_DRAW, 13).
struct Budgets;

impl MigrationName for Budgets {
    fn name(&self) -> &str {
        "m0014_budgets"
    }
}

const BUDGETS: &str = r#"
ALTER TABLE accounts ADD COLUMN parent_id {uuid};
CREATE TABLE budgets (
    account_id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    parent_id {uuid} NOT NULL,
    -- NULL: no limit.
    limit_amount {amount},
    period TEXT NOT NULL CHECK (period IN ('DAY', 'MONTH')),
    -- The period `spent` counts: 2026-12-07 or 2026-12.
    period_key TEXT NOT NULL,
    spent {amount} NOT NULL,
    created_at {time} NOT NULL,
    updated_at {time} NOT NULL
);
CREATE INDEX budgets_by_parent ON budgets (parent_id, created_at);
"#;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Budgets {
    /// One transaction on SQLite too: the ledger is made again there.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        db.execute_unprepared(&render_schema(BUDGETS, backend)).await?;
        if backend == DbBackend::Postgres {
            db.execute_unprepared(
                "ALTER TABLE ledger DROP CONSTRAINT ledger_kind_check; \
                 ALTER TABLE ledger ADD CONSTRAINT ledger_kind_check CHECK (kind BETWEEN 1 AND 13)",
            )
            .await?;
        } else {
            // The ledger as m0013 made it, with one kind more.
            let widened = WIDENED_LEDGER.replace("CHECK (kind BETWEEN 1 AND 12)", "CHECK (kind BETWEEN 1 AND 13)");
            db.execute_unprepared(&render_schema(&widened, backend)).await?;
        }
        Ok(())
    }
}

/// Fraud rules on transfers: the tenant's rules, every transfer's decision
/// (what the velocity rules count), and the transfers held for review.
struct Fraud;

impl MigrationName for Fraud {
    fn name(&self) -> &str {
        "m0015_fraud"
    }
}

const FRAUD: &str = r#"
ALTER TABLE tenants ADD COLUMN transfer_fraud TEXT;
CREATE TABLE transfer_decisions (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    from_id {uuid} NOT NULL,
    to_id {uuid} NOT NULL,
    amount {amount} NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('ALLOWED', 'REFUSED', 'HELD', 'RELEASED', 'REJECTED')),
    rule TEXT,
    review_id {uuid},
    decided_at {time} NOT NULL
);
CREATE INDEX transfer_decisions_by_sender ON transfer_decisions (from_id, decided_at);
CREATE INDEX transfer_decisions_by_pair ON transfer_decisions (from_id, to_id, decided_at);
CREATE TABLE transfer_reviews (
    id {uuid} PRIMARY KEY,
    tenant_id {uuid} NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash {bytes} NOT NULL,
    from_id {uuid} NOT NULL,
    to_id {uuid} NOT NULL,
    amount {amount} NOT NULL,
    description TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    metadata TEXT NOT NULL,
    key_id {uuid},
    rule TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('HELD', 'RELEASED', 'REJECTED')),
    reason TEXT NOT NULL,
    created_at {time} NOT NULL,
    decided_at {time},
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX transfer_reviews_by_status ON transfer_reviews (tenant_id, status, created_at);
"#;

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for Fraud {
    /// One transaction on SQLite too: all of it or none.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&render_schema(FRAUD, db.get_database_backend())).await?;
        Ok(())
    }
}
