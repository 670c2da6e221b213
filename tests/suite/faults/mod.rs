//! The fault harness. Two replicas of each of the five services run as
//! `reservoir serve` processes on a PostgreSQL cluster of the harness's own
//! (initdb in a temporary folder, its own port), the wallets and meterings
//! reaching the database through TCP proxies the harness controls. Clients
//! debit, grant, transfer, ingest usage and start paid top-ups, every call
//! under an idempotency key and, when its
//! outcome is unknown (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, no answer),
//! sent again with the same key until it is known. Meanwhile the harness, one
//! fault per cycle: SIGKILLs and restarts a wallet, metering, payments or
//! orchestrator replica or the whole database, SIGSTOPs a wallet for two
//! seconds, stops one with SIGTERM and starts it again, and cuts the network
//! for three seconds between a service and the database, between metering
//! and its wallet, or between the orchestrator and its wallet.
//!
//! Then it checks what a bank would: no call answered INTERNAL; every
//! acknowledged key applied exactly once (one entry of its kind, none for a
//! refused one, none nobody asked for); each balance equal to its grants
//! less its debits and transfers, and to the sum of its entries; no balance
//! below its floor; every usage event charged exactly once; every top-up
//! acknowledged, none nobody started, each with one grant of its credits or
//! none (one when it succeeded, none when it failed); and every
//! balance read of an account that one client debits, one debit at a time,
//! showing exactly the debits acknowledged before it, through either
//! replica, whatever fault came between (no read back in time). It prints the
//! cycles survived by fault kind, the calls acknowledged, the violations,
//! and the median and worst time to recover.
//!
//! `make faults` runs 500 cycles (`RESERVOIR_FAULT_CYCLES`); `make test`
//! runs 22, each kind twice.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reservoir_proto::metering as metering_pb;
use reservoir_proto::orchestrator as orchestrator_pb;
use reservoir_proto::orchestrator::top_up_service_client::TopUpServiceClient;
use reservoir_proto::payments as payments_pb;
use reservoir_proto::payments::payments_service_client::PaymentsServiceClient;
use reservoir_proto::wallet as pb;
use reservoir_testing::proxy::TcpProxy;
use reservoir_testing::wallet::*;
use reservoir_testing::{BearerKey, TestDatabase};
use rust_decimal::Decimal;
use tokio::process::{Child, Command};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::metering::{MeteringClient, metering_client, price_tokens};
use crate::process::{Environment, ServiceProcess, is_serving};

mod clients;
mod cluster;

use self::clients::*;
use self::cluster::*;

const CYCLES_IN_MAKE_TEST: usize = 22;
/// Prepaid accounts the debits, grants and transfers move money between.
const ACCOUNTS: usize = 6;
/// What each of them is granted first.
const OPENING: &str = "100.00";
/// The opening balance of the account whose reads are checked: enough never to refuse a debit.
const WATCHED_OPENING: &str = "1000000.00";
/// Usage: events of one token at 0.01, on accounts of their own.
const USAGE_ACCOUNTS: usize = 2;
const USAGE_BATCH: usize = 5;
/// Accounts topped up by card.
const TOP_UP_ACCOUNTS: usize = 2;
/// How long one try of a call may take before its outcome counts as unknown.
const TRY_TIMEOUT: Duration = Duration::from_secs(5);

/// One replica: its wallet and metering processes, their proxies to the
/// database, and the proxy metering reaches its wallet through.
struct Replica {
    environment: Environment,
    wallet: ServiceProcess,
    metering: ServiceProcess,
    invoicing: ServiceProcess,
    payments: ServiceProcess,
    orchestrator: ServiceProcess,
    wallet_proxy: TcpProxy,
    metering_proxy: TcpProxy,
    metering_to_wallet: TcpProxy,
    orchestrator_to_wallet: TcpProxy,
}

type Orchestrator = TopUpServiceClient<InterceptedService<Channel, BearerKey>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillWallet,
    KillMetering,
    KillDatabase,
    PauseWallet,
    TerminateWallet,
    CutWalletFromDatabase,
    CutMeteringFromDatabase,
    CutMeteringFromWallet,
    KillPayments,
    KillOrchestrator,
    CutOrchestratorFromWallet,
}

const FAULTS: [Fault; 11] = [
    Fault::KillWallet,
    Fault::KillMetering,
    Fault::KillDatabase,
    Fault::PauseWallet,
    Fault::TerminateWallet,
    Fault::CutWalletFromDatabase,
    Fault::CutMeteringFromDatabase,
    Fault::CutMeteringFromWallet,
    Fault::KillPayments,
    Fault::KillOrchestrator,
    Fault::CutOrchestratorFromWallet,
];

/// SIGKILL, half a second down, and a start on the same address.
async fn kill_and_restart(process: &mut ServiceProcess, environment: &Environment) {
    process.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    process.start(environment).await;
}

/// The network through `proxy` cut for three seconds.
async fn cut_for_a_while(proxy: &TcpProxy) {
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();
}

/// How long, from the end of a fault, until the service it hit reports
/// SERVING again (health follows the database) and the replica's wallet
/// answers a read.
async fn recovered(service: SocketAddr, name: &str, wallet: &Client, account: &str) -> Duration {
    let started = Instant::now();
    loop {
        let serving = async {
            is_serving(service, name).await
                && wallet.clone().get_balance(pb::GetBalanceRequest { account_id: account.to_owned() }).await.is_ok()
        };
        if let Ok(true) = tokio::time::timeout(Duration::from_secs(2), serving).await {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{name} not recovered within 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_double_and_invent_no_money() {
    let Some(mut cluster) = Cluster::create().await else {
        return;
    };
    let cycles: usize = std::env::var("RESERVOIR_FAULT_CYCLES")
        .ok()
        .and_then(|cycles| cycles.parse().ok())
        .unwrap_or(CYCLES_IN_MAKE_TEST);
    for name in ["wallet", "metering", "invoicing", "payments", "orchestrator"] {
        cluster.create_database(name).await;
    }
    let invoicing_database = TestDatabase::postgres_at(cluster.url("invoicing"), "invoicing");
    let payments_database = TestDatabase::postgres_at(cluster.url("payments"), "payments");
    let orchestrator_database = TestDatabase::postgres_at(cluster.url("orchestrator"), "orchestrator");

    // Two replicas of each service, every process on a proxy of its own to the database.
    let mut replicas: Vec<Replica> = Vec::new();
    for index in 0..2 {
        let wallet_proxy = TcpProxy::start(cluster.address()).await;
        let metering_proxy = TcpProxy::start(cluster.address()).await;
        let wallet_database = TestDatabase::postgres_at(
            cluster.url("wallet").replace(&cluster.address().to_string(), &wallet_proxy.address().to_string()),
            "wallet",
        );
        let metering_database = TestDatabase::postgres_at(
            cluster.url("metering").replace(&cluster.address().to_string(), &metering_proxy.address().to_string()),
            "metering",
        );
        let mut environment = match replicas.first() {
            None => Environment::new(&wallet_database, Some(&metering_database))
                .with_billing(&invoicing_database, &payments_database)
                .with_orchestrator(&orchestrator_database),
            Some(first) => first.environment.replica(),
        };
        environment.set("RESERVOIR__WALLET__DATABASE_URL", &wallet_database.url);
        environment.set("RESERVOIR__METERING__DATABASE_URL", &metering_database.url);
        environment.set("RESERVOIR__TELEMETRY__LOG_FILTER", "error");
        // Metering calls its wallet (draws, key lookups) through a proxy too.
        let metering_to_wallet = TcpProxy::start(environment.wallet_address).await;
        environment.set("RESERVOIR__METERING__WALLET_ENDPOINT", &format!("http://{}", metering_to_wallet.address()));
        // And the orchestrator its wallet (the grants of top-ups).
        let orchestrator_to_wallet = TcpProxy::start(environment.wallet_address).await;
        environment
            .set("RESERVOIR__ORCHESTRATOR__WALLET_ENDPOINT", &format!("http://{}", orchestrator_to_wallet.address()));
        if index == 0 {
            environment.issue_service_key().await;
        }
        let mut wallet = ServiceProcess::wallet(&environment);
        wallet.start(&environment).await;
        let mut metering = ServiceProcess::metering(&environment);
        metering.start(&environment).await;
        let mut invoicing = ServiceProcess::invoicing(&environment);
        invoicing.start(&environment).await;
        let mut payments = ServiceProcess::payments(&environment);
        payments.start(&environment).await;
        let mut orchestrator = ServiceProcess::orchestrator(&environment);
        orchestrator.start(&environment).await;
        replicas.push(Replica {
            environment,
            wallet,
            metering,
            invoicing,
            payments,
            orchestrator,
            wallet_proxy,
            metering_proxy,
            metering_to_wallet,
            orchestrator_to_wallet,
        });
    }
    let api_key = replicas[0].environment.create_tenant().await;
    let wallets: Vec<Client> = {
        let mut wallets = Vec::new();
        for replica in &replicas {
            wallets.push(client(replica.wallet.address(), &api_key).await);
        }
        wallets
    };
    let meterings: Vec<MeteringClient> = {
        let mut meterings = Vec::new();
        for replica in &replicas {
            meterings.push(metering_client(replica.metering.address(), &api_key).await);
        }
        meterings
    };
    price_tokens(&mut meterings[0].clone()).await;
    let mut orchestrators: Vec<Orchestrator> = Vec::new();
    for replica in &replicas {
        let channel = channel(replica.orchestrator.address()).await;
        orchestrators.push(TopUpServiceClient::with_interceptor(channel, BearerKey::new(&api_key)));
    }
    // Accounts topped up by card, each with a card that always pays.
    let mut top_up_accounts: Vec<(String, String)> = Vec::new();
    let mut payments = PaymentsServiceClient::with_interceptor(
        channel(replicas[0].payments.address()).await,
        BearerKey::new(&api_key),
    );
    for _ in 0..TOP_UP_ACCOUNTS {
        let account = open_funded_account(&wallets[0], "0").await;
        let card = payments
            .add_payment_method(payments_pb::AddPaymentMethodRequest {
                account_id: account.id.clone(),
                kind: payments_pb::PaymentMethodKind::Card.into(),
                gateway_token: "tok_succeed".into(),
                label: "card".into(),
                idempotency_key: uuid::Uuid::now_v7().to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .payment_method
            .unwrap()
            .id;
        top_up_accounts.push((account.id, card));
    }

    let told = Arc::new(Mutex::new(Told::default()));
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        accounts.push(open_in_the_books(&wallets[0], &told, OPENING).await);
    }
    let mut usage_accounts = Vec::new();
    for _ in 0..USAGE_ACCOUNTS {
        usage_accounts.push(open_funded_account(&wallets[0], "1000000").await);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ids: Vec<String> = accounts.iter().map(|account| account.id.clone()).collect();
    let usage_ids: Vec<String> = usage_accounts.iter().map(|account| account.id.clone()).collect();
    let mut load = Vec::new();
    for _ in 0..3 {
        load.push(tokio::spawn(move_money(wallets.clone(), ids.clone(), told.clone(), stop.clone())));
    }
    load.push(tokio::spawn(use_tokens(meterings.clone(), usage_ids, told.clone(), stop.clone())));
    load.push(tokio::spawn(top_up(orchestrators.clone(), top_up_accounts.clone(), told.clone(), stop.clone())));
    // One account only debited, its balance read after every debit; in the
    // books like the others.
    let watched = open_in_the_books(&wallets[0], &told, WATCHED_OPENING).await;
    let opening: Decimal = WATCHED_OPENING.parse().unwrap();
    load.push(tokio::spawn(debit_and_read(wallets.clone(), watched.id.clone(), opening, told.clone(), stop.clone())));
    accounts.push(watched);

    let started = Instant::now();
    let mut survived: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut recoveries: Vec<Duration> = Vec::new();
    for cycle in 0..cycles {
        let pause = Duration::from_millis(rand::rng().random_range(300..1_500));
        tokio::time::sleep(pause).await;
        let fault = FAULTS[cycle % FAULTS.len()];
        let replica = cycle / FAULTS.len() % replicas.len();
        let Replica {
            environment,
            wallet,
            metering,
            payments,
            orchestrator,
            wallet_proxy,
            metering_proxy,
            metering_to_wallet,
            orchestrator_to_wallet,
            ..
        } = &mut replicas[replica];
        match fault {
            Fault::KillWallet => {
                kill_and_restart(wallet, environment).await;
            }
            Fault::KillMetering => {
                kill_and_restart(metering, environment).await;
            }
            Fault::KillDatabase => {
                cluster.kill().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                cluster.start().await;
            }
            Fault::PauseWallet => {
                wallet.signal("STOP").await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                wallet.signal("CONT").await;
            }
            Fault::TerminateWallet => {
                let status = wallet.terminate().await;
                assert!(status.success(), "a wallet stopped with SIGTERM exits cleanly: {status}");
                wallet.start(environment).await;
            }
            Fault::CutWalletFromDatabase => {
                cut_for_a_while(wallet_proxy).await;
            }
            Fault::CutMeteringFromDatabase => {
                cut_for_a_while(metering_proxy).await;
            }
            Fault::CutMeteringFromWallet => {
                cut_for_a_while(metering_to_wallet).await;
            }
            Fault::KillPayments => {
                kill_and_restart(payments, environment).await;
            }
            Fault::KillOrchestrator => {
                kill_and_restart(orchestrator, environment).await;
            }
            Fault::CutOrchestratorFromWallet => {
                cut_for_a_while(orchestrator_to_wallet).await;
            }
        }
        let (service, name) = match fault {
            Fault::KillMetering | Fault::CutMeteringFromDatabase | Fault::CutMeteringFromWallet => {
                (replicas[replica].metering.address(), "reservoir.metering.v1.MeteringService")
            }
            Fault::KillPayments => (replicas[replica].payments.address(), "reservoir.payments.v1.PaymentsService"),
            Fault::KillOrchestrator | Fault::CutOrchestratorFromWallet => {
                (replicas[replica].orchestrator.address(), "reservoir.orchestrator.v1.TopUpService")
            }
            _ => (replicas[replica].wallet.address(), "reservoir.wallet.v1.WalletService"),
        };
        recoveries.push(recovered(service, name, &wallets[replica], &accounts[0].id).await);
        *survived.entry(fault).or_default() += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    let ran_for = started.elapsed();

    // The books, read through the first replica once every usage event is drawn.
    let mut violations: Vec<String> = Vec::new();
    let told = std::mem::take(&mut *told.lock().unwrap());
    violations.extend(told.internal.iter().map(|status| format!("answered INTERNAL: {status}")));
    violations.extend(told.stale_reads.iter().cloned());
    let wallet = &wallets[0];
    let price: Decimal = "0.01".parse().unwrap();
    let charged_for = Decimal::from(told.events) * price;
    let drawn_by = Instant::now() + Duration::from_secs(90);
    let usage_debited = loop {
        let mut debited = Decimal::ZERO;
        for account in &usage_accounts {
            debited -= ledger(wallet, account)
                .await
                .iter()
                .filter(|entry| entry.kind == i32::from(pb::EntryKind::Debit))
                .map(|entry| d(&entry.amount))
                .sum::<Decimal>();
        }
        if debited >= charged_for || Instant::now() > drawn_by {
            break debited;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if usage_debited != charged_for {
        violations
            .push(format!("{} usage events stored, {charged_for} to charge, {usage_debited} debited", told.events));
    }

    // Every top-up acknowledged and none other; one grant of its credits when
    // it succeeded, none when it failed, never two; each balance their sum.
    let mut top_ups_listed = 0;
    let mut grants_made = 0;
    for (account, _) in &top_up_accounts {
        let top_ups = settled_top_ups(&orchestrators[0], account).await;
        top_ups_listed += top_ups.len();
        let grants = wallet
            .clone()
            .list_grants(pb::ListGrantsRequest { account_id: account.clone(), include_inactive: true })
            .await
            .unwrap()
            .into_inner()
            .grants;
        grants_made += grants.len();
        let mut granted = Decimal::ZERO;
        for grant in &grants {
            granted += d(&grant.original_amount);
            if !top_ups.iter().any(|top_up| top_up.invoice_id == grant.source_reference) {
                violations.push(format!("account {account}: grant {} belongs to no top-up", grant.id));
            }
        }
        for top_up in &top_ups {
            match told.top_ups.get(&top_up.id) {
                Some((asked_on, credits)) if asked_on == account && d(&top_up.credits) == *credits => {}
                other => violations.push(format!("top-up {}: nobody was told of it as it is ({other:?})", top_up.id)),
            }
            let of_it: Vec<&pb::Grant> =
                grants.iter().filter(|grant| grant.source_reference == top_up.invoice_id).collect();
            let status = orchestrator_pb::TopUpStatus::try_from(top_up.status).unwrap_or_default();
            let wanted = match status {
                orchestrator_pb::TopUpStatus::Succeeded => 1..=1,
                orchestrator_pb::TopUpStatus::Failed => 0..=0,
                _ => 0..=1,
            };
            if !wanted.contains(&of_it.len()) {
                violations.push(format!("top-up {} {status:?}: {} grants", top_up.id, of_it.len()));
            }
            if of_it.iter().any(|grant| d(&grant.original_amount) != d(&top_up.credits)) {
                violations.push(format!("top-up {}: a grant of other than its {} credits", top_up.id, top_up.credits));
            }
        }
        let available = d(&balance(wallet, &pb::Account { id: account.clone(), ..Default::default() }).await.available);
        if available != granted {
            violations.push(format!("account {account}: {available} available, its top-ups granted {granted}"));
        }
    }
    if top_ups_listed != told.top_ups.len() {
        violations.push(format!("{} top-ups acknowledged, {top_ups_listed} listed", told.top_ups.len()));
    }

    let mut expected: HashMap<String, Decimal> = HashMap::new();
    // What each key's entries must come to, by account and kind (a change
    // touching several grants writes an entry for each).
    let mut wanted: HashMap<String, Moves> = HashMap::new();
    for (key, applied) in &told.applied {
        let moves: Vec<(&String, pb::EntryKind, Decimal)> = match applied {
            Applied::Grant { account, amount } => vec![(account, pb::EntryKind::Grant, *amount)],
            Applied::Debit { account, amount } => vec![(account, pb::EntryKind::Debit, -amount)],
            Applied::Transfer { from, to, amount } => {
                vec![(from, pb::EntryKind::TransferOut, -amount), (to, pb::EntryKind::TransferIn, *amount)]
            }
        };
        for (account, kind, amount) in moves {
            *expected.entry(account.clone()).or_default() += amount;
            *wanted.entry(key.clone()).or_default().entry((account.clone(), kind as i32)).or_default() += amount;
        }
    }
    let mut found: HashMap<String, Moves> = HashMap::new();
    for account in &accounts {
        let entries = ledger(wallet, account).await;
        let sum: Decimal = entries.iter().filter(|entry| moves_money(entry)).map(|entry| d(&entry.amount)).sum();
        let balance = balance(wallet, account).await;
        let available = d(&balance.available);
        let wanted_balance = expected.get(&account.id).copied().unwrap_or_default();
        if available != wanted_balance {
            violations.push(format!("account {}: {available} available, {wanted_balance} acknowledged", account.id));
        }
        if available != sum {
            violations.push(format!("account {}: {available} available, its entries sum to {sum}", account.id));
        }
        if available < Decimal::ZERO {
            violations.push(format!("account {}: {available}, below its floor of 0", account.id));
        }
        for entry in entries {
            let moved = found.entry(entry.idempotency_key.clone()).or_default();
            *moved.entry((account.id.clone(), entry.kind)).or_default() += d(&entry.amount);
        }
    }
    for (key, wanted_moves) in wanted {
        let moves = found.remove(&key).unwrap_or_default();
        if moves != wanted_moves {
            violations.push(format!("key {key}: acknowledged as {wanted_moves:?}, the books hold {moves:?}"));
        }
    }
    for key in &told.refused {
        if let Some(entries) = found.remove(key) {
            violations.push(format!("key {key}: refused, yet the books hold {entries:?}"));
        }
    }
    for (key, entries) in found {
        violations.push(format!("key {key}: nobody was told of {entries:?}"));
    }

    recoveries.sort();
    let median = recoveries.get(recoveries.len() / 2).copied().unwrap_or_default();
    let worst = recoveries.last().copied().unwrap_or_default();
    println!(
        "fault harness: {cycles} cycles in {:.0} s ({}); {} changes acknowledged, {} refused, {} usage events, \
         {} top-ups ({} refused, {grants_made} granted); {} balance reads checked; recovery median {} ms, \
         worst {} ms; {} violations",
        ran_for.as_secs_f64(),
        survived.iter().map(|(fault, count)| format!("{fault:?} {count}")).collect::<Vec<_>>().join(", "),
        told.applied.len(),
        told.refused.len(),
        told.events,
        told.top_ups.len(),
        told.top_ups_refused,
        told.reads,
        median.as_millis(),
        worst.as_millis(),
        violations.len(),
    );
    for violation in &violations {
        println!("VIOLATION {violation}");
    }
    assert!(violations.is_empty(), "{} violations (above)", violations.len());
    assert!(told.applied.len() > ACCOUNTS, "the load made changes");
    assert!(told.reads > 0, "balances were read");
    assert!(told.events > 0, "usage was ingested");
    assert!(grants_made > 0, "top-ups were granted");

    for replica in &mut replicas {
        for process in [
            &mut replica.orchestrator,
            &mut replica.payments,
            &mut replica.invoicing,
            &mut replica.metering,
            &mut replica.wallet,
        ] {
            process.kill().await;
        }
    }
}
