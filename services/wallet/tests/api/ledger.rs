use reservoir_common::time::to_timestamp;
use reservoir_proto::wallet as pb;
use reservoir_testing::Backend;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::helpers::*;

async fn the_ledger_pages_by_sequence_and_filters_by_kind_and_time(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "100", pb::GrantKind::Paid).await;
    let middle = chrono::Utc::now();
    for _ in 0..7 {
        debit(&app.client, &account, "1").await.unwrap();
    }
    let mut client = app.client.clone();
    let page = |token: String| pb::ListLedgerEntriesRequest {
        account_id: account.id.clone(),
        page_size: 3,
        page_token: token,
        ..Default::default()
    };
    let first = client.list_ledger_entries(page(String::new())).await.unwrap().into_inner();
    let second = client.list_ledger_entries(page(first.next_page_token.clone())).await.unwrap().into_inner();
    let third = client.list_ledger_entries(page(second.next_page_token.clone())).await.unwrap().into_inner();
    let sequences: Vec<u64> =
        first.entries.iter().chain(&second.entries).chain(&third.entries).map(|entry| entry.sequence).collect();
    assert_eq!(sequences, (1..=8).collect::<Vec<_>>());
    assert!(third.next_page_token.is_empty());
    let debits = client
        .list_ledger_entries(pb::ListLedgerEntriesRequest {
            account_id: account.id.clone(),
            kinds: vec![pb::EntryKind::Grant.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(debits.entries.len(), 1);
    let later = client
        .list_ledger_entries(pb::ListLedgerEntriesRequest {
            account_id: account.id.clone(),
            start_time: Some(to_timestamp(middle)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(later.entries.len(), 7, "only the debits came after the instant");
    assert_invalid(client.list_ledger_entries(page("garbage".into())).await, "page_token");
    assert_invalid(
        client
            .list_ledger_entries(pb::ListLedgerEntriesRequest {
                account_id: account.id.clone(),
                page_size: 1_001,
                ..Default::default()
            })
            .await,
        "page_size",
    );
}

async fn books(app: &TestApp) -> DatabaseConnection {
    let mut options = sea_orm::ConnectOptions::new(app.database.url.clone());
    options.set_schema_search_path(app.database.schema.clone());
    Database::connect(options).await.unwrap()
}

async fn the_database_refuses_to_change_a_written_entry(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let connection = books(app).await;
    let update = connection.execute_unprepared("UPDATE ledger SET description = 'tampered'").await;
    assert!(update.is_err(), "UPDATE of a ledger entry must fail");
    let delete = connection.execute_unprepared("DELETE FROM ledger").await;
    assert!(delete.is_err(), "DELETE of a ledger entry must fail");
    assert_eq!(ledger(&app.client, &account).await.len(), 1);
}

async fn verify(app: &TestApp, account: &pb::Account, known: Option<(&str, u64)>) -> pb::VerifyLedgerResponse {
    let (known_hash, known_sequence) = known.map_or((String::new(), 0), |(hash, sequence)| (hash.to_owned(), sequence));
    let request = pb::VerifyLedgerRequest { account_id: account.id.clone(), known_hash, known_sequence };
    app.client.clone().verify_ledger(request).await.unwrap().into_inner()
}

/// Lifts the append-only rule, as someone with the database's owner
/// rights could, runs `sql` and puts the rule back.
async fn tamper(app: &TestApp, sql: &str) {
    let connection = books(app).await;
    if app.database.backend == Backend::Postgres {
        connection.execute_unprepared("ALTER TABLE ledger DISABLE TRIGGER ledger_append_only").await.unwrap();
        connection.execute_unprepared(sql).await.unwrap();
        connection.execute_unprepared("ALTER TABLE ledger ENABLE TRIGGER ledger_append_only").await.unwrap();
    } else {
        connection.execute_unprepared("DROP TRIGGER ledger_no_update").await.unwrap();
        connection.execute_unprepared("DROP TRIGGER ledger_no_delete").await.unwrap();
        connection.execute_unprepared(sql).await.unwrap();
        connection
            .execute_unprepared(
                "CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger \
                 BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END; \
                 CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger \
                 BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;",
            )
            .await
            .unwrap();
    }
}

async fn verify_ledger_names_the_first_entry_changed_behind_the_service(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let other = prepaid(&app.client).await;
    grant(&app.client, &account, "100", pb::GrantKind::Paid).await;
    grant(&app.client, &other, "100", pb::GrantKind::Paid).await;
    for amount in ["1", "2.50", "3", "4"] {
        debit(&app.client, &account, amount).await.unwrap();
        debit(&app.client, &other, amount).await.unwrap();
    }
    let entries = ledger(&app.client, &account).await;
    assert_eq!(entries.len(), 5);
    assert!(entries.iter().all(|entry| entry.hash.len() == 32), "every entry carries its hash");
    let intact = verify(app, &account, None).await;
    assert!(intact.intact && intact.first_break.is_none(), "{intact:?}");
    assert_eq!((intact.entries_checked, intact.last_sequence), (5, 5));
    assert_eq!(intact.head_hash, entries[4].hash, "the head is the latest entry's hash");
    // A customer who kept the hash of the third entry finds it unchanged.
    assert!(verify(app, &account, Some((&entries[2].hash, 3))).await.intact);
    let wrong = verify(app, &account, Some((&entries[1].hash, 3))).await;
    assert_eq!(wrong.first_break.unwrap().reason, "KNOWN_HASH_MISMATCH");

    // The third debit made smaller in the database: the check names it.
    let id = uuid::Uuid::parse_str(&account.id).unwrap();
    let connection = books(app).await;
    let sql = "SELECT number FROM accounts WHERE id = $1";
    let statement = Statement::from_sql_and_values(connection.get_database_backend(), sql, [id.into()]);
    let row = connection.query_one_raw(statement).await.unwrap().unwrap();
    let number: i64 = row.try_get("", "number").unwrap();
    tamper(app, &format!("UPDATE ledger SET amount = -0.30 WHERE account_number = {number} AND sequence = 4")).await;
    let found = verify(app, &account, None).await;
    assert!(!found.intact);
    assert_eq!(found.entries_checked, 3, "the entries before it still match");
    assert!(found.head_hash.is_empty());
    let broken = found.first_break.unwrap();
    assert_eq!((broken.reason.as_str(), broken.sequence), ("ENTRY_ALTERED", 4));
    assert_eq!(broken.entry_id, entries[3].id);
    assert_eq!(broken.stored_hash, entries[3].hash, "the hash stored when it was written");
    assert_ne!(broken.expected_hash, entries[3].hash);
    let other_found = verify(app, &other, None).await;
    assert!(other_found.intact, "another account's chain is its own: {other_found:?}");

    // Put back, then the latest entry removed: the head no longer matches.
    tamper(app, &format!("UPDATE ledger SET amount = -3 WHERE account_number = {number} AND sequence = 4")).await;
    assert!(verify(app, &account, None).await.intact, "the entry as written matches again");
    // An entry slipped in past the account's latest one, a copy of the fourth.
    tamper(
        app,
        &format!(
            "INSERT INTO ledger (account_number, sequence, created_at, position, kind, amount, balance_after, \
             idempotency_key, hash) SELECT account_number, 99, created_at, 0, kind, amount, balance_after, 'forged', \
             hash FROM ledger WHERE account_number = {number} AND sequence = 4"
        ),
    )
    .await;
    let broken = verify(app, &account, None).await.first_break.unwrap();
    assert_eq!((broken.reason.as_str(), broken.sequence), ("ENTRY_BEYOND_HEAD", 99));
    tamper(app, &format!("DELETE FROM ledger WHERE account_number = {number} AND sequence = 99")).await;
    assert!(verify(app, &account, None).await.intact);
    tamper(app, &format!("DELETE FROM ledger WHERE account_number = {number} AND sequence = 5")).await;
    let found = verify(app, &account, None).await;
    let broken = found.first_break.unwrap();
    assert_eq!((broken.reason.as_str(), broken.sequence), ("ENTRY_MISSING", 5));
    assert_eq!(found.entries_checked, 4);
}

async fn verify_ledger_reads_a_ledger_longer_than_a_page(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10000", pb::GrantKind::Paid).await;
    for _ in 0..2 {
        let debits = (0..1_000).map(|_| debit_request(&account, "0.01")).collect();
        app.client.clone().batch_debit(pb::BatchDebitRequest { debits }).await.unwrap();
    }
    let intact = verify(app, &account, None).await;
    assert!(intact.intact, "{intact:?}");
    assert_eq!((intact.entries_checked, intact.last_sequence), (2_001, 2_001));
    // A changed entry on the second page is found there, the first page matching.
    let connection = books(app).await;
    let id = uuid::Uuid::parse_str(&account.id).unwrap();
    let sql = "SELECT number FROM accounts WHERE id = $1";
    let statement = Statement::from_sql_and_values(connection.get_database_backend(), sql, [id.into()]);
    let number: i64 = connection.query_one_raw(statement).await.unwrap().unwrap().try_get("", "number").unwrap();
    tamper(app, &format!("UPDATE ledger SET amount = -0.02 WHERE account_number = {number} AND sequence = 1500")).await;
    let found = verify(app, &account, None).await;
    let broken = found.first_break.unwrap();
    assert_eq!((broken.reason.as_str(), broken.sequence, found.entries_checked), ("ENTRY_ALTERED", 1_500, 1_499));
}

async fn verify_ledger_refuses_a_malformed_known_hash(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let mut client = app.client.clone();
    let request = |hash: &str, sequence| pb::VerifyLedgerRequest {
        account_id: account.id.clone(),
        known_hash: hash.into(),
        known_sequence: sequence,
    };
    assert_invalid(client.verify_ledger(request("abc", 1)).await, "known_hash");
    assert_invalid(client.verify_ledger(request("", 1)).await, "known_hash");
    assert_invalid(client.verify_ledger(request(&"a".repeat(32), 0)).await, "known_sequence");
    let missing = pb::VerifyLedgerRequest { account_id: uuid::Uuid::now_v7().to_string(), ..Default::default() };
    assert_eq!(client.verify_ledger(missing).await.unwrap_err().code(), tonic::Code::NotFound);
}

crate::on_both_backends!(
    the_ledger_pages_by_sequence_and_filters_by_kind_and_time,
    the_database_refuses_to_change_a_written_entry,
    verify_ledger_names_the_first_entry_changed_behind_the_service,
    verify_ledger_refuses_a_malformed_known_hash,
    verify_ledger_reads_a_ledger_longer_than_a_page,
);
