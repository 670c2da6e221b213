//! Meters and prices written before meters had other aggregations than SUM
//! and COUNT: after the migration (which rebuilds the meters table on
//! SQLite) they read as before, their prices still name them, and the new
//! aggregations can be stored.

use chrono::Utc;
use reservoir_common::settings::DatabaseSettings;
use reservoir_metering::store::migrations::Migrator;
use reservoir_testing::{Backend, TestDatabase};
use sea_orm::{ConnectionTrait, Statement, Value};
use sea_orm_migration::MigratorTrait;
use uuid::Uuid;

/// Migrations before the aggregations.
const BEFORE_AGGREGATIONS: u32 = 4;

async fn execute(connection: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<(), sea_orm::DbErr> {
    let backend = connection.get_database_backend();
    connection.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await.map(|_| ())
}

async fn meters_and_prices_from_before_carry_over(backend: Backend) {
    let Some(database) = TestDatabase::create(backend).await else { return };
    let settings = DatabaseSettings { url: database.url.clone(), schema: database.schema.clone(), max_connections: 2 };
    let connection = reservoir_common::db::Database::connect(&settings).await.unwrap().connection().clone();
    Migrator::up(&connection, Some(BEFORE_AGGREGATIONS)).await.unwrap();
    let (tenant, meter, price) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let now = Utc::now();
    execute(
        &connection,
        "INSERT INTO meters (id, tenant_id, code, unit_name, aggregation, description, created_at) \
         VALUES ($1, $2, 'calls', 'call', 'COUNT', 'API calls', $3)",
        vec![meter.into(), tenant.into(), now.into()],
    )
    .await
    .unwrap();
    execute(
        &connection,
        "INSERT INTO prices (id, tenant_id, meter_id, effective_from, definition, created_at) \
         VALUES ($1, $2, $3, $4, '{\"tiers\":[[null,\"2\"]],\"overrides\":[]}', $4)",
        vec![price.into(), tenant.into(), meter.into(), now.into()],
    )
    .await
    .unwrap();

    Migrator::up(&connection, None).await.unwrap();
    let row = connection
        .query_one_raw(Statement::from_string(
            connection.get_database_backend(),
            "SELECT m.code, m.aggregation, m.description, m.value_dimension, p.id AS price \
             FROM meters m JOIN prices p ON p.meter_id = m.id",
        ))
        .await
        .unwrap()
        .expect("the meter and its price");
    let code: String = row.try_get("", "code").unwrap();
    let aggregation: String = row.try_get("", "aggregation").unwrap();
    let description: String = row.try_get("", "description").unwrap();
    let dimension: Option<String> = row.try_get("", "value_dimension").unwrap();
    let found: Uuid = row.try_get("", "price").unwrap();
    assert_eq!((code.as_str(), aggregation.as_str(), description.as_str()), ("calls", "COUNT", "API calls"));
    assert_eq!((dimension, found), (None, price));
    // The new aggregations are stored; a price still needs its meter.
    execute(
        &connection,
        "INSERT INTO meters (id, tenant_id, code, unit_name, aggregation, description, created_at, value_dimension) \
         VALUES ($1, $2, 'users', 'user', 'UNIQUE_COUNT', '', $3, 'user')",
        vec![Uuid::now_v7().into(), tenant.into(), now.into()],
    )
    .await
    .unwrap();
    let orphan = execute(
        &connection,
        "INSERT INTO prices (id, tenant_id, meter_id, effective_from, definition, created_at) \
         VALUES ($1, $2, $3, $4, '{}', $4)",
        vec![Uuid::now_v7().into(), tenant.into(), Uuid::now_v7().into(), now.into()],
    )
    .await;
    assert!(orphan.is_err(), "prices still reference meters");
    let unknown = execute(
        &connection,
        "INSERT INTO meters (id, tenant_id, code, unit_name, aggregation, description, created_at) \
         VALUES ($1, $2, 'x', 'x', 'AVERAGE', '', $3)",
        vec![Uuid::now_v7().into(), tenant.into(), now.into()],
    )
    .await;
    assert!(unknown.is_err(), "the aggregations are still checked");
    connection.close().await.unwrap();
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_and_prices_from_before_carry_over_on_sqlite() {
    meters_and_prices_from_before_carry_over(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_and_prices_from_before_carry_over_on_postgres() {
    meters_and_prices_from_before_carry_over(Backend::Postgres).await;
}
