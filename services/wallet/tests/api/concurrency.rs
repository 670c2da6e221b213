use reservoir_proto::wallet as pb;
use rust_decimal::Decimal;
use tonic::Code;

use crate::helpers::*;

/// 200 concurrent debits of 1 against a balance of 100: exactly 100 succeed,
/// 100 are refused for funds, and the ledger holds exactly 100 debits.
async fn concurrent_debits_never_overdraw_or_lose_an_update(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "100", pb::GrantKind::Paid).await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = app.client.clone();
        let request = debit_request(&account, "1");
        tasks.push(tokio::spawn(async move {
            // A retryable conflict is retried with the same key, as a client would.
            loop {
                match client.clone().debit(request.clone()).await {
                    Err(status) if status.code() == Code::Aborted => continue,
                    other => return other,
                }
            }
        }));
    }
    let mut succeeded = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => succeeded += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(reservoir_common::status::reason_of(&status).as_deref(), Some("INSUFFICIENT_FUNDS"));
                refused += 1;
            }
        }
    }
    assert_eq!((succeeded, refused), (100, 100));
    assert_eq!(available(&app.client, &account).await, Decimal::ZERO);
    let debits = ledger(&app.client, &account)
        .await
        .into_iter()
        .filter(|entry| entry.kind == i32::from(pb::EntryKind::Debit))
        .count();
    assert_eq!(debits, 100);
    assert_books_balance(&app.client, &account).await;
}

/// Debits on many wallets at once all land.
async fn concurrent_debits_on_different_wallets_all_land(app: &TestApp) {
    let mut accounts = Vec::new();
    for _ in 0..10 {
        let account = prepaid(&app.client).await;
        grant(&app.client, &account, "20", pb::GrantKind::Paid).await;
        accounts.push(account);
    }
    let mut tasks = Vec::new();
    for round in 0..20 {
        for account in &accounts {
            let client = app.client.clone();
            let request = debit_request(account, "1");
            let _ = round;
            tasks.push(tokio::spawn(async move {
                loop {
                    match client.clone().debit(request.clone()).await {
                        Err(status) if status.code() == Code::Aborted => continue,
                        other => return other,
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    for account in &accounts {
        assert_eq!(available(&app.client, account).await, Decimal::ZERO);
        assert_books_balance(&app.client, account).await;
    }
}

/// Two replicas on one database keep the wallets they committed or read in
/// memory for balance reads; every read must still show each change the
/// other replica acknowledged before it, holds included.
async fn each_replica_reads_what_the_other_committed(app: &TestApp) {
    let replica = app.replica().await;
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "100", pb::GrantKind::Paid).await;
    let mut expected = d("100");
    for round in 0..6 {
        // Both have read, and kept, the wallet as it is before the change.
        assert_eq!(available(&app.client, &account).await, expected);
        assert_eq!(available(&replica.client, &account).await, expected);
        let writer = if round % 2 == 0 { &app.client } else { &replica.client };
        debit(writer, &account, "7").await.unwrap();
        expected -= d("7");
        assert_eq!(available(&app.client, &account).await, expected, "round {round}, this replica");
        assert_eq!(available(&replica.client, &account).await, expected, "round {round}, the other replica");
    }
    let hold = app
        .client
        .clone()
        .reserve(pb::ReserveRequest {
            account_id: account.id.clone(),
            amount: "5".into(),
            ttl_seconds: 60,
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap();
    let seen = balance(&replica.client, &account).await;
    assert_eq!((d(&seen.held), d(&seen.available)), (d("5"), expected - d("5")));
    replica
        .client
        .clone()
        .release_hold(pb::ReleaseHoldRequest { hold_id: hold.id, idempotency_key: key() })
        .await
        .unwrap();
    let seen = balance(&app.client, &account).await;
    assert_eq!((d(&seen.held), d(&seen.available)), (Decimal::ZERO, expected));
    // A grant on one replica is spendable through the other at once.
    grant(&replica.client, &account, "50", pb::GrantKind::Promotional).await;
    assert_eq!(available(&app.client, &account).await, expected + d("50"));
    assert_books_balance(&app.client, &account).await;
    replica.stop().await;
}

crate::on_both_backends!(
    concurrent_debits_never_overdraw_or_lose_an_update,
    concurrent_debits_on_different_wallets_all_land,
    each_replica_reads_what_the_other_committed
);
