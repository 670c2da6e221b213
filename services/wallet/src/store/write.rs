//! Writing what changes did, with their replay records, inside the caller's
//! transaction. On PostgreSQL that is the one statement of [`super::batch`];
//! on SQLite (one writer, no arrays) rows are written through sea-orm.

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, Statement};

use super::batch::{self, Record, Refused, Touched};
use super::entities::{account, grant, hold};
use super::events::{self, Written};
use super::ledger;
use super::rows;
use crate::error::WalletError;
use reservoir_common::db::{Amount, rows_per_insert, values_list};

/// Writes the wallets' changes and the replay records. `Ok(false)` when a
/// record's key was already recorded: then nothing may commit, and the
/// caller rolls back.
pub async fn write_in_transaction(
    transaction: &DatabaseTransaction,
    touched: &[Touched<'_>],
    records: Vec<Record>,
) -> Result<bool, WalletError> {
    if transaction.get_database_backend() == DbBackend::Postgres {
        return match batch::write(transaction, touched, records, false).await {
            Ok(()) => Ok(true),
            Err(Refused::KeyRecorded) => Ok(false),
            Err(Refused::Stale) => Err(WalletError::Conflict("an account changed under its lock".into())),
            Err(Refused::Failed(error)) => Err(error),
        };
    }
    let expected = records.len() as u64;
    if insert_records_sqlite(transaction, records).await? != expected {
        return Ok(false);
    }
    write_sqlite(transaction, touched).await?;
    Ok(true)
}

/// Records answers under their digests, skipping digests already recorded;
/// returns how many were recorded. Many rows per statement: on SQLite each
/// statement is a round trip to the connection's thread.
async fn insert_records_sqlite(transaction: &DatabaseTransaction, records: Vec<Record>) -> Result<u64, WalletError> {
    let mut inserted = 0;
    // A record is its answer (about a hundred bytes) and two digests.
    let per_statement = rows_per_insert(200);
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let mut values = Vec::with_capacity(per_statement * 4);
        for (digest, method, hash, answer) in records.by_ref().take(per_statement) {
            values.extend([digest.into(), method.into(), hash.into(), answer.into()]);
        }
        let sql = format!(
            "INSERT INTO replay_records (digest, method, request_hash, answer) VALUES {} ON CONFLICT (digest) DO NOTHING",
            values_list(values.len() / 4, 4, 0)
        );
        inserted += transaction
            .execute_raw(Statement::from_sql_and_values(DbBackend::Sqlite, sql, values))
            .await?
            .rows_affected();
    }
    Ok(inserted)
}

/// Writes each changed wallet's rows, then every entry, then the events.
async fn write_sqlite(transaction: &DatabaseTransaction, touched: &[Touched<'_>]) -> Result<(), WalletError> {
    let changed: Vec<&Touched<'_>> = touched.iter().filter(|touched| !touched.changes.is_empty()).collect();
    let mut entries = Vec::new();
    for touched in &changed {
        let (wallet, changes) = (touched.wallet, &touched.changes);
        account::Entity::update(rows::account_to_row(&wallet.account)).exec(transaction).await?;
        let tenant = wallet.account.tenant_id;
        for grant in &wallet.grants {
            if changes.new_grants.contains(&grant.id) {
                grant::Entity::insert(rows::grant_to_row(grant, tenant)).exec_without_returning(transaction).await?;
            } else if changes.touched_grants.contains(&grant.id) {
                grant::Entity::update_many()
                    .col_expr(grant::Column::RemainingAmount, Expr::value(Amount(grant.remaining)))
                    .col_expr(grant::Column::Status, Expr::value(rows::grant_status_name(grant.status)))
                    .filter(grant::Column::Id.eq(grant.id.0))
                    .exec(transaction)
                    .await?;
            }
        }
        for hold in &wallet.holds {
            if changes.new_holds.contains(&hold.id) {
                hold::Entity::insert(rows::hold_to_row(hold, tenant))
                    .on_conflict(OnConflict::column(hold::Column::Id).do_nothing().to_owned())
                    .exec_without_returning(transaction)
                    .await?;
            } else if changes.touched_holds.contains(&hold.id) {
                hold::Entity::update_many()
                    .col_expr(hold::Column::Status, Expr::value(rows::hold_status_name(hold.status)))
                    .col_expr(hold::Column::CapturedAmount, Expr::value(Amount(hold.captured)))
                    .filter(hold::Column::Id.eq(hold.id.0))
                    .exec(transaction)
                    .await?;
            }
        }
        let mut rows_out = ledger::rows_for(&changes.entries, wallet.account.number);
        ledger::resolve_legacy_refunds(transaction, &changes.entries, &mut rows_out).await?;
        entries.extend(rows_out);
    }
    ledger::insert_sqlite(transaction, entries).await?;
    let written: Vec<Written<'_>> = changed
        .iter()
        .filter(|touched| !touched.changes.events.is_empty())
        .map(|touched| Written {
            wallet: touched.wallet,
            events: &touched.changes.events,
            entries: &touched.changes.entries,
        })
        .collect();
    events::write_sqlite(transaction, &written).await
}
