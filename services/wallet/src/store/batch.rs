//! On PostgreSQL, everything a batch of changes writes is one statement: a
//! chain of data-modifying CTEs (accounts, grants, holds, entries, events,
//! replay records), each binding its columns as arrays, ending in a check
//! that raises (and so undoes the whole statement) when an account moved
//! on since it was read or a key was already recorded. Outside a
//! transaction that statement is its own transaction: one round trip per
//! batch, whatever its size.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::sqlstate;
use rust_decimal::Decimal;
use sea_orm::sea_query::ArrayType;
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use super::entities::entry;
use super::events::{self, Written};
use super::ledger::{self, array};
use super::rows;
use crate::domain::{Changes, Grant, Wallet};
use crate::error::WalletError;

/// The SQLSTATE the check raises when an account changed since it was read.
pub const STALE_ACCOUNT: &str = "RW001";
/// The SQLSTATE the check raises when a key of the batch is already recorded.
pub const KEY_RECORDED: &str = "RW002";

/// The function the statement ends with; created by the migration.
pub const CHECK_FUNCTION: &str = r#"
CREATE FUNCTION wallet_batch_check(accounts_current boolean, keys_fresh boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT accounts_current THEN
        RAISE EXCEPTION 'an account changed since it was read' USING ERRCODE = 'RW001';
    END IF;
    IF NOT keys_fresh THEN
        RAISE EXCEPTION 'an idempotency key is already recorded' USING ERRCODE = 'RW002';
    END IF;
    RETURN true;
END;
$$;
"#;

/// Stands for "no amount" in array parameters, which cannot carry NULL: every
/// optional amount of an account is zero or more.
const NO_AMOUNT: i64 = -1;

/// A wallet the batch wrote, or only read (a refusal is decided on what was
/// read, so that must still be current), with the version it was read at.
pub struct Touched<'a> {
    pub wallet: &'a Wallet,
    pub changes: Changes,
    pub read_version: u64,
}

/// A replay record to insert: digest, method, request hash, answer.
pub type Record = (Vec<u8>, i16, Vec<u8>, Vec<u8>);

/// Why a batch's statement wrote nothing.
#[derive(Debug)]
pub enum Refused {
    /// An account changed since the batch read it: read again and retry.
    Stale,
    /// A key of the batch is already recorded: retry, looking the keys up.
    KeyRecorded,
    Failed(WalletError),
}

impl From<WalletError> for Refused {
    fn from(error: WalletError) -> Self {
        Self::Failed(error)
    }
}

/// A statement being built: its CTEs and their parameters.
#[derive(Default)]
struct Builder {
    ctes: Vec<String>,
    values: Vec<Value>,
}

impl Builder {
    fn param(&mut self, value: Value) -> String {
        self.values.push(value);
        format!("${}", self.values.len())
    }

    fn array(&mut self, kind: ArrayType, values: Vec<Value>, cast: &str) -> String {
        format!("{}::{cast}", self.param(array(kind, values)))
    }

    fn cte(&mut self, name: &str, body: String) {
        self.ctes.push(format!("{name} AS ({body})"));
    }
}

fn optional_amount(value: Option<Decimal>) -> Value {
    Value::from(value.unwrap_or(Decimal::from(NO_AMOUNT)))
}

fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Writes the batch in one statement; `None` without error when nothing is
/// to be written. `check_versions` also holds each account to the version it
/// was read at (not needed under a row lock).
pub async fn write(
    connection: &impl ConnectionTrait,
    touched: &[Touched<'_>],
    records: Vec<Record>,
    check_versions: bool,
) -> Result<(), Refused> {
    let mut builder = Builder::default();
    let changed: Vec<&Touched<'_>> = touched.iter().filter(|touched| !touched.changes.is_empty()).collect();
    let mut expected_accounts = 0_usize;
    if !changed.is_empty() {
        accounts(&mut builder, &changed, check_versions);
        expected_accounts += changed.len();
    }
    if check_versions {
        let unchanged: Vec<&Touched<'_>> = touched.iter().filter(|touched| touched.changes.is_empty()).collect();
        if !unchanged.is_empty() {
            let ids = unchanged.iter().map(|touched| Value::from(touched.wallet.account.id.0)).collect();
            let versions = unchanged.iter().map(|touched| Value::from(i64_of(touched.read_version))).collect();
            let ids = builder.array(ArrayType::Uuid, ids, "uuid[]");
            let versions = builder.array(ArrayType::BigInt, versions, "bigint[]");
            builder.cte(
                "unchanged",
                format!(
                    "SELECT 1 FROM accounts a JOIN UNNEST({ids}, {versions}) AS c(id, version) \
                     ON a.id = c.id AND a.version = c.version"
                ),
            );
            expected_accounts += unchanged.len();
        }
    }
    grants(&mut builder, &changed);
    holds(&mut builder, &changed);
    let mut entries: Vec<entry::ActiveModel> = Vec::new();
    for touched in &changed {
        let mut rows_out = ledger::rows_for(&touched.changes.entries, touched.wallet.account.number);
        ledger::resolve_legacy_refunds(connection, &touched.changes.entries, &mut rows_out).await?;
        entries.extend(rows_out);
    }
    if !entries.is_empty() {
        let body = ledger::insert_body(&mut |kind, values, cast| builder.array(kind, values, cast), &entries)?;
        builder.cte("entries", body);
    }
    let written: Vec<Written<'_>> = changed
        .iter()
        .filter(|touched| !touched.changes.events.is_empty())
        .map(|touched| Written {
            wallet: touched.wallet,
            events: &touched.changes.events,
            entries: &touched.changes.entries,
        })
        .collect();
    let parts = events::encode(&written)?;
    if !parts.is_empty() {
        let tenants =
            builder.array(ArrayType::Uuid, parts.iter().map(|part| Value::from(part.0.0)).collect(), "uuid[]");
        let numbers = builder.array(ArrayType::Int, parts.iter().map(|part| Value::from(part.1)).collect(), "int[]");
        let payloads =
            builder.array(ArrayType::Bytes, parts.into_iter().map(|part| Value::from(part.2)).collect(), "bytea[]");
        builder.cte(
            "events_written",
            format!(
                "INSERT INTO events (tenant_id, commit_id, part, payload) \
                 SELECT v.tenant_id, pg_current_xact_id()::text::bigint, v.part, v.payload \
                 FROM UNNEST({tenants}, {numbers}, {payloads}) AS v(tenant_id, part, payload)"
            ),
        );
    }
    let expected_records = records.len();
    if !records.is_empty() {
        let mut digests = Vec::with_capacity(records.len());
        let mut methods = Vec::with_capacity(records.len());
        let mut hashes = Vec::with_capacity(records.len());
        let mut answers = Vec::with_capacity(records.len());
        for (digest, method, hash, answer) in records {
            digests.push(Value::from(digest));
            methods.push(Value::from(method));
            hashes.push(Value::from(hash));
            answers.push(Value::from(answer));
        }
        let digests = builder.array(ArrayType::Bytes, digests, "bytea[]");
        let methods = builder.array(ArrayType::SmallInt, methods, "smallint[]");
        let hashes = builder.array(ArrayType::Bytes, hashes, "bytea[]");
        let answers = builder.array(ArrayType::Bytes, answers, "bytea[]");
        builder.cte(
            "records",
            format!(
                "INSERT INTO replay_records (digest, method, request_hash, answer) \
                 SELECT * FROM UNNEST({digests}, {methods}, {hashes}, {answers}) \
                 ON CONFLICT (digest) DO NOTHING RETURNING 1"
            ),
        );
    }
    if builder.ctes.is_empty() {
        return Ok(());
    }
    let accounts_count =
        if changed.is_empty() { "0".to_owned() } else { "(SELECT count(*) FROM accounts_written)".to_owned() };
    let unchanged_count = if builder.ctes.iter().any(|cte| cte.starts_with("unchanged ")) {
        "(SELECT count(*) FROM unchanged)"
    } else {
        "0"
    };
    let records_count = if expected_records > 0 { "(SELECT count(*) FROM records)" } else { "0" };
    let expected_accounts = builder.param(Value::from(i64_of(expected_accounts as u64)));
    let expected_records = builder.param(Value::from(i64_of(expected_records as u64)));
    let sql = format!(
        "WITH {} SELECT wallet_batch_check({accounts_count} + {unchanged_count} = {expected_accounts}, \
         {records_count} = {expected_records}) AS ok",
        builder.ctes.join(", ")
    );
    match connection.query_one_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, builder.values)).await {
        Ok(_) => Ok(()),
        Err(error) => Err(match sqlstate(&error).as_deref() {
            Some(STALE_ACCOUNT) => Refused::Stale,
            Some(KEY_RECORDED) => Refused::KeyRecorded,
            _ => Refused::Failed(error.into()),
        }),
    }
}

/// The changed accounts, each held to the version it was read at when asked.
fn accounts(builder: &mut Builder, changed: &[&Touched<'_>], check_versions: bool) {
    let mut columns: Vec<Vec<Value>> = (0..25).map(|_| Vec::with_capacity(changed.len())).collect();
    for touched in changed {
        let account = &touched.wallet.account;
        let spend = &account.spend;
        let values: [Value; 25] = [
            account.id.0.into(),
            rows::account_status_name(account.status).into(),
            rows::overdraft_policy_name(&account.overdraft).into(),
            account.overdraft.credit_limit().into(),
            optional_amount(account.low_balance_threshold),
            account.low_balance_alerted.into(),
            account.depleted_alerted.into(),
            account.overdraft_used.into(),
            account.held.into(),
            i64_of(account.last_sequence).into(),
            account.updated_at.into(),
            account.credit_blocked.into(),
            i64_of(account.version).into(),
            optional_amount(spend.monthly_cap),
            optional_amount(spend.low_balance_warning),
            spend.low_balance_warned.into(),
            optional_amount(spend.transfer_max),
            optional_amount(spend.transfer_daily_limit),
            spend.month.clone().into(),
            spend.month_spend.into(),
            i32::try_from(spend.cap_alerted_percent).unwrap_or(0).into(),
            spend.day.clone().into(),
            spend.transferred_today.into(),
            rows::head_to_row(account.ledger_head).unwrap_or_default().into(),
            i64_of(touched.read_version).into(),
        ];
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
    }
    let kinds = [
        (ArrayType::Uuid, "uuid[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::Bool, "bool[]"),
        (ArrayType::Bool, "bool[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::BigInt, "bigint[]"),
        (ArrayType::ChronoDateTimeUtc, "timestamptz[]"),
        (ArrayType::Bool, "bool[]"),
        (ArrayType::BigInt, "bigint[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::Bool, "bool[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::Int, "int[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::Bytes, "bytea[]"),
        (ArrayType::BigInt, "bigint[]"),
    ];
    let parameters: Vec<String> =
        kinds.into_iter().zip(columns).map(|((kind, cast), column)| builder.array(kind, column, cast)).collect();
    let version_check = if check_versions { " AND accounts.version = v.read_version" } else { "" };
    builder.cte(
        "accounts_written",
        format!(
            "UPDATE accounts SET status = v.status, overdraft_policy = v.policy, credit_limit = v.credit_limit, \
             low_balance_threshold = NULLIF(v.threshold, -1), low_balance_alerted = v.low, \
             depleted_alerted = v.depleted, overdraft_used = v.overdraft_used, held = v.held, \
             last_sequence = v.last_sequence, updated_at = v.updated_at, credit_blocked = v.credit_blocked, \
             version = v.version, monthly_cap = NULLIF(v.monthly_cap, -1), low_balance_warning = NULLIF(v.warning, -1), \
             low_balance_warned = v.warned, transfer_max = NULLIF(v.transfer_max, -1), \
             transfer_daily_limit = NULLIF(v.transfer_daily_limit, -1), spend_month = v.spend_month, \
             month_spend = v.month_spend, cap_alerted_percent = v.cap_alerted, transfer_day = v.transfer_day, \
             transferred_today = v.transferred_today, ledger_head = NULLIF(v.ledger_head, ''::bytea) \
             FROM UNNEST({}) AS v(id, status, policy, credit_limit, threshold, low, depleted, overdraft_used, held, \
             last_sequence, updated_at, credit_blocked, version, monthly_cap, warning, warned, transfer_max, \
             transfer_daily_limit, spend_month, month_spend, cap_alerted, transfer_day, transferred_today, \
             ledger_head, read_version) \
             WHERE accounts.id = v.id{version_check} RETURNING 1",
            parameters.join(", ")
        ),
    );
}

/// Grants that existed before and were changed.
fn touched_grants<'a>(wallet: &'a Wallet, changes: &'a Changes) -> impl Iterator<Item = &'a Grant> {
    wallet
        .grants
        .iter()
        .filter(|grant| changes.touched_grants.contains(&grant.id) && !changes.new_grants.contains(&grant.id))
}

/// The instant that stands for "none" in an array of optional instants.
fn no_instant() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

fn grants(builder: &mut Builder, changed: &[&Touched<'_>]) {
    let (mut ids, mut remaining, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
    let mut new: Vec<(&Grant, TenantId)> = Vec::new();
    for touched in changed {
        for grant in touched_grants(touched.wallet, &touched.changes) {
            ids.push(Value::from(grant.id.0));
            remaining.push(Value::from(grant.remaining));
            statuses.push(Value::from(rows::grant_status_name(grant.status)));
        }
        let tenant = touched.wallet.account.tenant_id;
        new.extend(
            touched
                .wallet
                .grants
                .iter()
                .filter(|grant| touched.changes.new_grants.contains(&grant.id))
                .map(|grant| (grant, tenant)),
        );
    }
    if !ids.is_empty() {
        let ids = builder.array(ArrayType::Uuid, ids, "uuid[]");
        let remaining = builder.array(ArrayType::Decimal, remaining, "numeric[]");
        let statuses = builder.array(ArrayType::String, statuses, "text[]");
        builder.cte(
            "grants_written",
            format!(
                "UPDATE grants SET remaining_amount = v.remaining, status = v.status \
                 FROM UNNEST({ids}, {remaining}, {statuses}) AS v(id, remaining, status) WHERE grants.id = v.id"
            ),
        );
    }
    if new.is_empty() {
        return;
    }
    let mut columns: Vec<Vec<Value>> = (0..16).map(|_| Vec::with_capacity(new.len())).collect();
    for (grant, tenant) in new {
        let values: [Value; 16] = [
            grant.id.0.into(),
            grant.account_id.0.into(),
            tenant.0.into(),
            rows::grant_kind_name(grant.kind).into(),
            rows::grant_source_name(grant.source).into(),
            grant.source_reference.clone().into(),
            grant.original.into(),
            grant.remaining.into(),
            grant.priority.into(),
            grant.effective_at.into(),
            grant.expires_at.unwrap_or_else(no_instant).into(),
            serde_json::to_string(&grant.meter_codes).unwrap_or_else(|_| "[]".to_owned()).into(),
            rows::grant_status_name(grant.status).into(),
            serde_json::to_string(&grant.metadata).unwrap_or_else(|_| "{}".to_owned()).into(),
            grant.created_at.into(),
            i64_of(grant.created_sequence).into(),
        ];
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
    }
    let kinds = [
        (ArrayType::Uuid, "uuid[]"),
        (ArrayType::Uuid, "uuid[]"),
        (ArrayType::Uuid, "uuid[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::Int, "int[]"),
        (ArrayType::ChronoDateTimeUtc, "timestamptz[]"),
        (ArrayType::ChronoDateTimeUtc, "timestamptz[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::ChronoDateTimeUtc, "timestamptz[]"),
        (ArrayType::BigInt, "bigint[]"),
    ];
    let parameters: Vec<String> =
        kinds.into_iter().zip(columns).map(|((kind, cast), column)| builder.array(kind, column, cast)).collect();
    builder.cte(
        "grants_added",
        format!(
            "INSERT INTO grants (id, account_id, tenant_id, kind, source, source_reference, original_amount, \
             remaining_amount, priority, effective_at, expires_at, meter_codes, status, metadata, created_at, \
             created_sequence) \
             SELECT v.id, v.account_id, v.tenant_id, v.kind, v.source, v.source_reference, v.original, v.remaining, \
             v.priority, v.effective_at, NULLIF(v.expires_at, 'epoch'::timestamptz), v.meter_codes, v.status, \
             v.metadata, v.created_at, v.created_sequence \
             FROM UNNEST({}) AS v(id, account_id, tenant_id, kind, source, source_reference, original, remaining, \
             priority, effective_at, expires_at, meter_codes, status, metadata, created_at, created_sequence)",
            parameters.join(", ")
        ),
    );
}

fn holds(builder: &mut Builder, changed: &[&Touched<'_>]) {
    let mut new = Vec::new();
    let (mut ids, mut statuses, mut captured) = (Vec::new(), Vec::new(), Vec::new());
    for touched in changed {
        for hold in &touched.wallet.holds {
            if touched.changes.new_holds.contains(&hold.id) {
                new.push((hold, touched.wallet.account.tenant_id));
            } else if touched.changes.touched_holds.contains(&hold.id) {
                ids.push(Value::from(hold.id.0));
                statuses.push(Value::from(rows::hold_status_name(hold.status)));
                captured.push(Value::from(hold.captured));
            }
        }
    }
    if !ids.is_empty() {
        let ids = builder.array(ArrayType::Uuid, ids, "uuid[]");
        let statuses = builder.array(ArrayType::String, statuses, "text[]");
        let captured = builder.array(ArrayType::Decimal, captured, "numeric[]");
        builder.cte(
            "holds_written",
            format!(
                "UPDATE holds SET status = v.status, captured_amount = v.captured \
                 FROM UNNEST({ids}, {statuses}, {captured}) AS v(id, status, captured) WHERE holds.id = v.id"
            ),
        );
    }
    if new.is_empty() {
        return;
    }
    let mut columns: Vec<Vec<Value>> = (0..9).map(|_| Vec::with_capacity(new.len())).collect();
    for (hold, tenant) in new {
        let values: [Value; 9] = [
            hold.id.0.into(),
            hold.account_id.0.into(),
            tenant.0.into(),
            hold.amount.into(),
            hold.captured.into(),
            rows::hold_status_name(hold.status).into(),
            hold.meter_code.clone().unwrap_or_default().into(),
            hold.expires_at.into(),
            hold.created_at.into(),
        ];
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
    }
    let kinds = [
        (ArrayType::Uuid, "uuid[]"),
        (ArrayType::Uuid, "uuid[]"),
        (ArrayType::Uuid, "uuid[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::ChronoDateTimeUtc, "timestamptz[]"),
        (ArrayType::ChronoDateTimeUtc, "timestamptz[]"),
    ];
    let parameters: Vec<String> =
        kinds.into_iter().zip(columns).map(|((kind, cast), column)| builder.array(kind, column, cast)).collect();
    builder.cte(
        "holds_added",
        format!(
            "INSERT INTO holds (id, account_id, tenant_id, amount, captured_amount, status, meter_code, expires_at, \
             created_at) \
             SELECT v.id, v.account_id, v.tenant_id, v.amount, v.captured, v.status, NULLIF(v.meter, ''), \
             v.expires_at, v.created_at \
             FROM UNNEST({}) AS v(id, account_id, tenant_id, amount, captured, status, meter, expires_at, created_at)",
            parameters.join(", ")
        ),
    );
}
