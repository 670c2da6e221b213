use std::time::Duration;

use reservoir_proto::metering as pb;
use reservoir_proto::wallet as wallet_pb;
use rust_decimal::Decimal;

use crate::helpers::*;

async fn ingest_asynchronously(suite: &Suite, events: Vec<pb::UsageEvent>) -> Vec<pb::EventResult> {
    suite
        .metering
        .clone()
        .ingest_events(pb::IngestEventsRequest { events, asynchronous: true })
        .await
        .unwrap()
        .into_inner()
        .results
}

fn debits(entries: &[wallet_pb::LedgerEntry]) -> Vec<&wallet_pb::LedgerEntry> {
    entries.iter().filter(|entry| entry.kind == i32::from(wallet_pb::EntryKind::Debit)).collect()
}

/// How many events the DEBIT entries say they charged (one count per line).
fn events_charged(entries: &[wallet_pb::LedgerEntry]) -> usize {
    let mut lines = std::collections::HashMap::new();
    for entry in debits(entries) {
        let count: usize = entry.metadata.get("events").and_then(|count| count.parse().ok()).unwrap_or(0);
        lines.insert(entry.correlation_id.clone(), count);
    }
    lines.values().sum()
}

async fn events_are_answered_in_order_as_the_account_runs_out_mid_batch(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "1").await;
    let account = funded_account(&suite, "10").await;
    let events = vec![
        event(&account, "tokens", "4"),
        event(&account, "tokens", "5"),
        event(&account, "tokens", "3"),
        event(&account, "tokens", "1"),
    ];
    let results = ingest(&suite, events).await;
    assert_eq!(
        statuses(&results),
        vec![pb::EventStatus::Charged, pb::EventStatus::Charged, pb::EventStatus::Uncovered, pb::EventStatus::Charged],
        "the third no longer fits; the smaller fourth still does"
    );
    assert_eq!((results[2].amount.as_str(), results[2].reason.as_str()), ("3", "INSUFFICIENT_FUNDS"));
    assert_eq!(available(&suite.wallet, &account).await, d("0"));
    let entries = ledger(&suite.wallet, &account).await;
    let debits = debits(&entries);
    assert_eq!(debits.len(), 1, "one draw, one grant touched");
    assert_eq!(debits[0].amount, "-10.00");
    assert_eq!(events_charged(&entries), 3);
    assert!(results[2].entry_ids.is_empty(), "an uncovered event names no entry");
    assert_books_balance(&suite.wallet, &account).await;
    suite
}

async fn asynchronous_usage_is_accepted_then_drawn_moments_later(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "0.01").await;
    let account = funded_account(&suite, "100").await;
    let other = funded_account(&suite, "100").await;
    let events: Vec<pb::UsageEvent> =
        (0..40).map(|index| event(if index % 2 == 0 { &account } else { &other }, "tokens", "10")).collect();
    let results = ingest_asynchronously(&suite, events.clone()).await;
    assert_eq!(statuses(&results), vec![pb::EventStatus::Accepted; 40], "stored and priced, not yet drawn");
    assert!(results.iter().all(|result| result.amount == "0.1"));
    // Drawn once both balances show it; the events' outcomes are recorded
    // by metering just after the wallet answers, so a copy sent in between
    // may still be told ACCEPTED: it is sent again until told CHARGED.
    let mut drawn = false;
    let mut again = Vec::new();
    for _ in 0..100 {
        if available(&suite.wallet, &account).await == d("98") && available(&suite.wallet, &other).await == d("98") {
            again = ingest_asynchronously(&suite, events.clone()).await;
            if again.iter().all(|result| result.original_status == i32::from(pb::EventStatus::Charged)) {
                drawn = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(drawn, "drawn, and every event's outcome recorded, within a few seconds at most");
    assert_eq!(statuses(&again), vec![pb::EventStatus::Duplicate; 40]);
    let entries = ledger(&suite.wallet, &account).await;
    assert_eq!(debits(&entries).len(), 1, "the account's twenty events in one entry");
    assert_eq!(events_charged(&entries), 20);
    assert_books_balance(&suite.wallet, &account).await;
    assert_books_balance(&suite.wallet, &other).await;
    suite
}

async fn accepted_usage_waits_out_a_wallet_outage_and_is_drawn_once(mut suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "1").await;
    let account = funded_account(&suite, "100").await;
    // One event while the wallet is up, so metering knows the account.
    assert_eq!(statuses(&ingest(&suite, vec![event(&account, "tokens", "1")]).await), vec![pb::EventStatus::Charged]);
    suite.stop_wallet().await;
    let events: Vec<pb::UsageEvent> = (0..15).map(|_| event(&account, "tokens", "2")).collect();
    let results = ingest_asynchronously(&suite, events.clone()).await;
    assert_eq!(statuses(&results), vec![pb::EventStatus::Accepted; 15]);
    suite.start_wallet().await;
    let mut settled = Vec::new();
    for _ in 0..100 {
        settled = ingest(&suite, events.clone()).await;
        if settled.iter().all(|result| result.original_status == i32::from(pb::EventStatus::Charged)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(settled.iter().all(|result| result.original_status == i32::from(pb::EventStatus::Charged)));
    assert_eq!(available(&suite.wallet, &account).await, d("69"));
    assert_eq!(events_charged(&ledger(&suite.wallet, &account).await), 16);
    assert_books_balance(&suite.wallet, &account).await;
    suite
}

async fn a_statement_reconciles_the_drawn_lines_with_the_usage(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "0.01").await;
    priced_meter(&suite, "images", "0.5").await;
    let account = funded_account(&suite, "20").await;
    let start = chrono::Utc::now() - chrono::Duration::minutes(1);
    let mut events = Vec::new();
    for batch in 0..3 {
        let sent: Vec<pb::UsageEvent> = (0..7)
            .map(|index| event(&account, if index % 3 == 0 { "images" } else { "tokens" }, &format!("{}", 100 + batch)))
            .collect();
        let results = ingest(&suite, sent.clone()).await;
        assert!(statuses(&results).iter().all(|status| *status != pb::EventStatus::Invalid));
        events.extend(sent);
    }
    // Enough to run the account out on the way: some events end uncovered.
    let end = chrono::Utc::now() + chrono::Duration::minutes(1);
    let usage = suite
        .metering
        .clone()
        .get_usage(pb::GetUsageRequest {
            account_id: account.id.clone(),
            start_time: Some(reservoir_common::time::to_timestamp(start)),
            end_time: Some(reservoir_common::time::to_timestamp(end)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .groups;
    let charged: Decimal = usage.iter().map(|group| d(&group.charged_amount)).sum();
    let counted: u64 = usage.iter().map(|group| group.event_count).sum();
    assert_eq!(counted, events.len() as u64);
    let entries = ledger(&suite.wallet, &account).await;
    let drawn: Decimal = debits(&entries).iter().map(|entry| -d(&entry.amount)).sum();
    assert_eq!(drawn, charged, "the ledger's usage entries add up to what metering charged");
    let statement = suite
        .wallet
        .clone()
        .export_statement(wallet_pb::ExportStatementRequest {
            account_id: account.id.clone(),
            start_time: Some(reservoir_common::time::to_timestamp(start)),
            end_time: Some(reservoir_common::time::to_timestamp(end)),
        })
        .await
        .unwrap()
        .into_inner();
    let mut csv = String::new();
    let mut stream = statement;
    while let Some(chunk) = stream.message().await.unwrap() {
        csv.push_str(&chunk.csv);
    }
    let statement_debits: Decimal = csv
        .lines()
        .filter(|line| line.starts_with("ENTRY,") && line.contains(",DEBIT,"))
        .map(|line| -d(line.split(',').nth(4).unwrap()))
        .sum();
    assert_eq!(statement_debits, charged, "the statement's debits are the usage charged");
    assert_books_balance(&suite.wallet, &account).await;
    suite
}

async fn concurrent_asynchronous_batches_leave_at_most_one_undrawn_per_account(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "1").await;
    let account = funded_account(&suite, "100").await;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders = (0..6).map(|_| {
        let (metering, wallet, account, answered) =
            (suite.metering.clone(), suite.wallet.clone(), account.clone(), answered.clone());
        async move {
            let events: Vec<pb::UsageEvent> = (0..5).map(|_| event(&account, "tokens", "1")).collect();
            let results = metering
                .clone()
                .ingest_events(pb::IngestEventsRequest { events, asynchronous: true })
                .await
                .unwrap()
                .into_inner()
                .results;
            assert_eq!(statuses(&results), vec![pb::EventStatus::Accepted; 5]);
            // Of the batches answered so far, all but one at most are drawn.
            let answered = answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let drawn = events_charged(&ledger(&wallet, &account).await);
            assert!(drawn >= (answered - 1) * 5, "{answered} batches accepted but only {drawn} events drawn");
        }
    });
    futures::future::join_all(senders).await;
    let mut drawn = 0;
    for _ in 0..100 {
        drawn = events_charged(&ledger(&suite.wallet, &account).await);
        if drawn == 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(drawn, 30);
    assert_eq!(available(&suite.wallet, &account).await, d("70"));
    assert_books_balance(&suite.wallet, &account).await;
    suite
}

crate::on_both_backends!(
    events_are_answered_in_order_as_the_account_runs_out_mid_batch,
    asynchronous_usage_is_accepted_then_drawn_moments_later,
    accepted_usage_waits_out_a_wallet_outage_and_is_drawn_once,
    a_statement_reconciles_the_drawn_lines_with_the_usage,
    concurrent_asynchronous_batches_leave_at_most_one_undrawn_per_account,
);
