//! Writing what changes did, with their replay records, inside the caller's
//! transaction. On PostgreSQL that is the one statement of [`super::batch`];
//! on SQLite (one writer, no arrays) the statements sea-orm builds, sent
//! together as one [`Script`].

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, QueryTrait, Statement,
    Value,
};

use super::batch::{self, Record, Refused, Touched};
use super::entities::{account, grant, hold};
use super::events::{self, Written};
use super::ledger;
use super::rows;
use crate::error::WalletError;
use reservoir_common::db::{Amount, rows_per_insert};

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
    let expected = records.len();
    let mut script = Script::default();
    push_records(&mut script, records);
    push_changes(transaction, &mut script, touched).await?;
    if script.is_empty() {
        return Ok(true);
    }
    // Only the records' insert returns rows: one for each record inserted.
    let recorded = transaction.query_all_raw(script.into_statement()).await?.len();
    Ok(recorded == expected)
}

/// SQLite statements sent as one query. sqlx runs the statements of one
/// query string one after the other on the connection's own thread, binding
/// `?` parameters in order across them, so a batch's writes cost one round
/// trip to that thread instead of one per statement (there, each round trip
/// is a wake-up of another thread and back, about as long as the statement).
#[derive(Default)]
pub struct Script {
    sql: String,
    values: Vec<Value>,
}

impl Script {
    /// Appends a statement built for SQLite (its parameters are `?`).
    pub fn push(&mut self, statement: Statement) {
        debug_assert_eq!(statement.db_backend, DbBackend::Sqlite);
        self.push_sql(&statement.sql, statement.values.map(|values| values.0).unwrap_or_default());
    }

    /// Appends a statement written by hand with `?` parameters.
    pub fn push_sql(&mut self, sql: &str, values: Vec<Value>) {
        self.sql.push_str(sql);
        self.sql.push_str(";\n");
        self.values.extend(values);
    }

    pub fn is_empty(&self) -> bool {
        self.sql.is_empty()
    }

    pub fn into_statement(self) -> Statement {
        Statement::from_sql_and_values(DbBackend::Sqlite, self.sql, self.values)
    }
}

/// `rows` rows of `columns` `?` parameters each: `(?, ?), (?, ?)`.
pub fn question_marks(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row.as_str(); rows].join(", ")
}

/// Records answers under their digests, skipping digests already recorded;
/// each record inserted returns a row.
fn push_records(script: &mut Script, records: Vec<Record>) {
    // A record is its answer (about a hundred bytes) and two digests.
    let per_statement = rows_per_insert(200);
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let mut values = Vec::with_capacity(per_statement * 4);
        for (digest, method, hash, answer) in records.by_ref().take(per_statement) {
            values.extend([digest.into(), method.into(), hash.into(), answer.into()]);
        }
        let sql = format!(
            "INSERT INTO replay_records (digest, method, request_hash, answer) VALUES {} \
             ON CONFLICT (digest) DO NOTHING RETURNING 1",
            question_marks(values.len() / 4, 4)
        );
        script.push_sql(&sql, values);
    }
}

/// Each changed wallet's rows, then every entry, then the events.
async fn push_changes(
    transaction: &DatabaseTransaction,
    script: &mut Script,
    touched: &[Touched<'_>],
) -> Result<(), WalletError> {
    let changed: Vec<&Touched<'_>> = touched.iter().filter(|touched| !touched.changes.is_empty()).collect();
    let mut entries = Vec::new();
    for touched in &changed {
        let (wallet, changes) = (touched.wallet, &touched.changes);
        script
            .push(account::Entity::update(rows::account_to_row(&wallet.account)).validate()?.build(DbBackend::Sqlite));
        let tenant = wallet.account.tenant_id;
        for grant in &wallet.grants {
            if changes.new_grants.contains(&grant.id) {
                script.push(grant::Entity::insert(rows::grant_to_row(grant, tenant)).build(DbBackend::Sqlite));
            } else if changes.touched_grants.contains(&grant.id) {
                script.push(
                    grant::Entity::update_many()
                        .col_expr(grant::Column::RemainingAmount, Expr::value(Amount(grant.remaining)))
                        .col_expr(grant::Column::Status, Expr::value(rows::grant_status_name(grant.status)))
                        .filter(grant::Column::Id.eq(grant.id.0))
                        .build(DbBackend::Sqlite),
                );
            }
        }
        for hold in &wallet.holds {
            if changes.new_holds.contains(&hold.id) {
                script.push(
                    hold::Entity::insert(rows::hold_to_row(hold, tenant))
                        .on_conflict(OnConflict::column(hold::Column::Id).do_nothing().to_owned())
                        .build(DbBackend::Sqlite),
                );
            } else if changes.touched_holds.contains(&hold.id) {
                script.push(
                    hold::Entity::update_many()
                        .col_expr(hold::Column::Status, Expr::value(rows::hold_status_name(hold.status)))
                        .col_expr(hold::Column::CapturedAmount, Expr::value(Amount(hold.captured)))
                        .filter(hold::Column::Id.eq(hold.id.0))
                        .build(DbBackend::Sqlite),
                );
            }
        }
        let mut rows_out = ledger::rows_for(&changes.entries, wallet.account.number);
        ledger::resolve_legacy_refunds(transaction, &changes.entries, &mut rows_out).await?;
        entries.extend(rows_out);
    }
    ledger::push_sqlite(script, entries);
    let written: Vec<Written<'_>> = changed
        .iter()
        .filter(|touched| !touched.changes.events.is_empty())
        .map(|touched| Written {
            wallet: touched.wallet,
            events: &touched.changes.events,
            entries: &touched.changes.entries,
        })
        .collect();
    events::push_sqlite(script, &written)
}
