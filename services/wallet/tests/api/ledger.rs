use reservoir_common::time::to_timestamp;
use reservoir_proto::wallet as pb;
use sea_orm::{ConnectionTrait, Database};

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

async fn the_database_refuses_to_change_a_written_entry(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let mut options = sea_orm::ConnectOptions::new(app.database.url.clone());
    options.set_schema_search_path(app.database.schema.clone());
    let connection = Database::connect(options).await.unwrap();
    let update = connection.execute_unprepared("UPDATE ledger_entries SET description = 'tampered'").await;
    assert!(update.is_err(), "UPDATE of a ledger entry must fail");
    let delete = connection.execute_unprepared("DELETE FROM ledger_entries").await;
    assert!(delete.is_err(), "DELETE of a ledger entry must fail");
    assert_eq!(ledger(&app.client, &account).await.len(), 1);
}

crate::on_both_backends!(
    the_ledger_pages_by_sequence_and_filters_by_kind_and_time,
    the_database_refuses_to_change_a_written_entry,
);
