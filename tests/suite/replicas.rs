//! Two replicas of each service against one PostgreSQL, as a Deployment of
//! two runs them: whatever runs in every replica (the wallet's expiry
//! sweeper, metering's worker) still happens once.

use std::time::Duration;

use reservoir_common::time::to_timestamp;
use reservoir_proto::metering as pb;
use reservoir_proto::wallet as wallet_pb;
use reservoir_testing::wallet::*;
use reservoir_testing::{Backend, TestDatabase};
use rust_decimal::Decimal;

use crate::metering::{metering_client, price_tokens};
use crate::process::{Environment, ServiceProcess};

fn entries_of(entries: &[wallet_pb::LedgerEntry], kind: wallet_pb::EntryKind) -> Vec<&wallet_pb::LedgerEntry> {
    entries.iter().filter(|entry| entry.kind == i32::from(kind)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_each_service_expire_and_charge_everything_once_on_postgres() {
    let Some(wallet_database) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let Some(metering_database) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let mut first = Environment::new(&wallet_database, Some(&metering_database));
    // Both sweepers and both workers look often, so they race.
    first.set("RESERVOIR__WALLET__SWEEP_INTERVAL_MS", "50");
    first.set("RESERVOIR__METERING__WORKER_INTERVAL_MS", "50");
    let api_key = first.create_tenant().await;
    first.issue_service_key().await;
    let second = first.replica();
    let mut wallets = [ServiceProcess::wallet(&first), ServiceProcess::wallet(&second)];
    wallets[0].start(&first).await;
    wallets[1].start(&second).await;
    let clients = [client(wallets[0].address(), &api_key).await, client(wallets[1].address(), &api_key).await];

    // Expiry: grants on twenty accounts lapse while both sweepers run.
    let mut accounts = Vec::new();
    for index in 0..20 {
        let account = open_funded_account(&clients[index % 2], "1").await;
        let mut request = wallet_pb::GrantCreditsRequest {
            account_id: account.id.clone(),
            amount: "5".into(),
            kind: wallet_pb::GrantKind::Promotional.into(),
            idempotency_key: key(),
            ..Default::default()
        };
        request.expires_at = Some(to_timestamp(chrono::Utc::now() + chrono::Duration::milliseconds(800)));
        clients[(index + 1) % 2].clone().grant_credits(request).await.unwrap();
        accounts.push(account);
    }
    for account in &accounts {
        let mut expiries = 0;
        for _ in 0..100 {
            expiries = entries_of(&ledger(&clients[0], account).await, wallet_pb::EntryKind::Expiry).len();
            if expiries > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(expiries, 1, "the lapsed grant was written off once");
    }
    // A moment more for a late second sweep to show if it were going to.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for account in &accounts {
        let entries = ledger(&clients[1], account).await;
        assert_eq!(entries_of(&entries, wallet_pb::EntryKind::Expiry).len(), 1, "still once");
        assert_eq!(available(&clients[1], account).await, d("1"));
        assert_books_balance(&clients[1], account).await;
    }

    // Usage: events accepted while both wallets are down wait as PENDING;
    // when the wallets are back, both metering workers race to charge them.
    let mut meterings = [ServiceProcess::metering(&first), ServiceProcess::metering(&second)];
    meterings[0].start(&first).await;
    meterings[1].start(&second).await;
    let mut metering = metering_client(meterings[0].address(), &api_key).await;
    price_tokens(&mut metering).await;
    let payer = open_funded_account(&clients[0], "100").await;
    let usage = |quantity: &str| pb::UsageEvent {
        event_id: key(),
        account_id: payer.id.clone(),
        meter_code: "tokens".into(),
        quantity: quantity.into(),
        ..Default::default()
    };
    // One event while the wallets are up, so metering knows the account.
    let first_event = metering
        .ingest_events(pb::IngestEventsRequest { events: vec![usage("10")], asynchronous: false })
        .await
        .unwrap();
    assert_eq!(first_event.into_inner().results[0].status, i32::from(pb::EventStatus::Charged));
    for wallet in &mut wallets {
        wallet.terminate().await;
    }
    let events: Vec<pb::UsageEvent> = (0..60).map(|_| usage("10")).collect();
    let results = metering
        .ingest_events(pb::IngestEventsRequest { events, asynchronous: false })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(
        results.iter().all(|result| result.status == i32::from(pb::EventStatus::Pending)),
        "accepted and waiting while the wallet is away"
    );
    wallets[0].start(&first).await;
    wallets[1].start(&second).await;
    // Usage is drawn a line at a time; each line's entry names how many
    // events it charged.
    let charged_events = |entries: &[wallet_pb::LedgerEntry]| -> usize {
        entries_of(entries, wallet_pb::EntryKind::Debit)
            .iter()
            .map(|entry| entry.metadata.get("events").and_then(|count| count.parse::<usize>().ok()).unwrap_or(0))
            .sum()
    };
    let mut debited = 0;
    for _ in 0..200 {
        debited = charged_events(&ledger(&clients[0], &payer).await);
        if debited == 61 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries = ledger(&clients[1], &payer).await;
    assert_eq!(debited, 61);
    assert_eq!(charged_events(&entries), 61, "each event debited once");
    assert_eq!(entries_of(&entries, wallet_pb::EntryKind::Debit).len(), 2, "one entry for each batch's line");
    assert_eq!(available(&clients[1], &payer).await, d("100") - Decimal::new(61, 1));
    assert_books_balance(&clients[1], &payer).await;

    for service in meterings.iter_mut().chain(wallets.iter_mut()) {
        service.terminate().await;
    }
    wallet_database.drop_database().await;
    metering_database.drop_database().await;
}
