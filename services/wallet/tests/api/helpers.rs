//! A wallet server on a free port with a database of its own, a tenant, an
//! API key and a client that presents it.

use std::net::SocketAddr;
use std::str::FromStr;

use chrono::Utc;
use reservoir_common::auth::TenantId;
use reservoir_common::settings::AuthSettings;
use reservoir_common::status::{reason_of, violated_fields};
use reservoir_proto::wallet as pb;
use reservoir_proto::wallet::wallet_service_client::WalletServiceClient;
use reservoir_testing::{Backend, BearerKey, TestDatabase};
use reservoir_wallet::app::{Application, WalletSettings};
use reservoir_wallet::store::Store;
use rust_decimal::Decimal;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub type Client = WalletServiceClient<InterceptedService<Channel, BearerKey>>;

pub const PEPPER: &str = "test-pepper";

pub struct TestApp {
    pub client: Client,
    pub store: Store,
    pub tenant: TenantId,
    pub address: SocketAddr,
    pub database: TestDatabase,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

pub fn settings(database: &TestDatabase) -> WalletSettings {
    WalletSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: database.url.clone(),
        database_schema: database.schema.clone(),
        database_max_connections: 16,
        sweep_interval_ms: 100,
    }
}

pub fn auth_settings() -> AuthSettings {
    // No caching, so a revoked key is refused at once.
    AuthSettings {
        api_key_pepper: PEPPER.into(),
        key_cache_ttl_ms: 0,
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Option<Self> {
        let database = TestDatabase::create(backend).await?;
        let application = Application::build(&settings(&database), &auth_settings())
            .await
            .expect("building the wallet");
        let address = application.local_addr().expect("a bound address");
        let store = application.store();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            application
                .run_until(async {
                    let _ = stopped.await;
                })
                .await
                .expect("the wallet serves");
        });
        let tenant = store
            .create_tenant("test", Utc::now())
            .await
            .expect("a tenant");
        let key = store
            .issue_key(tenant, PEPPER, Utc::now())
            .await
            .expect("a key")
            .key;
        let client = client(address, &key).await;
        Some(Self {
            client,
            store,
            tenant,
            address,
            database,
            stop,
            server,
        })
    }

    /// A second tenant with its own key.
    pub async fn other_tenant(&self) -> (TenantId, Client) {
        let tenant = self.store.create_tenant("other", Utc::now()).await.unwrap();
        let key = self
            .store
            .issue_key(tenant, PEPPER, Utc::now())
            .await
            .unwrap()
            .key;
        (tenant, client(self.address, &key).await)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap();
        self.database.drop_database().await;
    }
}

pub async fn channel(address: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn client(address: SocketAddr, key: &str) -> Client {
    WalletServiceClient::with_interceptor(channel(address).await, BearerKey::new(key))
}

pub fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn d(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

pub fn usd() -> Option<pb::Unit> {
    Some(pb::Unit {
        code: "USD".into(),
        ..Default::default()
    })
}

pub async fn open_account(
    client: &Client,
    policy: pb::OverdraftPolicy,
    credit_limit: &str,
) -> pb::Account {
    open_account_with(client, |request| {
        request.overdraft_policy = policy.into();
        request.credit_limit = credit_limit.into();
    })
    .await
}

pub async fn open_account_with(
    client: &Client,
    edit: impl FnOnce(&mut pb::CreateAccountRequest),
) -> pb::Account {
    let mut request = pb::CreateAccountRequest {
        external_id: format!("customer-{}", key()),
        unit: usd(),
        overdraft_policy: pb::OverdraftPolicy::None.into(),
        idempotency_key: key(),
        ..Default::default()
    };
    edit(&mut request);
    client
        .clone()
        .create_account(request)
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
}

pub async fn prepaid(client: &Client) -> pb::Account {
    open_account(client, pb::OverdraftPolicy::None, "").await
}

pub fn grant_request(
    account: &pb::Account,
    amount: &str,
    kind: pb::GrantKind,
) -> pb::GrantCreditsRequest {
    pb::GrantCreditsRequest {
        account_id: account.id.clone(),
        amount: amount.into(),
        kind: kind.into(),
        idempotency_key: key(),
        ..Default::default()
    }
}

pub async fn grant(
    client: &Client,
    account: &pb::Account,
    amount: &str,
    kind: pb::GrantKind,
) -> pb::GrantCreditsResponse {
    client
        .clone()
        .grant_credits(grant_request(account, amount, kind))
        .await
        .unwrap()
        .into_inner()
}

pub fn debit_request(account: &pb::Account, amount: &str) -> pb::DebitRequest {
    pb::DebitRequest {
        account_id: account.id.clone(),
        amount: amount.into(),
        idempotency_key: key(),
        ..Default::default()
    }
}

pub async fn debit(
    client: &Client,
    account: &pb::Account,
    amount: &str,
) -> Result<pb::DebitResponse, Status> {
    client
        .clone()
        .debit(debit_request(account, amount))
        .await
        .map(|response| response.into_inner())
}

pub async fn balance(client: &Client, account: &pb::Account) -> pb::Balance {
    client
        .clone()
        .get_balance(pb::GetBalanceRequest {
            account_id: account.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .balance
        .unwrap()
}

pub async fn available(client: &Client, account: &pb::Account) -> Decimal {
    d(&balance(client, account).await.available)
}

pub async fn ledger(client: &Client, account: &pb::Account) -> Vec<pb::LedgerEntry> {
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .clone()
            .list_ledger_entries(pb::ListLedgerEntriesRequest {
                account_id: account.id.clone(),
                page_size: 1_000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
}

pub fn moves_money(entry: &pb::LedgerEntry) -> bool {
    let kind = pb::EntryKind::try_from(entry.kind).unwrap();
    !matches!(kind, pb::EntryKind::Hold | pb::EntryKind::Release)
}

/// The invariants, checked through the API as a client would: balance =
/// sum of money-moving entries; each grant's remaining = the sum of its
/// entries; sequences without gaps; the last balance_after is that sum.
pub async fn assert_books_balance(client: &Client, account: &pb::Account) {
    let entries = ledger(client, account).await;
    let balance = balance(client, account).await;
    let money: Decimal = entries
        .iter()
        .filter(|entry| moves_money(entry))
        .map(|entry| d(&entry.amount))
        .sum();
    assert_eq!(
        d(&balance.available) + d(&balance.held) + d(&balance.pending),
        money,
        "available + held (+ pending) = sum of money-moving entries"
    );
    if let Some(last) = entries.iter().rev().find(|entry| moves_money(entry)) {
        assert_eq!(d(&last.balance_after), money);
    }
    let sequences: Vec<u64> = entries.iter().map(|entry| entry.sequence).collect();
    assert_eq!(
        sequences,
        (1..=entries.len() as u64).collect::<Vec<_>>(),
        "sequences from 1 without gaps"
    );
    let grants = client
        .clone()
        .list_grants(pb::ListGrantsRequest {
            account_id: account.id.clone(),
            include_inactive: true,
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    for grant in grants {
        let sum: Decimal = entries
            .iter()
            .filter(|entry| entry.grant_id == grant.id && moves_money(entry))
            .map(|entry| d(&entry.amount))
            .sum();
        assert_eq!(
            d(&grant.remaining_amount),
            sum,
            "grant {} remaining = sum of its entries",
            grant.id
        );
    }
    let floor = match pb::OverdraftPolicy::try_from(account.overdraft_policy).unwrap() {
        pb::OverdraftPolicy::Unlimited => None,
        _ => Some(-d(&balance.credit_limit)),
    };
    if let Some(floor) = floor {
        assert!(
            d(&balance.total) >= floor,
            "balance {} below the floor {floor}",
            balance.total
        );
    }
}

/// Asserts a status's code and ErrorInfo reason.
pub fn assert_refused(result: Result<impl std::fmt::Debug, Status>, code: Code, reason: &str) {
    let status = result.expect_err("the call should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(&status).as_deref(), Some(reason), "{status:?}");
}

/// Asserts INVALID_ARGUMENT naming `field` in its BadRequest.
pub fn assert_invalid(result: Result<impl std::fmt::Debug, Status>, field: &str) {
    let status = result.expect_err("the call should have been refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        violated_fields(&status)
            .iter()
            .any(|violated| violated == field),
        "{field} not in {status:?}"
    );
}

/// Runs each named test body on SQLite and on PostgreSQL, each with a fresh server and database.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::helpers::TestApp::spawn(reservoir_testing::Backend::Sqlite).await {
                        super::$name(&app).await;
                        app.stop().await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::helpers::TestApp::spawn(reservoir_testing::Backend::Postgres).await {
                        super::$name(&app).await;
                        app.stop().await;
                    }
                }
            )*
        }
    };
}
