//! Killing the wallet mid-stream loses nothing a client saw succeed and
//! applies nothing twice; SIGTERM finishes the calls in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reservoir_proto::wallet as pb;
use reservoir_testing::wallet::*;
use reservoir_testing::{Backend, TestDatabase};
use rust_decimal::Decimal;

use crate::process::{Environment, ServiceProcess};

/// Every debit a worker sent, and the answer for those it saw succeed.
#[derive(Default)]
struct Sent {
    requests: Vec<pb::DebitRequest>,
    acknowledged: HashMap<String, pb::DebitResponse>,
}

/// Workers sending debits of one cent as fast as they can until the server goes away.
fn start_debiting(
    address: std::net::SocketAddr,
    api_key: String,
    account: pb::Account,
    sent: Arc<Mutex<Sent>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|_| {
            let (api_key, account, sent) = (api_key.clone(), account.clone(), sent.clone());
            tokio::spawn(async move {
                let client = client(address, &api_key).await;
                for _ in 0..10_000 {
                    let request = pb::DebitRequest {
                        account_id: account.id.clone(),
                        amount: "0.01".into(),
                        idempotency_key: key(),
                        ..Default::default()
                    };
                    sent.lock().unwrap().requests.push(request.clone());
                    match client.clone().debit(request.clone()).await {
                        Ok(response) => {
                            sent.lock()
                                .unwrap()
                                .acknowledged
                                .insert(request.idempotency_key.clone(), response.into_inner());
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect()
}

async fn a_wallet_killed_mid_stream_loses_and_repeats_nothing(backend: Backend) {
    let Some(database) = TestDatabase::create(backend).await else {
        return;
    };
    let environment = Environment::new(&database, None);
    let mut wallet = ServiceProcess::wallet(&environment);
    let api_key = environment.create_tenant().await;
    wallet.start(&environment).await;
    let client_before = client(wallet.address(), &api_key).await;
    let account = open_funded_account(&client_before, "1000000").await;
    let sent = Arc::new(Mutex::new(Sent::default()));
    let workers = start_debiting(wallet.address(), api_key.clone(), account.clone(), sent.clone());
    // Let a few hundred debits through, then pull the plug mid-stream.
    for _ in 0..200 {
        if sent.lock().unwrap().acknowledged.len() >= 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    wallet.kill().await;
    for worker in workers {
        worker.await.unwrap();
    }
    let (requests, acknowledged) = {
        let sent = sent.lock().unwrap();
        (sent.requests.clone(), sent.acknowledged.clone())
    };
    assert!(acknowledged.len() >= 50, "the test killed too early to show anything: {}", acknowledged.len());

    wallet.start(&environment).await;
    let client = client(wallet.address(), &api_key).await;
    let entries = ledger(&client, &account).await;
    let debits_by_key = |entries: &[pb::LedgerEntry]| {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for entry in entries.iter().filter(|entry| entry.kind == i32::from(pb::EntryKind::Debit)) {
            *counts.entry(entry.idempotency_key.clone()).or_default() += 1;
        }
        counts
    };
    let counts = debits_by_key(&entries);
    for key in acknowledged.keys() {
        assert_eq!(counts.get(key), Some(&1), "an acknowledged debit is in the ledger exactly once");
    }
    assert!(counts.values().all(|count| *count == 1), "no key was applied twice");

    // Retrying every request with its key: the acknowledged ones answer as
    // before; the ones cut off are applied now, once.
    for request in &requests {
        let response = client.clone().debit(request.clone()).await.unwrap().into_inner();
        if let Some(original) = acknowledged.get(&request.idempotency_key) {
            assert_eq!(&response, original, "a retry returns the original result");
        }
    }
    let entries = ledger(&client, &account).await;
    let counts = debits_by_key(&entries);
    assert_eq!(counts.len(), requests.len(), "every sent debit is in the ledger");
    assert!(counts.values().all(|count| *count == 1), "and each exactly once");
    let expected = Decimal::from(1_000_000) - Decimal::new(requests.len() as i64, 2);
    assert_eq!(available(&client, &account).await, expected);
    assert_books_balance(&client, &account).await;
    wallet.terminate().await;
    database.drop_database().await;
}

async fn sigterm_finishes_calls_in_flight(backend: Backend) {
    let Some(database) = TestDatabase::create(backend).await else {
        return;
    };
    let environment = Environment::new(&database, None);
    let mut wallet = ServiceProcess::wallet(&environment);
    let api_key = environment.create_tenant().await;
    wallet.start(&environment).await;
    let account = open_funded_account(&client(wallet.address(), &api_key).await, "1000000").await;
    let sent = Arc::new(Mutex::new(Sent::default()));
    let workers = start_debiting(wallet.address(), api_key.clone(), account.clone(), sent.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = wallet.terminate().await;
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");
    for worker in workers {
        worker.await.unwrap();
    }
    let acknowledged = sent.lock().unwrap().acknowledged.clone();
    wallet.start(&environment).await;
    let client = client(wallet.address(), &api_key).await;
    let entries = ledger(&client, &account).await;
    for key in acknowledged.keys() {
        let count = entries.iter().filter(|entry| &entry.idempotency_key == key).count();
        assert_eq!(count, 1, "an acknowledged debit is in the ledger exactly once");
    }
    assert_books_balance(&client, &account).await;
    wallet.terminate().await;
    database.drop_database().await;
}

reservoir_testing::each_backend!(
    a_wallet_killed_mid_stream_loses_and_repeats_nothing,
    sigterm_finishes_calls_in_flight,
);
