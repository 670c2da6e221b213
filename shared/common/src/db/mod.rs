//! Database plumbing every service shares: connecting to SQLite or to
//! PostgreSQL in the service's own schema, one writer at a time on SQLite,
//! and exact amount columns on both.

mod amount;
pub mod replay;

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database as SeaDatabase, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, QueryResult, Statement, TransactionTrait,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

pub use self::amount::Amount;
use crate::settings::DatabaseSettings;

/// A one-row table every SQLite database gets, so that a write transaction
/// can take the write lock with its first statement.
const WRITE_TURN_TABLE: &str = "CREATE TABLE IF NOT EXISTS reservoir_write_turn (id INTEGER PRIMARY KEY CHECK (id = 1)); \
     INSERT OR IGNORE INTO reservoir_write_turn (id) VALUES (1)";

/// The first statement of a SQLite write transaction: it takes the write lock.
const WRITE_TURN_UPDATE: &str = "UPDATE reservoir_write_turn SET id = 1 WHERE id = 1";

/// How long a connection may be waited for before the call fails as UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A service's connection pool.
#[derive(Clone)]
pub struct Database {
    connection: DatabaseConnection,
    /// SQLite has one writer; taking this before a write transaction turns
    /// "database is locked" failures into an orderly queue.
    write_lock: Option<Arc<Mutex<()>>>,
    /// PostgreSQL: the URL and schema, for the migration lock's own connection.
    postgres: Option<(String, String)>,
    /// SQLite: the database file, beside which the migration lock file lives.
    sqlite_file: Option<String>,
}

/// A write transaction, holding the SQLite writer's turn while it lives.
pub struct WriteTransaction {
    pub transaction: DatabaseTransaction,
    /// Kept alive as long as the transaction: dropping it lets the next writer in.
    pub turn: Option<OwnedMutexGuard<()>>,
}

impl Database {
    /// Connects, creating the PostgreSQL schema or the SQLite file as needed.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, DbErr> {
        let postgres = settings.is_postgres();
        if postgres {
            // The schema must exist before a connection can use it as its search path.
            let bootstrap =
                SeaDatabase::connect(ConnectOptions::new(settings.url.clone()).max_connections(1).to_owned()).await?;
            bootstrap.execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS {}", settings.schema)).await?;
            bootstrap.close().await?;
        } else if let Some(path) = sqlite_path(&settings.url)
            && let Some(parent) = std::path::Path::new(&path).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .map_err(|error| DbErr::Custom(format!("creating {}: {error}", parent.display())))?;
        }
        let mut options = ConnectOptions::new(settings.url.clone());
        options
            .max_connections(settings.max_connections)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .sqlx_logging(false);
        if postgres {
            options.set_schema_search_path(settings.schema.clone());
        } else {
            options.map_sqlx_sqlite_opts(|sqlite| {
                use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
                sqlite
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: a commit is on disk before it is acknowledged.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
                    // Statement journals and other temporary tables in
                    // memory: otherwise each multi-row write transaction
                    // creates, writes and unlinks a file in /var/tmp.
                    .pragma("temp_store", "memory")
            });
        }
        // Another process opening a fresh SQLite file, or migrating it, at
        // the same moment can make the first statements of a new connection
        // fail with "database is locked" before any busy wait applies: the
        // connection is opened under the same file lock as migrations.
        let lock = match sqlite_path(&settings.url) {
            Some(path) if !postgres => Some(lock_file(format!("{path}.migrating")).await?),
            _ => None,
        };
        let connection = SeaDatabase::connect(options).await?;
        if !postgres {
            connection.execute_unprepared(WRITE_TURN_TABLE).await?;
        }
        drop(lock);
        Ok(Self {
            connection,
            write_lock: (!postgres).then(|| Arc::new(Mutex::new(()))),
            postgres: postgres.then(|| (settings.url.clone(), settings.schema.clone())),
            sqlite_file: if postgres { None } else { sqlite_path(&settings.url) },
        })
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.connection
    }

    pub fn backend(&self) -> DbBackend {
        self.connection.get_database_backend()
    }

    /// Begins a write transaction, waiting for the SQLite writer's turn first.
    /// On SQLite the transaction writes before it reads, as BEGIN IMMEDIATE
    /// would: a deferred transaction that reads first and writes later fails
    /// with "database is locked" at once when any other connection committed
    /// a write in between (a single-statement write outside this process's
    /// queue, another process), instead of waiting its turn.
    pub async fn begin_write(&self) -> Result<WriteTransaction, DbErr> {
        let write = self.begin_turn().await?;
        if write.turn.is_some() {
            write.transaction.execute_unprepared(WRITE_TURN_UPDATE).await?;
        }
        Ok(write)
    }

    /// Begins a write transaction as [`Self::begin_write`] does and runs
    /// `first` in it, on SQLite in the same round trip to the connection's
    /// thread as the statement that takes the write lock; returns its rows.
    /// `first` is built for this database's backend.
    pub async fn begin_write_with(&self, first: Statement) -> Result<(WriteTransaction, Vec<QueryResult>), DbErr> {
        let write = self.begin_turn().await?;
        let first = if write.turn.is_some() {
            let values = first.values.map(|values| values.0).unwrap_or_default();
            Statement::from_sql_and_values(DbBackend::Sqlite, format!("{WRITE_TURN_UPDATE};\n{}", first.sql), values)
        } else {
            first
        };
        let rows = write.transaction.query_all_raw(first).await?;
        Ok((write, rows))
    }

    /// The SQLite writer's turn (none on PostgreSQL), then a transaction.
    async fn begin_turn(&self) -> Result<WriteTransaction, DbErr> {
        let turn = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        Ok(WriteTransaction { transaction: self.connection.begin().await?, turn })
    }

    /// Begins a read-only transaction that sees one snapshot: REPEATABLE READ
    /// on PostgreSQL; on SQLite a deferred transaction reads one WAL snapshot.
    pub async fn begin_snapshot(&self) -> Result<DatabaseTransaction, DbErr> {
        if self.backend() == DbBackend::Postgres {
            self.connection
                .begin_with_config(Some(sea_orm::IsolationLevel::RepeatableRead), Some(sea_orm::AccessMode::ReadOnly))
                .await
        } else {
            self.connection.begin().await
        }
    }

    pub async fn close(self) -> Result<(), DbErr> {
        self.connection.close().await
    }

    /// Connections the pool holds open, and how many of them are idle.
    pub fn pool_connections(&self) -> Option<(usize, usize)> {
        match self.backend() {
            DbBackend::Postgres => {
                let pool = self.connection.get_postgres_connection_pool();
                Some((pool.size() as usize, pool.num_idle()))
            }
            DbBackend::Sqlite => {
                let pool = self.connection.get_sqlite_connection_pool();
                Some((pool.size() as usize, pool.num_idle()))
            }
            _ => None,
        }
    }

    /// Runs `migrate` (the service's migrator over this pool) while holding
    /// a lock: on PostgreSQL an advisory lock named after the schema, taken on
    /// a connection of its own; on SQLite an exclusive lock on a file beside
    /// the database. Processes that start together migrate one at a time,
    /// and the later ones find nothing left to apply.
    pub async fn migrate_exclusively<F, Fut, E>(&self, migrate: F) -> Result<(), E>
    where
        F: FnOnce(DatabaseConnection) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: From<DbErr>,
    {
        let Some((url, schema)) = &self.postgres else {
            let Some(file) = &self.sqlite_file else {
                return migrate(self.connection.clone()).await;
            };
            let lock = lock_file(format!("{file}.migrating")).await?;
            let result = migrate(self.connection.clone()).await;
            // Closing the file releases the lock.
            drop(lock);
            return result;
        };
        let holder = SeaDatabase::connect(ConnectOptions::new(url.clone()).max_connections(1).to_owned()).await?;
        let key = format!("reservoir migrations {schema}");
        holder
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_lock(hashtext($1))",
                [key.clone().into()],
            ))
            .await?;
        let result = migrate(self.connection.clone()).await;
        // Closing the connection would release the lock too; this says so.
        let unlocked = holder
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_unlock(hashtext($1))",
                [key.into()],
            ))
            .await;
        let _ = holder.close().await;
        result?;
        unlocked?;
        Ok(())
    }
}

/// Takes an exclusive lock on a file beside a SQLite database, waiting for it;
/// closing the file releases it.
async fn lock_file(path: String) -> Result<std::fs::File, DbErr> {
    tokio::task::spawn_blocking(move || {
        let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        lock.lock()?;
        Ok::<_, std::io::Error>(lock)
    })
    .await
    .map_err(|error| DbErr::Custom(format!("locking for migrations: {error}")))?
    .map_err(|error| DbErr::Custom(format!("locking for migrations: {error}")))
}

/// The SQLite file of a `sqlite:` URL, if it names one.
fn sqlite_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or("");
    (!path.is_empty() && path != ":memory:").then(|| path.to_owned())
}

/// The column type of an amount: exact NUMERIC on PostgreSQL, exact text on SQLite.
/// A domain value as the JSON text a column keeps (maps, lists, small
/// records); serializing plain data cannot fail.
pub fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

pub fn amount_column_type(backend: DbBackend) -> &'static str {
    if backend == DbBackend::Postgres { "NUMERIC" } else { "TEXT" }
}

/// Substitutes each backend's column types into a schema written once:
/// `{uuid}`, `{amount}`, `{time}` and `{bytes}`.
pub fn render_schema(template: &str, backend: DbBackend) -> String {
    let postgres = backend == DbBackend::Postgres;
    template
        .replace("{uuid}", if postgres { "UUID" } else { "BLOB" })
        .replace("{amount}", amount_column_type(backend))
        .replace("{time}", if postgres { "TIMESTAMPTZ" } else { "TEXT" })
        .replace("{bytes}", if postgres { "BYTEA" } else { "BLOB" })
}

/// Whether an error is a unique-constraint violation.
pub fn is_unique_violation(error: &DbErr) -> bool {
    matches!(error.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_)))
}

/// What a database error means to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A race another attempt will not lose (unique violation, serialization
    /// failure, deadlock, SQLite busy): retry.
    Conflict,
    /// The database cannot be reached.
    Unavailable,
    /// Anything else: a bug or a broken database.
    Internal,
}

/// The driver's error inside a database error, when there is one.
fn driver_error(error: &DbErr) -> Option<&sea_orm::sqlx::Error> {
    use sea_orm::RuntimeErr;
    match error {
        DbErr::Conn(RuntimeErr::SqlxError(inner))
        | DbErr::Exec(RuntimeErr::SqlxError(inner))
        | DbErr::Query(RuntimeErr::SqlxError(inner)) => Some(inner.as_ref()),
        _ => None,
    }
}

/// The SQLSTATE (PostgreSQL) or result code (SQLite) of a database error,
/// if the database gave one.
pub fn sqlstate(error: &DbErr) -> Option<String> {
    match driver_error(error)? {
        sea_orm::sqlx::Error::Database(database) => database.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// What an SQLSTATE (PostgreSQL) or result code (SQLite) means to a caller,
/// for those that say the call may be tried again.
fn failure_of_code(code: &str) -> Option<Failure> {
    match code {
        // Serialization failure, deadlock; a lock not to be had now.
        "40001" | "40P01" | "55P03" => Some(Failure::Conflict),
        // SQLite busy or locked, with their extended codes.
        "5" | "6" | "261" | "262" | "517" => Some(Failure::Conflict),
        // The server shutting down or restarting (57P01 admin shutdown,
        // 57P02 crash shutdown, 57P03 cannot connect now), too many
        // connections, and every connection exception (class 08).
        "57P01" | "57P02" | "57P03" | "53300" => Some(Failure::Unavailable),
        code if code.starts_with("08") => Some(Failure::Unavailable),
        _ => None,
    }
}

/// Classifies a database error, so every service maps them alike: what a
/// retry can get past (a lost connection, a server going down or starting
/// up, a serialization failure) is never Internal, so callers that retry
/// UNAVAILABLE and ABORTED and treat INTERNAL as final do the right thing.
pub fn classify(error: &DbErr) -> Failure {
    use sea_orm::sqlx::Error as Driver;
    if is_unique_violation(error) {
        return Failure::Conflict;
    }
    if matches!(error, DbErr::Conn(_) | DbErr::ConnectionAcquire(_)) {
        return Failure::Unavailable;
    }
    if let Some(driver) = driver_error(error) {
        match driver {
            Driver::Database(_) => {
                if let Some(failure) = sqlstate(error).as_deref().and_then(failure_of_code) {
                    return failure;
                }
            }
            // The connection broke under the query: reset, broken pipe, EOF.
            Driver::Io(_)
            | Driver::Tls(_)
            | Driver::PoolTimedOut
            | Driver::PoolClosed
            | Driver::WorkerCrashed
            | Driver::BeginFailed => return Failure::Unavailable,
            // A reply cut short reads as a protocol error ("expected to read 5
            // bytes, got 0 bytes at EOF").
            Driver::Protocol(message) if message.contains("EOF") => return Failure::Unavailable,
            _ => {}
        }
    }
    let text = error.to_string();
    if text.contains("40001") || text.contains("40P01") || text.contains("database is locked") {
        Failure::Conflict
    } else if text.contains("Connection refused")
        || text.contains("pool timed out")
        || text.contains("PoolTimedOut")
        || text.contains("connection reset")
        || text.contains("Broken pipe")
        || text.contains("terminating connection")
        || text.contains("at EOF")
    {
        Failure::Unavailable
    } else {
        Failure::Internal
    }
}

/// Rows per multi-row INSERT, chosen so that one statement stays well under
/// 64 KiB on the wire. The database drivers do not set TCP_NODELAY, so a
/// message larger than one loopback segment waits out the server's delayed
/// ACK (40 ms on Linux) before its tail is sent: a few more statements cost
/// far less than that stall.
pub fn rows_per_insert(row_bytes_estimate: usize) -> usize {
    const STATEMENT_BYTES_MAX: usize = 32 * 1024;
    (STATEMENT_BYTES_MAX / row_bytes_estimate.max(1)).clamp(1, 500)
}

/// The row list of a PostgreSQL `VALUES` clause for `rows` rows of `columns`
/// parameters each, numbered after the statement's first `after` parameters:
/// `values_list(2, 3, 1)` is `($2, $3, $4), ($5, $6, $7)`.
pub fn values_list(rows: usize, columns: usize, after: usize) -> String {
    (0..rows)
        .map(|row| {
            let first = after + row * columns + 1;
            let parameters: Vec<String> = (first..first + columns).map(|n| format!("${n}")).collect();
            format!("({})", parameters.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sea_orm::{DbErr, RuntimeErr, sqlx};

    use super::{Failure, classify};

    fn driver(error: sqlx::Error) -> DbErr {
        DbErr::Query(RuntimeErr::SqlxError(Arc::new(error)))
    }

    #[test]
    fn a_broken_connection_is_unavailable_not_internal() {
        for kind in
            [std::io::ErrorKind::ConnectionReset, std::io::ErrorKind::BrokenPipe, std::io::ErrorKind::UnexpectedEof]
        {
            let error = driver(sqlx::Error::Io(std::io::Error::new(kind, "gone")));
            assert_eq!(classify(&error), Failure::Unavailable, "{kind:?}");
        }
        let cut_short = driver(sqlx::Error::Protocol("expected to read 5 bytes, got 0 bytes at EOF".into()));
        assert_eq!(classify(&cut_short), Failure::Unavailable);
        assert_eq!(classify(&driver(sqlx::Error::PoolTimedOut)), Failure::Unavailable);
        assert_eq!(classify(&driver(sqlx::Error::RowNotFound)), Failure::Internal, "a bug stays one");
    }

    #[test]
    fn codes_that_a_retry_gets_past_are_told_apart() {
        for code in ["57P01", "57P02", "57P03", "08006", "08003", "53300"] {
            assert_eq!(super::failure_of_code(code), Some(Failure::Unavailable), "{code}");
        }
        for code in ["40001", "40P01", "55P03", "5", "517"] {
            assert_eq!(super::failure_of_code(code), Some(Failure::Conflict), "{code}");
        }
        for code in ["23503", "22003", "42P01", "XX000"] {
            assert_eq!(super::failure_of_code(code), None, "{code}");
        }
    }

    #[test]
    fn values_lists_number_parameters_after_the_leading_ones() {
        assert_eq!(super::values_list(2, 3, 1), "($2, $3, $4), ($5, $6, $7)");
        assert_eq!(super::values_list(1, 2, 0), "($1, $2)");
    }
}
