//! Metering killed with SIGKILL in the middle of ingesting: after a restart,
//! every accepted event is debited exactly once and the wallet's debits equal
//! the charges.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reservoir_proto::metering as pb;
use reservoir_proto::metering::metering_service_client::MeteringServiceClient;
use reservoir_proto::wallet as wallet_pb;
use reservoir_testing::wallet::*;
use reservoir_testing::{Backend, BearerKey, TestDatabase};
use rust_decimal::Decimal;

use crate::process::{Environment, ServiceProcess};

const BATCH: usize = 50;

pub type MeteringClient =
    MeteringServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerKey>>;

pub async fn metering_client(address: std::net::SocketAddr, api_key: &str) -> MeteringClient {
    MeteringServiceClient::with_interceptor(channel(address).await, BearerKey::new(api_key))
}

/// The meter `tokens` at 0.01 a token.
pub async fn price_tokens(metering: &mut MeteringClient) {
    metering
        .create_meter(pb::CreateMeterRequest {
            code: "tokens".into(),
            unit_name: "token".into(),
            aggregation: pb::Aggregation::Sum.into(),
            description: String::new(),
            value_dimension: String::new(),
        })
        .await
        .unwrap();
    metering
        .set_price(pb::SetPriceRequest {
            meter_code: "tokens".into(),
            effective_from: None,
            tiers: vec![pb::Tier { up_to: String::new(), unit_price: "0.01".into() }],
            overrides: Vec::new(),
            idempotency_key: key(),
        })
        .await
        .unwrap();
}

/// A wallet and a metering process, a tenant, a funded account and a priced meter.
struct Running {
    environment: Environment,
    wallet: ServiceProcess,
    metering: ServiceProcess,
    api_key: String,
    wallet_client: Client,
    account: wallet_pb::Account,
    databases: Vec<TestDatabase>,
}

async fn start(backend: Backend) -> Option<Running> {
    let wallet_database = TestDatabase::create(backend).await?;
    let metering_database = TestDatabase::create(backend).await?;
    let mut environment = Environment::new(&wallet_database, Some(&metering_database));
    let api_key = environment.create_tenant().await;
    environment.issue_service_key().await;
    let mut wallet = ServiceProcess::wallet(&environment);
    wallet.start(&environment).await;
    let mut metering = ServiceProcess::metering(&environment);
    metering.start(&environment).await;
    let wallet_client = client(wallet.address(), &api_key).await;
    let account = open_funded_account(&wallet_client, "1000000").await;
    price_tokens(&mut metering_client(metering.address(), &api_key).await).await;

    Some(Running {
        environment,
        wallet,
        metering,
        api_key,
        wallet_client,
        account,
        databases: vec![wallet_database, metering_database],
    })
}

async fn metering_killed_mid_ingest_debits_every_event_once(backend: Backend) {
    let Some(Running { environment, mut wallet, mut metering, api_key, wallet_client, account, databases }) =
        start(backend).await
    else {
        return;
    };
    let metering_api = metering_client(metering.address(), &api_key).await;
    // Batches sent one after another until metering dies under them.
    let sent: Arc<Mutex<Vec<Vec<pb::UsageEvent>>>> = Arc::default();
    let acknowledged: Arc<Mutex<usize>> = Arc::default();
    let sender = {
        let (sent, acknowledged, account_id) = (sent.clone(), acknowledged.clone(), account.id.clone());
        let mut api = metering_api.clone();
        tokio::spawn(async move {
            for _ in 0..1_000 {
                let batch: Vec<pb::UsageEvent> = (0..BATCH)
                    .map(|_| pb::UsageEvent {
                        event_id: key(),
                        account_id: account_id.clone(),
                        meter_code: "tokens".into(),
                        quantity: "3".into(),
                        ..Default::default()
                    })
                    .collect();
                sent.lock().unwrap().push(batch.clone());
                if api.ingest_events(pb::IngestEventsRequest { events: batch, asynchronous: false }).await.is_err() {
                    return;
                }
                *acknowledged.lock().unwrap() += 1;
            }
        })
    };
    for _ in 0..400 {
        if *acknowledged.lock().unwrap() >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    metering.kill().await;
    sender.await.unwrap();
    let batches = sent.lock().unwrap().clone();
    assert!(*acknowledged.lock().unwrap() >= 3, "killed too early to show anything");

    metering.start(&environment).await;
    let mut api = metering_client(metering.address(), &api_key).await;
    // Sending every batch again: each event is stored once, and all end
    // charged (those the killed process held wait out its claim, 15 s).
    let mut amounts: HashMap<String, Decimal> = HashMap::new();
    for _ in 0..150 {
        amounts.clear();
        let mut all_charged = true;
        for batch in &batches {
            let results =
                match api.ingest_events(pb::IngestEventsRequest { events: batch.clone(), asynchronous: false }).await {
                    Ok(response) => response.into_inner().results,
                    // A client retries what the service asks it to retry.
                    Err(status) if matches!(status.code(), tonic::Code::Aborted | tonic::Code::Unavailable) => {
                        all_charged = false;
                        continue;
                    }
                    Err(status) => panic!("re-sending a batch failed: {status:?}"),
                };
            for result in results {
                let status = if result.status == i32::from(pb::EventStatus::Duplicate) {
                    result.original_status
                } else {
                    result.status
                };
                all_charged &= status == i32::from(pb::EventStatus::Charged);
                amounts.insert(result.event_id.clone(), d(&result.amount));
            }
        }
        if all_charged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let events = batches.iter().map(Vec::len).sum::<usize>();
    assert_eq!(amounts.len(), events);
    let charged: Decimal = amounts.values().sum();
    assert_eq!(charged, Decimal::new(3, 2) * Decimal::from(events as u64));
    let entries = ledger(&wallet_client, &account).await;
    let debits: Vec<&wallet_pb::LedgerEntry> =
        entries.iter().filter(|entry| entry.kind == i32::from(wallet_pb::EntryKind::Debit)).collect();
    // Usage is drawn a line (a batch's account and meter) at a time: every
    // line's entries name the line and how many events it charged.
    let mut lines: HashMap<&str, usize> = HashMap::new();
    for entry in &debits {
        let charged: usize = entry.metadata.get("events").and_then(|count| count.parse().ok()).unwrap_or(0);
        lines.insert(entry.correlation_id.as_str(), charged);
    }
    assert_eq!(lines.values().sum::<usize>(), events, "every accepted event debited exactly once");
    let debited: Decimal = debits.iter().map(|entry| -d(&entry.amount)).sum();
    assert_eq!(debited, charged, "the wallet's debits equal the charges");
    assert_books_balance(&wallet_client, &account).await;
    metering.terminate().await;
    wallet.terminate().await;
    for database in databases {
        database.drop_database().await;
    }
}

/// Asynchronous ingestion answers once events are stored; a kill before
/// they are drawn (first with the wallet away, so none can be, then in the
/// middle of a stream of batches) loses none and draws none twice.
async fn metering_killed_before_accepted_usage_is_drawn_loses_and_doubles_nothing(backend: Backend) {
    let Some(Running { environment, mut wallet, mut metering, api_key, wallet_client, account, databases }) =
        start(backend).await
    else {
        return;
    };
    let batch = |quantity: &str| -> Vec<pb::UsageEvent> {
        (0..BATCH)
            .map(|_| pb::UsageEvent {
                event_id: key(),
                account_id: account.id.clone(),
                meter_code: "tokens".into(),
                quantity: quantity.into(),
                ..Default::default()
            })
            .collect()
    };
    let mut api = metering_client(metering.address(), &api_key).await;
    // Metering learns the account while the wallet is there.
    api.ingest_events(pb::IngestEventsRequest { events: batch("1"), asynchronous: false }).await.unwrap();
    let mut batches = Vec::new();
    wallet.terminate().await;
    for _ in 0..3 {
        let events = batch("3");
        let results = api
            .ingest_events(pb::IngestEventsRequest { events: events.clone(), asynchronous: true })
            .await
            .unwrap()
            .into_inner()
            .results;
        assert!(results.iter().all(|result| result.status == i32::from(pb::EventStatus::Accepted)));
        batches.push(events);
    }
    metering.kill().await;
    wallet.start(&environment).await;
    metering.start(&environment).await;
    // Then a stream of accepted batches with metering killed under it.
    let sender = {
        let mut api = metering_client(metering.address(), &api_key).await;
        let stream: Vec<Vec<pb::UsageEvent>> = (0..40).map(|_| batch("3")).collect();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for events in stream {
                sent.push(events.clone());
                if api.ingest_events(pb::IngestEventsRequest { events, asynchronous: true }).await.is_err() {
                    break;
                }
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    metering.kill().await;
    batches.extend(sender.await.unwrap());
    metering.start(&environment).await;
    let mut api = metering_client(metering.address(), &api_key).await;
    // Every batch sent again until each event is charged: each is stored once.
    let mut amounts: HashMap<String, Decimal> = HashMap::new();
    for _ in 0..150 {
        amounts.clear();
        let mut all_charged = true;
        for events in &batches {
            let results = match api
                .ingest_events(pb::IngestEventsRequest { events: events.clone(), asynchronous: false })
                .await
            {
                Ok(response) => response.into_inner().results,
                Err(status) if matches!(status.code(), tonic::Code::Aborted | tonic::Code::Unavailable) => {
                    all_charged = false;
                    continue;
                }
                Err(status) => panic!("re-sending a batch failed: {status:?}"),
            };
            for result in results {
                let status = if result.status == i32::from(pb::EventStatus::Duplicate) {
                    result.original_status
                } else {
                    result.status
                };
                all_charged &= status == i32::from(pb::EventStatus::Charged);
                amounts.insert(result.event_id.clone(), d(&result.amount));
            }
        }
        if all_charged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let events = batches.iter().map(Vec::len).sum::<usize>();
    assert_eq!(amounts.len(), events);
    let charged: Decimal = amounts.values().sum();
    assert_eq!(charged, Decimal::new(3, 2) * Decimal::from(events as u64));
    let entries = ledger(&wallet_client, &account).await;
    let debits: Vec<&wallet_pb::LedgerEntry> =
        entries.iter().filter(|entry| entry.kind == i32::from(wallet_pb::EntryKind::Debit)).collect();
    let mut lines: HashMap<&str, usize> = HashMap::new();
    for entry in &debits {
        lines.insert(
            entry.correlation_id.as_str(),
            entry.metadata.get("events").and_then(|n| n.parse().ok()).unwrap_or(0),
        );
    }
    assert_eq!(lines.values().sum::<usize>(), events + BATCH, "every accepted event debited exactly once");
    let debited: Decimal = debits.iter().map(|entry| -d(&entry.amount)).sum();
    assert_eq!(
        debited,
        charged + Decimal::new(1, 2) * Decimal::from(BATCH as u64),
        "the wallet's debits equal the charges"
    );
    assert_books_balance(&wallet_client, &account).await;
    metering.terminate().await;
    wallet.terminate().await;
    for database in databases {
        database.drop_database().await;
    }
}

async fn the_ingest_command_reads_csv_and_ndjson_and_sums_up(backend: Backend) {
    let Some(Running { environment, mut wallet, mut metering, api_key, wallet_client, account, databases }) =
        start(backend).await
    else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("reservoir-ingest-{}", key()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("events.csv");
    let id = &account.id;
    let now = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    std::fs::write(
        &csv,
        format!(
            "event_id,account_id,meter_code,quantity,timestamp,dim.model\n\
             e1,{id},tokens,100,,large\n\
             e2,{id},tokens,50,{now},\n\
             e1,{id},tokens,100,,large\n\
             e3,{id},nope,1,,\n"
        ),
    )
    .unwrap();
    let ndjson = dir.join("events.ndjson");
    std::fs::write(
        &ndjson,
        format!(
            "{{\"event_id\":\"e4\",\"account_id\":\"{id}\",\"meter_code\":\"tokens\",\"quantity\":25,\"dimensions\":{{\"model\":\"small\"}}}}\n\
             {{\"event_id\":\"e1\",\"account_id\":\"{id}\",\"meter_code\":\"tokens\",\"quantity\":\"100\"}}\n"
        ),
    )
    .unwrap();
    let run = |file: std::path::PathBuf| {
        let mut command = environment.command(&["ingest", file.to_str().unwrap(), "--batch-size", "2"]);
        command
            .env("RESERVOIR_API_KEY", &api_key)
            .env("RESERVOIR_METERING_ENDPOINT", format!("http://{}", metering.address()));
        command
    };
    let output = run(csv).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary = String::from_utf8(output.stdout).unwrap();
    assert!(summary.contains("events     4"), "{summary}");
    assert!(summary.contains("charged    2 (amount 1.5"), "{summary}");
    assert!(summary.contains("duplicate  1"), "{summary}");
    assert!(summary.contains("invalid    1"), "{summary}");
    assert!(summary.contains("e3: meter_code UNKNOWN_METER"), "{summary}");
    let output = run(ndjson).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary = String::from_utf8(output.stdout).unwrap();
    assert!(summary.contains("charged    1 (amount 0.25"), "{summary}");
    assert!(summary.contains("duplicate  1"), "{summary}");
    assert_eq!(available(&wallet_client, &account).await, d("999998.25"));
    // A file of which nothing is taken fails, after its summary.
    let rejected = dir.join("rejected.csv");
    std::fs::write(&rejected, format!("event_id,account_id,meter_code,quantity\nr1,{id},nope,1\nr2,{id},nope,2\n"))
        .unwrap();
    let output = run(rejected).output().await.unwrap();
    assert!(!output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    assert!(String::from_utf8_lossy(&output.stdout).contains("invalid    2"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no event was accepted"));
    metering.terminate().await;
    wallet.terminate().await;
    for database in databases {
        database.drop_database().await;
    }
}

/// Meters and prices made with the CLI price usage as they say: a COUNT
/// meter in graduated tiers with a dimension's own price. A malformed tier
/// is refused naming its flag, and an unreachable service names its address.
async fn meters_and_prices_are_made_with_the_cli(backend: Backend) {
    let Some(Running { environment, mut wallet, mut metering, api_key, wallet_client, account, databases }) =
        start(backend).await
    else {
        return;
    };
    let endpoint = format!("http://{}", metering.address());
    let run = |arguments: &[&str]| {
        let mut command = environment.command(arguments);
        command.env("RESERVOIR_API_KEY", &api_key).env("RESERVOIR_METERING_ENDPOINT", &endpoint);
        command
    };
    let succeeded = |output: std::process::Output| {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let created = succeeded(
        run(&[
            "meter",
            "create",
            "calls",
            "--unit-name",
            "call",
            "--aggregation",
            "count",
            "--description",
            "API calls",
        ])
        .output()
        .await
        .unwrap(),
    );
    assert!(created.contains("calls") && created.contains("COUNT"), "{created}");
    let users = ["meter", "create", "users", "--unit-name", "user", "--aggregation", "unique-count"];
    let refused = run(&users).output().await.unwrap();
    assert!(!refused.status.success(), "a distinct count needs its dimension");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("value_dimension"));
    let users = [&users[..], &["--value-dimension", "user"]].concat();
    succeeded(run(&users).output().await.unwrap());
    let listed: serde_json::Value =
        serde_json::from_str(&succeeded(run(&["meter", "list", "--json"]).output().await.unwrap())).unwrap();
    let codes: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|meter| (meter["code"].as_str().unwrap(), meter["aggregation"].as_str().unwrap()))
        .collect();
    assert!(codes.contains(&("calls", "COUNT")) && codes.contains(&("tokens", "SUM")), "{codes:?}");
    assert!(codes.contains(&("users", "UNIQUE_COUNT")), "{codes:?}");
    let users = listed.as_array().unwrap().iter().find(|meter| meter["code"] == "users").unwrap();
    assert_eq!(users["value_dimension"], "user");

    let refused = run(&["price", "set", "calls", "--tier", "0.5"]).output().await.unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--tier"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    succeeded(
        run(&["price", "set", "calls", "--tier", "2:0.5", "--tier", ":0.25", "--override", "region=eu:3"])
            .output()
            .await
            .unwrap(),
    );
    let schedule: serde_json::Value =
        serde_json::from_str(&succeeded(run(&["price", "get", "calls", "--json"]).output().await.unwrap())).unwrap();
    let tiers = &schedule[0]["tiers"];
    assert_eq!((tiers[0]["up_to"].as_str(), tiers[0]["unit_price"].as_str()), (Some("2"), Some("0.5")), "{schedule}");
    assert_eq!((tiers[1]["up_to"].as_str(), tiers[1]["unit_price"].as_str()), (Some(""), Some("0.25")), "{schedule}");
    assert_eq!(schedule[0]["overrides"][0]["key"], "region", "{schedule}");

    // Three calls in the tiers (0.5, 0.5, 0.25) and one from the EU at its own price.
    let mut api = metering_client(metering.address(), &api_key).await;
    let call = |region: Option<&str>| pb::UsageEvent {
        event_id: key(),
        account_id: account.id.clone(),
        meter_code: "calls".into(),
        dimensions: region.map(|region| [("region".to_owned(), region.to_owned())].into()).unwrap_or_default(),
        ..Default::default()
    };
    let events = vec![call(None), call(None), call(None), call(Some("eu"))];
    let results = api.ingest_events(pb::IngestEventsRequest { events, asynchronous: false }).await.unwrap();
    let amounts: Vec<String> = results.into_inner().results.iter().map(|result| result.amount.clone()).collect();
    assert_eq!(amounts, vec!["0.5", "0.5", "0.25", "3"]);
    assert_eq!(available(&wallet_client, &account).await, d("999995.75"));

    let unreachable = run(&["price", "get", "calls", "--endpoint", "http://127.0.0.1:9"]).output().await.unwrap();
    assert!(!unreachable.status.success());
    let said = String::from_utf8_lossy(&unreachable.stderr);
    assert!(said.contains("127.0.0.1:9") && said.contains("reservoir up"), "{said}");
    metering.terminate().await;
    wallet.terminate().await;
    for database in databases {
        database.drop_database().await;
    }
}

reservoir_testing::each_backend!(
    meters_and_prices_are_made_with_the_cli,
    the_ingest_command_reads_csv_and_ndjson_and_sums_up,
    metering_killed_mid_ingest_debits_every_event_once,
    metering_killed_before_accepted_usage_is_drawn_loses_and_doubles_nothing,
);
