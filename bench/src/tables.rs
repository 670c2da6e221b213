//! The wallet's tables read and written straight, around the scenarios: the
//! planner's statistics refreshed, one account's ledger filled, and what the
//! debits wrote counted and measured on disk.

use anyhow::Context;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

/// Refreshes the planner's statistics after a bulk load, as autovacuum would
/// a little later: the tables grew from nothing within seconds.
pub async fn analyze(database: &sea_orm::DatabaseConnection) -> anyhow::Result<()> {
    if database.get_database_backend() == DbBackend::Postgres {
        database.execute_unprepared("ANALYZE").await?;
    }
    Ok(())
}

/// Appends `count` zero-amount entries to one account's ledger straight in
/// the database, a million per statement, and refreshes the statistics.
/// They are filler for the size of the table (at sequences past the
/// account's own, which GetBalance never reads): each carries a hash of the
/// stored size, not a place in the account's chain.
pub async fn fill_ledger(books: &sea_orm::DatabaseConnection, account: &str, count: u64) -> anyhow::Result<()> {
    let account = uuid::Uuid::parse_str(account)?;
    let mut written = 0_u64;
    while written < count {
        let upto = (written + 1_000_000).min(count);
        books
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO ledger (account_number, sequence, created_at, position, kind, amount, balance_after, \
                 idempotency_key, hash) \
                 SELECT a.number, 1000 + i, now(), 0, 2, 0, 0, 'ledger-fill-' || i, \
                 substring(sha256(int8send(i)) FROM 1 FOR 16) \
                 FROM accounts a, generate_series($2::bigint, $3::bigint) AS i WHERE a.id = $1",
                [account.into(), i64::try_from(written + 1)?.into(), i64::try_from(upto)?.into()],
            ))
            .await?;
        written = upto;
        eprintln!("  {written} entries");
    }
    books.execute_unprepared("ANALYZE ledger").await?;
    Ok(())
}

/// Bytes on disk of what debits write: the ledger, replay records and
/// events, with their indexes.
pub async fn debit_bytes(books: &sea_orm::DatabaseConnection) -> anyhow::Result<i64> {
    let row = books
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_total_relation_size('ledger') + pg_total_relation_size('replay_records') \
             + pg_total_relation_size('events') AS bytes",
        ))
        .await?
        .context("no size")?;
    Ok(row.try_get("", "bytes")?)
}

/// DEBIT entries in the ledger.
pub async fn debit_count(books: &sea_orm::DatabaseConnection) -> anyhow::Result<i64> {
    let row = books
        .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT COUNT(*) AS n FROM ledger WHERE kind = 2"))
        .await?
        .context("no count")?;
    Ok(row.try_get("", "n")?)
}
