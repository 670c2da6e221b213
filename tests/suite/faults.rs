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

/// A PostgreSQL cluster of the harness's own, killed and restarted at will.
struct Cluster {
    binaries: PathBuf,
    directory: PathBuf,
    port: u16,
    /// The postgres user's ids when the harness runs as root (PostgreSQL
    /// refuses to run as root).
    user: Option<(u32, u32)>,
    postmaster: Option<Child>,
}

impl Cluster {
    /// Initialises a cluster in a temporary folder; `None` (loudly) where
    /// PostgreSQL's programs are not installed, outside CI.
    async fn create() -> Option<Self> {
        let binaries = match Command::new("pg_config").arg("--bindir").output().await {
            Ok(output) if output.status.success() => PathBuf::from(String::from_utf8(output.stdout).unwrap().trim()),
            _ => {
                assert!(std::env::var("CI").is_err(), "the fault harness needs PostgreSQL's programs (pg_config)");
                eprintln!("!!! pg_config not found: the fault harness did NOT run");
                return None;
            }
        };
        let directory = std::env::temp_dir().join(format!("reservoir-faults-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&directory).unwrap();
        let user = if is_root() { Some(postgres_ids().await) } else { None };
        if let Some((uid, gid)) = user {
            let owned = Command::new("chown").arg(format!("{uid}:{gid}")).arg(&directory).status().await.unwrap();
            assert!(owned.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut initdb = Command::new(binaries.join("initdb"));
        initdb.args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"]).arg(directory.join("data"));
        let initialised = as_user(&mut initdb, user).output().await.unwrap();
        assert!(initialised.status.success(), "initdb: {}", String::from_utf8_lossy(&initialised.stderr));
        let mut cluster = Self { binaries, directory, port, user, postmaster: None };
        cluster.start().await;
        Some(cluster)
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the server (recovering from a crash if it was killed) and waits
    /// until it takes connections.
    async fn start(&mut self) {
        let mut postgres = Command::new(self.binaries.join("postgres"));
        postgres
            .arg("-D")
            .arg(self.directory.join("data"))
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.directory.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own process group: a kill takes the backends with it, as a
            // crash of the machine would.
            .process_group(0)
            .kill_on_drop(true);
        self.postmaster = Some(as_user(&mut postgres, self.user).spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(self.address()).await.is_err()
            || sea_orm::Database::connect(self.url("postgres")).await.is_err()
        {
            assert!(Instant::now() < deadline, "PostgreSQL did not start within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL to the server and every backend at once.
    async fn kill(&mut self) {
        let mut postmaster = self.postmaster.take().expect("a running server");
        let group = postmaster.id().expect("a pid").to_string();
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status().await;
        let _ = postmaster.wait().await;
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    async fn create_database(&self, name: &str) {
        use sea_orm::ConnectionTrait;
        let connection = sea_orm::Database::connect(self.url("postgres")).await.unwrap();
        connection.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
        connection.close().await.unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(postmaster) = &self.postmaster
            && let Some(group) = postmaster.id()
        {
            let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status();
        }
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|output| output.stdout.starts_with(b"0\n"))
}

async fn postgres_ids() -> (u32, u32) {
    let id = |flag: &'static str| async move {
        let output = Command::new("id").args([flag, "postgres"]).output().await.unwrap();
        assert!(output.status.success(), "running as root needs a postgres user for PostgreSQL");
        String::from_utf8(output.stdout).unwrap().trim().parse::<u32>().unwrap()
    };
    (id("-u").await, id("-g").await)
}

fn as_user(command: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}

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

/// What the clients were told, to check the books against.
#[derive(Default)]
struct Told {
    /// Acknowledged changes by key: what kind of entry each made, on which accounts, for how much.
    applied: HashMap<String, Applied>,
    /// Keys refused for good: no entry may carry them.
    refused: Vec<String>,
    /// Calls answered INTERNAL.
    internal: Vec<String>,
    /// Usage events stored (each answered, in one try or another).
    events: u64,
    /// Balance reads answered, and those that did not show exactly the
    /// debits acknowledged before them.
    reads: u64,
    stale_reads: Vec<String>,
    /// Top-ups acknowledged: their ids, with the account and credits asked for.
    top_ups: HashMap<String, (String, Decimal)>,
    /// Top-ups refused for good.
    top_ups_refused: u64,
}

#[derive(Clone, Debug)]
enum Applied {
    Grant { account: String, amount: Decimal },
    Debit { account: String, amount: Decimal },
    Transfer { from: String, to: String, amount: Decimal },
}

/// Money moved under one key: by account and entry kind, the sum of its entries.
type Moves = BTreeMap<(String, i32), Decimal>;

/// What one try of a call came to.
enum Outcome<T> {
    Done(T),
    Refused,
    Internal(String),
    Unknown,
}

fn outcome<T>(tried: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>) -> Outcome<T> {
    match tried {
        Ok(Ok(response)) => Outcome::Done(response.into_inner()),
        // A status made by the client's own transport (it carries the
        // transport's error as its source): the connection was closed under
        // the call, say by a draining server's GOAWAY, which tonic reports as
        // INTERNAL. No service answered, so the outcome is unknown.
        Ok(Err(status)) if std::error::Error::source(&status).is_some() => Outcome::Unknown,
        Ok(Err(status)) => match status.code() {
            Code::Internal | Code::DataLoss => Outcome::Internal(format!("{status:?}")),
            Code::FailedPrecondition | Code::InvalidArgument | Code::NotFound | Code::AlreadyExists => Outcome::Refused,
            _ => Outcome::Unknown,
        },
        Err(_) => Outcome::Unknown,
    }
}

/// Sends a call until its outcome is known, each try through a client of
/// `clients` picked at random (the same request, so the same key).
async fn until_known<C, T, F, Fut>(clients: &[C], mut call: F) -> Outcome<T>
where
    C: Clone,
    F: FnMut(C) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    loop {
        let client = clients[rand::rng().random_range(0..clients.len())].clone();
        match outcome(tokio::time::timeout(TRY_TIMEOUT, call(client)).await) {
            Outcome::Unknown => tokio::time::sleep(jitter()).await,
            known => return known,
        }
    }
}

/// Sends a wallet call with one key until its outcome is known, through
/// either replica, and records what it came to.
async fn settle<T, F, Fut>(wallets: &[Client], told: &Mutex<Told>, key: &str, applied: Applied, call: F)
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let known = until_known(wallets, call).await;
    let mut told = told.lock().unwrap();
    match known {
        Outcome::Done(_) => {
            told.applied.insert(key.to_owned(), applied);
        }
        Outcome::Refused => told.refused.push(key.to_owned()),
        Outcome::Internal(status) => told.internal.push(status),
        Outcome::Unknown => {}
    }
}

/// A wait of 50 to 250 ms before a call is sent again.
fn jitter() -> Duration {
    Duration::from_millis(rand::rng().random_range(50..250))
}

fn cents(low: u32, high: u32) -> Decimal {
    Decimal::new(i64::from(rand::rng().random_range(low..=high)), 2)
}

/// Debits, grants and transfers between the accounts until `stop`.
async fn move_money(wallets: Vec<Client>, accounts: Vec<String>, told: Arc<Mutex<Told>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let key = key();
        let (pick, account, other) = {
            let mut rng = rand::rng();
            (rng.random_range(0..10), rng.random_range(0..accounts.len()), rng.random_range(0..accounts.len()))
        };
        let (account, other) = (accounts[account].clone(), accounts[other].clone());
        match pick {
            0 => {
                let amount = cents(100, 500);
                let request = pb::GrantCreditsRequest {
                    account_id: account.clone(),
                    amount: amount.to_string(),
                    kind: pb::GrantKind::Paid.into(),
                    idempotency_key: key.clone(),
                    ..Default::default()
                };
                let applied = Applied::Grant { account, amount };
                settle(&wallets, &told, &key, applied, |mut wallet| {
                    let request = request.clone();
                    async move { wallet.grant_credits(request).await }
                })
                .await;
            }
            1 | 2 if account != other => {
                let amount = cents(1, 300);
                let request = pb::TransferRequest {
                    from_account_id: account.clone(),
                    to_account_id: other.clone(),
                    amount: amount.to_string(),
                    idempotency_key: key.clone(),
                    ..Default::default()
                };
                let applied = Applied::Transfer { from: account, to: other, amount };
                settle(&wallets, &told, &key, applied, |mut wallet| {
                    let request = request.clone();
                    async move { wallet.transfer(request).await }
                })
                .await;
            }
            _ => {
                let amount = cents(1, 400);
                let request = pb::DebitRequest {
                    account_id: account.clone(),
                    amount: amount.to_string(),
                    idempotency_key: key.clone(),
                    ..Default::default()
                };
                let applied = Applied::Debit { account, amount };
                settle(&wallets, &told, &key, applied, |mut wallet| {
                    let request = request.clone();
                    async move { wallet.debit(request).await }
                })
                .await;
            }
        }
    }
}

/// Opens an account with a paid grant of `opening`, the grant in the books.
async fn open_in_the_books(wallet: &Client, told: &Mutex<Told>, opening: &str) -> pb::Account {
    let account = open_funded_account(wallet, "0").await;
    let key = key();
    let request = pb::GrantCreditsRequest {
        account_id: account.id.clone(),
        amount: opening.into(),
        kind: pb::GrantKind::Paid.into(),
        idempotency_key: key.clone(),
        ..Default::default()
    };
    wallet.clone().grant_credits(request).await.unwrap();
    let amount: Decimal = opening.parse().unwrap();
    told.lock().unwrap().applied.insert(key, Applied::Grant { account: account.id.clone(), amount });
    account
}

/// Debits one account that nothing else touches, one debit at a time, and
/// after each acknowledged debit reads its balance through either replica:
/// every read must show exactly the debits acknowledged before it, never
/// fewer (a read back in time) and never more.
async fn debit_and_read(
    wallets: Vec<Client>,
    account: String,
    opening: Decimal,
    told: Arc<Mutex<Told>>,
    stop: Arc<AtomicBool>,
) {
    let mut acknowledged = Decimal::ZERO;
    while !stop.load(Ordering::SeqCst) {
        let key = key();
        let amount = cents(1, 100);
        let request = pb::DebitRequest {
            account_id: account.clone(),
            amount: amount.to_string(),
            idempotency_key: key.clone(),
            ..Default::default()
        };
        let applied = Applied::Debit { account: account.clone(), amount };
        settle(&wallets, &told, &key, applied, |mut wallet| {
            let request = request.clone();
            async move { wallet.debit(request).await }
        })
        .await;
        if told.lock().unwrap().applied.contains_key(&key) {
            acknowledged += amount;
        }
        let mut wallet = wallets[rand::rng().random_range(0..wallets.len())].clone();
        let read = wallet.get_balance(pb::GetBalanceRequest { account_id: account.clone() });
        if let Ok(Ok(balance)) = tokio::time::timeout(TRY_TIMEOUT, read).await {
            let available: Decimal = balance.into_inner().balance.unwrap().available.parse().unwrap();
            let mut told = told.lock().unwrap();
            told.reads += 1;
            if available != opening - acknowledged {
                told.stale_reads.push(format!(
                    "account {account}: read {available} available after debits of {acknowledged} from {opening}"
                ));
            }
        }
    }
}

/// Ingests batches of usage through either metering replica until `stop`,
/// each batch sent again as it was until it is answered.
async fn use_tokens(
    meterings: Vec<MeteringClient>,
    accounts: Vec<String>,
    told: Arc<Mutex<Told>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let events: Vec<metering_pb::UsageEvent> = (0..USAGE_BATCH)
            .map(|index| metering_pb::UsageEvent {
                event_id: key(),
                account_id: accounts[index % accounts.len()].clone(),
                meter_code: "tokens".into(),
                quantity: "1".into(),
                ..Default::default()
            })
            .collect();
        loop {
            let mut metering = meterings[rand::rng().random_range(0..meterings.len())].clone();
            let request = metering_pb::IngestEventsRequest { events: events.clone(), asynchronous: false };
            match outcome(tokio::time::timeout(TRY_TIMEOUT, metering.ingest_events(request)).await) {
                Outcome::Done(_) => {
                    told.lock().unwrap().events += USAGE_BATCH as u64;
                    break;
                }
                Outcome::Internal(status) => {
                    told.lock().unwrap().internal.push(status);
                    break;
                }
                Outcome::Refused => panic!("a batch of well-formed events was refused"),
                Outcome::Unknown => tokio::time::sleep(jitter()).await,
            }
        }
    }
}

/// Paid top-ups of a few credits on the accounts, each under its own key and
/// sent again with that key, through either orchestrator, until its outcome
/// is known.
async fn top_up(
    orchestrators: Vec<Orchestrator>,
    accounts: Vec<(String, String)>,
    told: Arc<Mutex<Told>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let (account, card) = accounts[rand::rng().random_range(0..accounts.len())].clone();
        let credits = Decimal::from(rand::rng().random_range(1..=5));
        let request = orchestrator_pb::StartTopUpRequest {
            account_id: account.clone(),
            credits: credits.to_string(),
            payment_method_id: card,
            reconcile_later: false,
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            credits_expire_at: None,
        };
        let known = until_known(&orchestrators, |mut orchestrator| {
            let request = request.clone();
            async move { orchestrator.start_top_up(request).await }
        })
        .await;
        match known {
            Outcome::Done(answer) => {
                let id = answer.top_up.map(|top_up| top_up.id).unwrap_or_default();
                told.lock().unwrap().top_ups.insert(id, (account, credits));
            }
            Outcome::Refused => told.lock().unwrap().top_ups_refused += 1,
            Outcome::Internal(status) => told.lock().unwrap().internal.push(status),
            Outcome::Unknown => {}
        }
        let pause = Duration::from_millis(rand::rng().random_range(100..400));
        tokio::time::sleep(pause).await;
    }
}

/// The top-ups of an account, every page of them, every one settled
/// (succeeded, failed or waiting for a person), waiting up to 90 s for
/// those still running. Small pages, so paging is part of every run.
async fn settled_top_ups(orchestrator: &Orchestrator, account: &str) -> Vec<orchestrator_pb::TopUp> {
    let by = Instant::now() + Duration::from_secs(90);
    loop {
        let mut top_ups = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = orchestrator
                .clone()
                .list_top_ups(orchestrator_pb::ListTopUpsRequest {
                    account_id: account.to_owned(),
                    page_size: 20,
                    page_token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            top_ups.extend(page.top_ups);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let running = top_ups.iter().any(|top_up| top_up.status == i32::from(orchestrator_pb::TopUpStatus::Pending));
        if !running || Instant::now() > by {
            return top_ups;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

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
