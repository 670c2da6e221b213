//! The plain-SQL baselines: what a straightforward design gets from the same
//! database on the same machine.

use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};

/// Connects with a pool of `pool` connections, the way the services do
/// (SQLite in WAL mode with synchronous=FULL; PostgreSQL in `schema`).
pub async fn connect(url: &str, schema: Option<&str>, pool: u32) -> anyhow::Result<DatabaseConnection> {
    let settings = reservoir_common::settings::DatabaseSettings {
        url: url.to_owned(),
        schema: schema.unwrap_or("main").to_owned(),
        max_connections: pool,
    };
    Ok(reservoir_common::db::Database::connect(&settings).await?.connection().clone())
}

/// A balance table with `accounts` rows of `balance`, an entry table, and an event table.
pub async fn prepare(db: &DatabaseConnection, accounts: usize, balance: Decimal) -> anyhow::Result<()> {
    let amount = reservoir_common::db::amount_column_type(db.get_database_backend());
    for statement in [
        "DROP TABLE IF EXISTS balances".to_owned(),
        "DROP TABLE IF EXISTS entries".to_owned(),
        "DROP TABLE IF EXISTS events".to_owned(),
        format!("CREATE TABLE balances (id BIGINT PRIMARY KEY, balance {amount} NOT NULL)"),
        format!(
            "CREATE TABLE entries (key TEXT PRIMARY KEY, account BIGINT NOT NULL, amount {amount} NOT NULL, balance_after {amount} NOT NULL)"
        ),
        "CREATE TABLE events (id TEXT PRIMARY KEY, account BIGINT NOT NULL, meter TEXT NOT NULL, quantity TEXT NOT NULL)"
            .to_owned(),
    ] {
        db.execute_unprepared(&statement).await?;
    }
    for start in (0..accounts).step_by(1_000) {
        let values: Vec<String> =
            (start..(start + 1_000).min(accounts)).map(|id| format!("({id}, '{balance}')")).collect();
        db.execute_unprepared(&format!("INSERT INTO balances (id, balance) VALUES {}", values.join(","))).await?;
    }
    Ok(())
}

/// The plain transaction per debit: a guarded update of the balance, the
/// entry, commit. On SQLite the balance is text, so the guard is applied in
/// the same statement after a cast, as a naive port would do.
pub async fn debit(db: &DatabaseConnection, account: i64, key: &str) -> bool {
    let backend = db.get_database_backend();
    let Ok(transaction) = db.begin().await else { return false };
    let update = if backend == DbBackend::Postgres {
        "UPDATE balances SET balance = balance - 0.01 WHERE id = $1 AND balance >= 0.01 RETURNING balance"
    } else {
        "UPDATE balances SET balance = CAST(CAST(balance AS REAL) - 0.01 AS TEXT) WHERE id = $1 AND CAST(balance AS REAL) >= 0.01 RETURNING balance"
    };
    let Ok(Some(row)) =
        transaction.query_one_raw(Statement::from_sql_and_values(backend, update, [account.into()])).await
    else {
        return false;
    };
    let after: String = if backend == DbBackend::Postgres {
        row.try_get::<Decimal>("", "balance").map(|value| value.to_string()).unwrap_or_default()
    } else {
        row.try_get::<String>("", "balance").unwrap_or_default()
    };
    let insert = if backend == DbBackend::Postgres {
        "INSERT INTO entries (key, account, amount, balance_after) VALUES ($1, $2, -0.01, CAST($3 AS NUMERIC))"
    } else {
        "INSERT INTO entries (key, account, amount, balance_after) VALUES ($1, $2, '-0.01', $3)"
    };
    let values = [key.into(), account.into(), after.into()];
    if transaction.execute_raw(Statement::from_sql_and_values(backend, insert, values)).await.is_err() {
        return false;
    }
    transaction.commit().await.is_ok()
}

/// A plain read of one balance.
pub async fn read_balance(db: &DatabaseConnection, account: i64) -> bool {
    let backend = db.get_database_backend();
    let statement =
        Statement::from_sql_and_values(backend, "SELECT balance FROM balances WHERE id = $1", [account.into()]);
    matches!(db.query_one_raw(statement).await, Ok(Some(_)))
}

/// A batch of events in one multi-row INSERT … ON CONFLICT DO NOTHING.
pub async fn insert_events(db: &DatabaseConnection, events: &[(String, i64)]) -> bool {
    // In id order, so concurrent batches that share ids lock them in one
    // order and never deadlock (a deadlock costs a second and the batch).
    let mut events: Vec<&(String, i64)> = events.iter().collect();
    events.sort();
    events.dedup_by(|a, b| a.0 == b.0);
    let values: Vec<String> =
        events.iter().map(|(id, account)| format!("('{id}', {account}, 'tokens', '1')")).collect();
    let sql = format!(
        "INSERT INTO events (id, account, meter, quantity) VALUES {} ON CONFLICT (id) DO NOTHING",
        values.join(",")
    );
    db.execute_unprepared(&sql).await.is_ok()
}

/// The books of the baseline: (entries, distinct keys, sum of balances).
pub async fn books(db: &DatabaseConnection) -> anyhow::Result<(i64, i64)> {
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(Statement::from_string(backend, "SELECT COUNT(*) AS n, COUNT(DISTINCT key) AS k FROM entries"))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no count"))?;
    Ok((row.try_get("", "n")?, row.try_get("", "k")?))
}
