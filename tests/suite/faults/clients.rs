//! The harness's clients: what they were told, each call sent again under
//! its key until its outcome is known, and the load they put on the suite.

use super::*;

/// What the clients were told, to check the books against.
#[derive(Default)]
pub(super) struct Told {
    /// Acknowledged changes by key: what kind of entry each made, on which accounts, for how much.
    pub(super) applied: HashMap<String, Applied>,
    /// Keys refused for good: no entry may carry them.
    pub(super) refused: Vec<String>,
    /// Calls answered INTERNAL.
    pub(super) internal: Vec<String>,
    /// Usage events stored (each answered, in one try or another).
    pub(super) events: u64,
    /// Balance reads answered, and those that did not show exactly the
    /// debits acknowledged before them.
    pub(super) reads: u64,
    pub(super) stale_reads: Vec<String>,
    /// Top-ups acknowledged: their ids, with the account and credits asked for.
    pub(super) top_ups: HashMap<String, (String, Decimal)>,
    /// Top-ups refused for good.
    pub(super) top_ups_refused: u64,
}

#[derive(Clone, Debug)]
pub(super) enum Applied {
    Grant { account: String, amount: Decimal },
    Debit { account: String, amount: Decimal },
    Transfer { from: String, to: String, amount: Decimal },
}

/// Money moved under one key: by account and entry kind, the sum of its entries.
pub(super) type Moves = BTreeMap<(String, i32), Decimal>;

/// What one try of a call came to.
pub(super) enum Outcome<T> {
    Done(T),
    Refused,
    Internal(String),
    Unknown,
}

pub(super) fn outcome<T>(
    tried: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
) -> Outcome<T> {
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
pub(super) async fn until_known<C, T, F, Fut>(clients: &[C], mut call: F) -> Outcome<T>
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
pub(super) async fn settle<T, F, Fut>(wallets: &[Client], told: &Mutex<Told>, key: &str, applied: Applied, call: F)
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
pub(super) fn jitter() -> Duration {
    Duration::from_millis(rand::rng().random_range(50..250))
}

pub(super) fn cents(low: u32, high: u32) -> Decimal {
    Decimal::new(i64::from(rand::rng().random_range(low..=high)), 2)
}

/// Debits, grants and transfers between the accounts until `stop`.
pub(super) async fn move_money(
    wallets: Vec<Client>,
    accounts: Vec<String>,
    told: Arc<Mutex<Told>>,
    stop: Arc<AtomicBool>,
) {
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
pub(super) async fn open_in_the_books(wallet: &Client, told: &Mutex<Told>, opening: &str) -> pb::Account {
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
pub(super) async fn debit_and_read(
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
pub(super) async fn use_tokens(
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
pub(super) async fn top_up(
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
            bonus: None,
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
pub(super) async fn settled_top_ups(orchestrator: &Orchestrator, account: &str) -> Vec<orchestrator_pb::TopUp> {
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
