use std::time::Duration;

use reservoir_proto::metering as pb;
use rust_decimal::Decimal;

use crate::helpers::*;

/// The wallet goes away during ingestion and comes back: every accepted
/// event is debited exactly once, and the wallet's debits equal the charges.
async fn usage_accepted_while_the_wallet_is_down_is_charged_once_it_is_back(mut suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "0.5").await;
    let account = funded_account(&suite, "1000").await;
    let before = ingest(&suite, (0..20).map(|_| event(&account, "tokens", "1")).collect()).await;
    assert_eq!(statuses(&before), vec![pb::EventStatus::Charged; 20]);

    suite.stop_wallet().await;
    let during: Vec<pb::UsageEvent> = (0..30).map(|_| event(&account, "tokens", "2")).collect();
    let results = ingest(&suite, during.clone()).await;
    assert_eq!(statuses(&results), vec![pb::EventStatus::Pending; 30], "stored, to be debited later");
    let resent = ingest(&suite, during[..5].to_vec()).await;
    assert_eq!(statuses(&resent), vec![pb::EventStatus::Duplicate; 5]);

    suite.start_wallet().await;
    let mut charged = Vec::new();
    for _ in 0..100 {
        charged = ingest(&suite, during.clone()).await;
        if charged.iter().all(|result| result.original_status == i32::from(pb::EventStatus::Charged)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(charged.iter().all(|result| result.original_status == i32::from(pb::EventStatus::Charged)));
    let charged_total: Decimal = before.iter().chain(&charged).map(|result| d(&result.amount)).sum();
    assert_eq!(charged_total, d("40"));
    assert_eq!(debited(&suite, &account).await, charged_total, "the wallet's debits equal the charges");
    let entries = ledger(&suite.wallet, &account).await;
    let mut keys: Vec<&str> = entries.iter().map(|entry| entry.idempotency_key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), entries.len(), "no debit twice");
    assert_books_balance(&suite.wallet, &account).await;
    suite
}

crate::on_both_backends!(usage_accepted_while_the_wallet_is_down_is_charged_once_it_is_back);
