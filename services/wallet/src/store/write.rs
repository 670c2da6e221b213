//! Writing what changes did, for one wallet or a batch of them, inside the
//! caller's transaction: accounts, grants and holds, then every entry, then
//! the events. On PostgreSQL each kind of row is one statement whose columns
//! are bound as arrays, whatever the batch size; on SQLite (one writer, no
//! arrays) rows are written through sea-orm.

use reservoir_common::auth::TenantId;
use sea_orm::sea_query::{ArrayType, Expr};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, Statement, Value};

use super::entities::{account, entry, grant, hold};
use super::events::{self, Written};
use super::ledger::{self, array};
use super::rows;
use crate::domain::{Changes, Grant, Wallet};
use crate::error::WalletError;
use reservoir_common::db::Amount;

/// Stands for "no amount" in array parameters, which cannot carry NULL: every
/// optional amount of an account is zero or more.
const NO_AMOUNT: i64 = -1;

/// Writes each wallet's changes; wallets without changes are skipped.
pub async fn write_changes(transaction: &DatabaseTransaction, batch: &[(&Wallet, Changes)]) -> Result<(), WalletError> {
    let changed: Vec<&(&Wallet, Changes)> = batch.iter().filter(|(_, changes)| !changes.is_empty()).collect();
    if changed.is_empty() {
        return Ok(());
    }
    let postgres = transaction.get_database_backend() == DbBackend::Postgres;
    if postgres {
        update_accounts(transaction, &changed).await?;
        update_grants(transaction, &changed).await?;
    } else {
        for (wallet, changes) in &changed {
            account::Entity::update(rows::account_to_row(&wallet.account)).exec(transaction).await?;
            for grant in touched_grants(wallet, changes) {
                update_grant(transaction, grant).await?;
            }
        }
    }
    let mut entries: Vec<entry::ActiveModel> = Vec::new();
    for (wallet, changes) in &changed {
        insert_grants_and_write_holds(transaction, wallet, changes).await?;
        let mut rows_out = ledger::rows_for(&changes.entries, wallet.account.number);
        ledger::resolve_legacy_refunds(transaction, &changes.entries, &mut rows_out).await?;
        entries.extend(rows_out);
    }
    ledger::insert(transaction, entries).await?;
    let written: Vec<Written<'_>> = changed
        .iter()
        .filter(|(_, changes)| !changes.events.is_empty())
        .map(|(wallet, changes)| Written { wallet, events: &changes.events, entries: &changes.entries })
        .collect();
    events::write(transaction, &written).await
}

/// Grants that existed before and were changed.
fn touched_grants<'a>(wallet: &'a Wallet, changes: &'a Changes) -> impl Iterator<Item = &'a Grant> {
    wallet
        .grants
        .iter()
        .filter(|grant| changes.touched_grants.contains(&grant.id) && !changes.new_grants.contains(&grant.id))
}

async fn update_grant(transaction: &DatabaseTransaction, grant: &Grant) -> Result<(), WalletError> {
    grant::Entity::update_many()
        .col_expr(grant::Column::RemainingAmount, Expr::value(Amount(grant.remaining)))
        .col_expr(grant::Column::Status, Expr::value(rows::grant_status_name(grant.status)))
        .filter(grant::Column::Id.eq(grant.id.0))
        .exec(transaction)
        .await?;
    Ok(())
}

fn optional_amount(value: Option<rust_decimal::Decimal>) -> Value {
    Value::from(value.unwrap_or(rust_decimal::Decimal::from(NO_AMOUNT)))
}

/// Every changed account in one UPDATE … FROM UNNEST.
async fn update_accounts(transaction: &DatabaseTransaction, changed: &[&(&Wallet, Changes)]) -> Result<(), WalletError> {
    let mut columns: Vec<Vec<Value>> = (0..23).map(|_| Vec::with_capacity(changed.len())).collect();
    for (wallet, _) in changed {
        let account = &wallet.account;
        let spend = &account.spend;
        let values: [Value; 23] = [
            account.id.0.into(),
            rows::account_status_name(account.status).into(),
            rows::overdraft_policy_name(&account.overdraft).into(),
            account.overdraft.credit_limit().into(),
            optional_amount(account.low_balance_threshold),
            account.low_balance_alerted.into(),
            account.depleted_alerted.into(),
            account.overdraft_used.into(),
            account.held.into(),
            i64::try_from(account.last_sequence).unwrap_or(i64::MAX).into(),
            account.updated_at.into(),
            account.credit_blocked.into(),
            i64::try_from(account.version).unwrap_or(i64::MAX).into(),
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
        ];
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
    }
    let kinds = [
        ArrayType::Uuid,
        ArrayType::String,
        ArrayType::String,
        ArrayType::Decimal,
        ArrayType::Decimal,
        ArrayType::Bool,
        ArrayType::Bool,
        ArrayType::Decimal,
        ArrayType::Decimal,
        ArrayType::BigInt,
        ArrayType::ChronoDateTimeUtc,
        ArrayType::Bool,
        ArrayType::BigInt,
        ArrayType::Decimal,
        ArrayType::Decimal,
        ArrayType::Bool,
        ArrayType::Decimal,
        ArrayType::Decimal,
        ArrayType::String,
        ArrayType::Decimal,
        ArrayType::Int,
        ArrayType::String,
        ArrayType::Decimal,
    ];
    let values: Vec<Value> = kinds.into_iter().zip(columns).map(|(kind, column)| array(kind, column)).collect();
    let sql = "UPDATE accounts SET status = v.status, overdraft_policy = v.policy, credit_limit = v.credit_limit, \
         low_balance_threshold = NULLIF(v.threshold, -1), low_balance_alerted = v.low, depleted_alerted = v.depleted, \
         overdraft_used = v.overdraft_used, held = v.held, last_sequence = v.last_sequence, updated_at = v.updated_at, \
         credit_blocked = v.credit_blocked, version = v.version, monthly_cap = NULLIF(v.monthly_cap, -1), \
         low_balance_warning = NULLIF(v.warning, -1), low_balance_warned = v.warned, \
         transfer_max = NULLIF(v.transfer_max, -1), transfer_daily_limit = NULLIF(v.transfer_daily_limit, -1), \
         spend_month = v.spend_month, month_spend = v.month_spend, cap_alerted_percent = v.cap_alerted, \
         transfer_day = v.transfer_day, transferred_today = v.transferred_today \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::numeric[], $6::bool[], $7::bool[], \
         $8::numeric[], $9::numeric[], $10::bigint[], $11::timestamptz[], $12::bool[], $13::bigint[], $14::numeric[], \
         $15::numeric[], $16::bool[], $17::numeric[], $18::numeric[], $19::text[], $20::numeric[], $21::int[], \
         $22::text[], $23::numeric[]) AS v(id, status, policy, credit_limit, threshold, low, depleted, overdraft_used, \
         held, last_sequence, updated_at, credit_blocked, version, monthly_cap, warning, warned, transfer_max, \
         transfer_daily_limit, spend_month, month_spend, cap_alerted, transfer_day, transferred_today) \
         WHERE accounts.id = v.id";
    let updated =
        transaction.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?.rows_affected();
    if updated != changed.len() as u64 {
        return Err(WalletError::Internal(format!("{updated} of {} accounts were updated", changed.len())));
    }
    Ok(())
}

/// Every changed grant of the batch in one UPDATE … FROM UNNEST.
async fn update_grants(transaction: &DatabaseTransaction, changed: &[&(&Wallet, Changes)]) -> Result<(), WalletError> {
    let mut ids = Vec::new();
    let mut remaining = Vec::new();
    let mut statuses = Vec::new();
    for (wallet, changes) in changed {
        for grant in touched_grants(wallet, changes) {
            ids.push(Value::from(grant.id.0));
            remaining.push(Value::from(grant.remaining));
            statuses.push(Value::from(rows::grant_status_name(grant.status)));
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    transaction
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE grants SET remaining_amount = v.remaining, status = v.status \
             FROM UNNEST($1::uuid[], $2::numeric[], $3::text[]) AS v(id, remaining, status) WHERE grants.id = v.id",
            [array(ArrayType::Uuid, ids), array(ArrayType::Decimal, remaining), array(ArrayType::String, statuses)],
        ))
        .await?;
    Ok(())
}

/// New grants, and new and changed holds: rare next to debits, written through sea-orm.
async fn insert_grants_and_write_holds(
    transaction: &DatabaseTransaction,
    wallet: &Wallet,
    changes: &Changes,
) -> Result<(), WalletError> {
    let tenant: TenantId = wallet.account.tenant_id;
    let new_grants: Vec<grant::ActiveModel> = wallet
        .grants
        .iter()
        .filter(|grant| changes.new_grants.contains(&grant.id))
        .map(|grant| rows::grant_to_row(grant, tenant))
        .collect();
    if !new_grants.is_empty() {
        grant::Entity::insert_many(new_grants).exec_without_returning(transaction).await?;
    }
    let new_holds: Vec<hold::ActiveModel> = wallet
        .holds
        .iter()
        .filter(|hold| changes.new_holds.contains(&hold.id))
        .map(|hold| rows::hold_to_row(hold, tenant))
        .collect();
    if !new_holds.is_empty() {
        hold::Entity::insert_many(new_holds).exec_without_returning(transaction).await?;
    }
    for hold in wallet
        .holds
        .iter()
        .filter(|hold| changes.touched_holds.contains(&hold.id) && !changes.new_holds.contains(&hold.id))
    {
        hold::Entity::update_many()
            .col_expr(hold::Column::Status, Expr::value(rows::hold_status_name(hold.status)))
            .col_expr(hold::Column::CapturedAmount, Expr::value(Amount(hold.captured)))
            .filter(hold::Column::Id.eq(hold.id.0))
            .exec(transaction)
            .await?;
    }
    Ok(())
}
