//! Test support shared by every service's tests: a fresh database per test on
//! either backend, and a client layer that presents an API key.
//!
//! PostgreSQL is found at `RESERVOIR_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/reservoir_test`); each test gets a
//! schema of its own there. When PostgreSQL cannot be reached the test says
//! so loudly and passes without running, except under CI (`CI=true`), where
//! it fails.

#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;

use sea_orm::{ConnectionTrait, Database};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of one test's own.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub backend: Backend,
    pub url: String,
    /// The PostgreSQL schema of the test (on SQLite, unused).
    pub schema: String,
    sqlite_file: Option<PathBuf>,
}

fn postgres_url() -> String {
    std::env::var("RESERVOIR_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/reservoir_test".to_owned())
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false" && value != "0")
}

/// The server URL without the database, to create the test database itself.
fn server_url(url: &str) -> String {
    match url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/postgres"),
        None => url.to_owned(),
    }
}

impl TestDatabase {
    /// A fresh database, or `None` when PostgreSQL is out of reach outside CI.
    pub async fn create(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join("reservoir-tests");
                std::fs::create_dir_all(&dir).expect("creating the test directory");
                let file = dir.join(format!("{}.db", Uuid::new_v4().simple()));
                Some(Self {
                    backend,
                    url: format!("sqlite://{}?mode=rwc", file.display()),
                    schema: "wallet".to_owned(),
                    sqlite_file: Some(file),
                })
            }
            Backend::Postgres => {
                let url = postgres_url();
                let connection = match Database::connect(url.clone()).await {
                    Ok(connection) => connection,
                    Err(first) => {
                        // The test database may not exist yet: create it once.
                        let database = url.rsplit('/').next().unwrap_or("reservoir_test").to_owned();
                        match Database::connect(server_url(&url)).await {
                            Ok(server) => {
                                // Another test may create it at the same moment; that is fine.
                                let _ = server.execute_unprepared(&format!("CREATE DATABASE {database}")).await;
                                match Database::connect(url.clone()).await {
                                    Ok(connection) => connection,
                                    Err(error) => {
                                        return unreachable_postgres(&url, &error.to_string());
                                    }
                                }
                            }
                            Err(_) => return unreachable_postgres(&url, &first.to_string()),
                        }
                    }
                };
                let schema = format!("t_{}", Uuid::new_v4().simple());
                connection
                    .execute_unprepared(&format!("CREATE SCHEMA {schema}"))
                    .await
                    .expect("creating the test schema");
                connection.close().await.expect("closing the admin connection");
                Some(Self { backend, url, schema, sqlite_file: None })
            }
        }
    }

    /// A schema on a PostgreSQL server a test runs itself (the fault
    /// harness's cluster), reached at `url`.
    /// Runs one statement on the database, as an older release would have
    /// written its rows (`$1`, `$2` … for `values`).
    pub async fn execute(&self, sql: &str, values: Vec<sea_orm::Value>) {
        use sea_orm::ConnectionTrait;
        let settings = reservoir_common::settings::DatabaseSettings {
            url: self.url.clone(),
            schema: self.schema.clone(),
            max_connections: 1,
        };
        let database =
            reservoir_common::db::Database::connect(&settings).await.expect("connecting to the test database");
        let connection = database.connection();
        let statement = sea_orm::Statement::from_sql_and_values(connection.get_database_backend(), sql, values);
        connection.execute_raw(statement).await.expect("running a statement");
    }

    pub fn postgres_at(url: String, schema: &str) -> Self {
        Self { backend: Backend::Postgres, url, schema: schema.to_owned(), sqlite_file: None }
    }

    /// Removes the database. Tests call it at the end; a failed test leaves
    /// its database behind to be looked at.
    pub async fn drop_database(self) {
        match self.backend {
            Backend::Sqlite => {
                if let Some(file) = self.sqlite_file {
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
                    }
                }
            }
            Backend::Postgres => {
                if let Ok(connection) = Database::connect(self.url.clone()).await {
                    let _ = connection.execute_unprepared(&format!("DROP SCHEMA {} CASCADE", self.schema)).await;
                    let _ = connection.close().await;
                }
            }
        }
    }
}

fn unreachable_postgres(url: &str, error: &str) -> Option<TestDatabase> {
    let message = format!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! PostgreSQL is unreachable at {url}: {error}\n\
         !!! The PostgreSQL half of this test did NOT run.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    if under_ci() {
        panic!("{message}under CI every database test must run on PostgreSQL too");
    }
    eprintln!("{message}");
    None
}

/// Adds `authorization: Bearer <key>` to every call, and for a service key
/// the tenant it acts for.
#[derive(Clone)]
pub struct BearerKey {
    authorization: MetadataValue<Ascii>,
    tenant: Option<MetadataValue<Ascii>>,
}

impl BearerKey {
    pub fn new(key: &str) -> Self {
        Self { authorization: format!("Bearer {key}").parse().expect("an API key is ASCII"), tenant: None }
    }

    /// A service key acting for `tenant`, as the suite's services call each other.
    pub fn service(key: &str, tenant: reservoir_common::auth::TenantId) -> Self {
        Self { tenant: Some(tenant.to_string().parse().expect("a tenant id is ASCII")), ..Self::new(key) }
    }
}

impl tonic::service::Interceptor for BearerKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.authorization.clone());
        if let Some(tenant) = &self.tenant {
            request.metadata_mut().insert(reservoir_common::auth::TENANT_HEADER, tenant.clone());
        }
        Ok(request)
    }
}

/// Runs each named test body on SQLite and on PostgreSQL, each time with a
/// fresh `$suite` (a type with `spawn(Backend) -> Option<Self>` and
/// `stop(self)`): `on_both_backends!(Suite; a, b)` for bodies that take the
/// suite and hand it back to be stopped, `on_both_backends!(&Suite; a, b)`
/// for bodies that borrow it.
#[macro_export]
macro_rules! on_both_backends {
    ($suite:path; $($name:ident),* $(,)?) => {
        $crate::on_both_backends!(@backends $suite; |suite, body| body(suite).await; $($name),*);
    };
    (&$suite:path; $($name:ident),* $(,)?) => {
        $crate::on_both_backends!(@backends $suite; |suite, body| { body(&suite).await; suite }; $($name),*);
    };
    (@backends $suite:path; |$s:ident, $body:ident| $run:expr; $($name:ident),*) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    use $suite as Suite;
                    if let Some($s) = Suite::spawn($crate::Backend::Sqlite).await {
                        let $body = super::$name;
                        let suite = $run;
                        suite.stop().await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    use $suite as Suite;
                    if let Some($s) = Suite::spawn($crate::Backend::Postgres).await {
                        let $body = super::$name;
                        let suite = $run;
                        suite.stop().await;
                    }
                }
            )*
        }
    };
}

/// Runs each named test body, an `async fn(Backend)` that starts what it
/// needs itself, once on SQLite (`sqlite::name`) and once on PostgreSQL
/// (`postgres::name`).
#[macro_export]
macro_rules! each_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// A service served in the background, as a test runs it, until stopped.
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Serves `application` in the background until [`Running::stop`].
    pub fn start<A: reservoir_common::app::App + Send + 'static>(application: A) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            application
                .run_until(async {
                    let _ = stopped.await;
                })
                .await
                .expect("the service serves");
        });
        Self { stop, task }
    }

    /// Stops taking calls, lets those in flight finish, and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("the service stopped cleanly");
    }
}

pub mod proxy;
pub mod services;
#[cfg(feature = "traces")]
pub mod traces;
pub mod wallet;
