//! Data written before the ledger was keyed by account number, replay
//! records by digest and events by transaction: after the migration every
//! entry keeps its id and place, a retry of an earlier call still replays,
//! an earlier debit can be refunded, and the event stream resumes across.

use chrono::Utc;
use prost::Message;
use reservoir_common::settings::DatabaseSettings;
use reservoir_proto::wallet as pb;
use reservoir_testing::{Backend, TestDatabase};
use reservoir_wallet::store::migrations::Migrator;
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, Statement, Value};
use sea_orm_migration::MigratorTrait;
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use uuid::Uuid;

use crate::helpers::*;

/// Migrations before the lean ledger.
const BEFORE_LEAN_LEDGER: u32 = 5;

async fn execute(connection: &impl ConnectionTrait, sql: &str, values: Vec<Value>) {
    let backend = connection.get_database_backend();
    connection.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await.unwrap();
}

fn money(text: &str) -> Value {
    Value::from(text.parse::<Decimal>().unwrap())
}

async fn data_from_before_the_lean_ledger_stays_readable_replayable_and_refundable(backend: Backend) {
    let Some(database) = TestDatabase::create(backend).await else { return };
    let db_settings =
        DatabaseSettings { url: database.url.clone(), schema: database.schema.clone(), max_connections: 2 };
    let connection = reservoir_common::db::Database::connect(&db_settings).await.unwrap().connection().clone();
    Migrator::up(&connection, Some(BEFORE_LEAN_LEDGER)).await.unwrap();

    // An account with a grant of 10 and a debit of 3, as the earlier tables held them.
    let (tenant, account, grant) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (granted, debited) = (Uuid::now_v7(), Uuid::now_v7());
    let now = Utc::now();
    execute(
        &connection,
        "INSERT INTO tenants (id, name, created_at, allow_promotional_transfers) VALUES ($1, 'old', $2, false)",
        vec![tenant.into(), now.into()],
    )
    .await;
    execute(
        &connection,
        "INSERT INTO accounts (id, tenant_id, external_id, unit_code, unit_scale, unit_price_per_credit, \
         unit_billing_currency, overdraft_policy, credit_limit, status, low_balance_alerted, depleted_alerted, \
         overdraft_used, held, last_sequence, metadata, created_at, updated_at, version) \
         VALUES ($1, $2, 'customer', 'USD', 2, '', '', 'NONE', $3, 'ACTIVE', false, false, $3, $3, 2, '{}', $4, $4, 2)",
        vec![account.into(), tenant.into(), money("0"), now.into()],
    )
    .await;
    execute(
        &connection,
        "INSERT INTO grants (id, account_id, tenant_id, kind, source, source_reference, original_amount, \
         remaining_amount, priority, effective_at, meter_codes, status, metadata, created_at, created_sequence) \
         VALUES ($1, $2, $3, 'PAID', 'ADMIN', '', $4, $5, 100, $6, '[]', 'ACTIVE', '{}', $6, 1)",
        vec![grant.into(), account.into(), tenant.into(), money("10"), money("7"), now.into()],
    )
    .await;
    for (id, sequence, kind, amount, balance, key) in
        [(granted, 1_i64, "GRANT", "10", "10", "k-grant"), (debited, 2, "DEBIT", "-3", "7", "k-debit")]
    {
        execute(
            &connection,
            "INSERT INTO ledger_entries (id, account_id, tenant_id, operation_id, sequence, kind, amount, grant_id, \
             balance_after, idempotency_key, correlation_id, description, metadata, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, '', '', '{}', $11)",
            vec![
                id.into(),
                account.into(),
                tenant.into(),
                Uuid::now_v7().into(),
                sequence.into(),
                kind.into(),
                money(amount),
                grant.into(),
                money(balance),
                key.into(),
                now.into(),
            ],
        )
        .await;
    }
    // The debit's replay record, holding its encoded response.
    let debit = pb::DebitRequest {
        account_id: account.to_string(),
        amount: "3".into(),
        idempotency_key: "k-debit".into(),
        ..Default::default()
    };
    let answered = pb::DebitResponse {
        entries: vec![pb::LedgerEntry {
            id: debited.to_string(),
            account_id: account.to_string(),
            sequence: 2,
            amount: "-3.00".into(),
            idempotency_key: "k-debit".into(),
            ..Default::default()
        }],
        balance: Some(pb::Balance { account_id: account.to_string(), available: "7.00".into(), ..Default::default() }),
    };
    execute(
        &connection,
        "INSERT INTO idempotency_keys (tenant_id, key, method, request_hash, response, created_at) \
         VALUES ($1, 'k-debit', 'Debit', $2, $3, $4)",
        vec![
            tenant.into(),
            hex::encode(Sha256::digest(debit.encode_to_vec())).into(),
            answered.encode_to_vec().into(),
            now.into(),
        ],
    )
    .await;
    for (sequence, kind) in [(1_i64, pb::EventType::GrantCreated), (2, pb::EventType::Debited)] {
        let event = pb::Event { r#type: kind.into(), account_id: account.to_string(), ..Default::default() };
        execute(
            &connection,
            "INSERT INTO outbox_events (sequence, tenant_id, account_id, event_type, payload, created_at) \
             VALUES ($1, $2, $3, 'X', $4, $5)",
            vec![sequence.into(), tenant.into(), account.into(), event.encode_to_vec().into(), now.into()],
        )
        .await;
    }
    execute(&connection, "UPDATE outbox_counter SET last_sequence = 2 WHERE id = 1", Vec::new()).await;
    connection.close().await.unwrap();

    // The service migrates the rest on start.
    let app = TestApp::spawn_on(database, reservoir_common::auth::TenantId(tenant)).await;
    let account = app.client.clone().get_account(pb::GetAccountRequest { account_id: account.to_string() }).await;
    let account = account.unwrap().into_inner().account.unwrap();
    let entries = ledger(&app.client, &account).await;
    let places: Vec<(String, u64)> = entries.iter().map(|entry| (entry.id.clone(), entry.sequence)).collect();
    assert_eq!(places, vec![(granted.to_string(), 1), (debited.to_string(), 2)], "ids and places kept");
    let again = app.client.clone().debit(debit).await.unwrap().into_inner();
    assert_eq!(again, answered, "a retry of the earlier debit replays its recorded response");
    let refund = pb::RefundRequest {
        entry_id: debited.to_string(),
        amount: "1".into(),
        idempotency_key: key(),
        reason: String::new(),
    };
    let refunded = app.client.clone().refund(refund).await.unwrap().into_inner();
    assert_eq!(refunded.entries[0].refunded_entry_id, debited.to_string());
    let fresh = debit_request(&account, "2");
    let fresh = app.client.clone().debit(fresh).await.unwrap().into_inner();
    assert_eq!(fresh.entries[0].sequence, 4, "new entries follow on");
    // The migration chained the earlier entries; the new ones follow on the chain.
    let verify = pb::VerifyLedgerRequest { account_id: account.id.clone(), ..Default::default() };
    let verified = app.client.clone().verify_ledger(verify).await.unwrap().into_inner();
    assert!(verified.intact, "{verified:?}");
    assert_eq!((verified.entries_checked, verified.last_sequence), (4, 4));
    assert_eq!(verified.head_hash, fresh.entries[0].hash);
    let hashes: Vec<String> = ledger(&app.client, &account).await.into_iter().map(|entry| entry.hash).collect();
    assert!(hashes.iter().all(|hash| hash.len() == 32), "every entry carries its hash: {hashes:?}");
    assert_eq!(available(&app.client, &account).await, d("6"));
    assert_books_balance(&app.client, &account).await;
    let mut stream = events_from_start(&app.client).await;
    let mut events = Vec::new();
    while events.len() < 4 {
        match tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(response))) => events.push(response.event.unwrap()),
            other => panic!("the stream ended early: {other:?}"),
        }
    }
    assert_eq!((events[0].sequence, events[1].sequence), (1, 2), "the earlier events first");
    assert_eq!(events[1].r#type, i32::from(pb::EventType::Debited));
    assert!(events[2].sequence > 2 && events[3].sequence > events[2].sequence, "then the new ones, in order");
    assert_eq!(events[2].r#type, i32::from(pb::EventType::Refunded));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_from_before_the_lean_ledger_carries_over_on_sqlite() {
    data_from_before_the_lean_ledger_stays_readable_replayable_and_refundable(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_from_before_the_lean_ledger_carries_over_on_postgres() {
    data_from_before_the_lean_ledger_stays_readable_replayable_and_refundable(Backend::Postgres).await;
}
