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

crate::on_both_backends!(
    concurrent_debits_never_overdraw_or_lose_an_update,
    concurrent_debits_on_different_wallets_all_land
);
