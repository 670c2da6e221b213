//! A wallet server on a free port with a database of its own, a tenant, an
//! API key and a client that presents it.

use reservoir_common::app::App;
use std::net::SocketAddr;

use chrono::Utc;
use reservoir_common::auth::TenantId;
use reservoir_common::settings::AuthSettings;
use reservoir_proto::wallet as pb;
pub use reservoir_testing::wallet::*;
use reservoir_testing::{Backend, Running, TestDatabase};
use reservoir_wallet::app::{Application, WalletSettings};
use reservoir_wallet::store::Store;
use tonic::Status;

pub const PEPPER: &str = "test-pepper";

pub struct TestApp {
    pub client: Client,
    pub store: Store,
    pub tenant: TenantId,
    pub address: SocketAddr,
    /// The Prometheus scrape endpoint.
    pub metrics: SocketAddr,
    pub database: TestDatabase,
    running: Running,
}

pub fn settings(database: &TestDatabase) -> WalletSettings {
    WalletSettings { metrics_listen: "127.0.0.1:0".into(), ..reservoir_testing::services::wallet_settings(database) }
}

pub fn auth_settings() -> AuthSettings {
    // No caching, so a revoked key is refused at once.
    AuthSettings { api_key_pepper: PEPPER.into(), key_cache_ttl_ms: 0 }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Option<Self> {
        let database = TestDatabase::create(backend).await?;
        Some(Self::start(database, None).await)
    }

    /// A server on a database already holding a tenant's data, with a key of that tenant.
    pub async fn spawn_on(database: TestDatabase, tenant: TenantId) -> Self {
        Self::start(database, Some(tenant)).await
    }

    /// A server on `database`, with a key of `tenant` (a new one when none is given).
    pub async fn start(database: TestDatabase, tenant: Option<TenantId>) -> Self {
        let application =
            Application::build(&settings(&database), &auth_settings()).await.expect("building the wallet");
        let address = application.local_addr().expect("a bound address");
        let metrics = application.metrics_addr().expect("a metrics endpoint");
        let store = application.store();
        let running = Running::start(application);
        let tenant = match tenant {
            Some(tenant) => tenant,
            None => store.create_tenant("test", Utc::now()).await.expect("a tenant"),
        };
        let key = store.issue_key(tenant, PEPPER, Utc::now()).await.expect("a key").key;
        let client = client(address, &key).await;
        Self { client, store, tenant, address, metrics, database, running }
    }

    /// A second tenant with its own key.
    pub async fn other_tenant(&self) -> (TenantId, Client) {
        let tenant = self.store.create_tenant("other", Utc::now()).await.unwrap();
        let key = self.store.issue_key(tenant, PEPPER, Utc::now()).await.unwrap().key;
        (tenant, client(self.address, &key).await)
    }

    pub async fn stop(self) {
        self.running.stop().await;
        self.database.drop_database().await;
    }

    /// A second wallet server on the same database, as a second replica
    /// would run, with a client that presents this tenant's key.
    pub async fn replica(&self) -> Replica {
        let application =
            Application::build(&settings(&self.database), &auth_settings()).await.expect("building a replica");
        let address = application.local_addr().expect("a bound address");
        let running = Running::start(application);
        let key = self.store.issue_key(self.tenant, PEPPER, Utc::now()).await.expect("a key").key;
        Replica { client: client(address, &key).await, running }
    }
}

/// A second wallet server of a [`TestApp`].
pub struct Replica {
    pub client: Client,
    running: Running,
}

impl Replica {
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

pub fn usd() -> Option<pb::Unit> {
    Some(pb::Unit { code: "USD".into(), ..Default::default() })
}

pub async fn open_account(client: &Client, policy: pb::OverdraftPolicy, credit_limit: &str) -> pb::Account {
    open_account_with(client, |request| {
        request.overdraft_policy = policy.into();
        request.credit_limit = credit_limit.into();
    })
    .await
}

pub async fn open_account_with(client: &Client, edit: impl FnOnce(&mut pb::CreateAccountRequest)) -> pb::Account {
    let mut request = pb::CreateAccountRequest {
        external_id: format!("customer-{}", key()),
        unit: usd(),
        overdraft_policy: pb::OverdraftPolicy::None.into(),
        idempotency_key: key(),
        ..Default::default()
    };
    edit(&mut request);
    client.clone().create_account(request).await.unwrap().into_inner().account.unwrap()
}

pub async fn prepaid(client: &Client) -> pb::Account {
    open_account(client, pb::OverdraftPolicy::None, "").await
}

pub fn grant_request(account: &pb::Account, amount: &str, kind: pb::GrantKind) -> pb::GrantCreditsRequest {
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
    client.clone().grant_credits(grant_request(account, amount, kind)).await.unwrap().into_inner()
}

pub fn debit_request(account: &pb::Account, amount: &str) -> pb::DebitRequest {
    pb::DebitRequest {
        account_id: account.id.clone(),
        amount: amount.into(),
        idempotency_key: key(),
        ..Default::default()
    }
}

pub async fn debit(client: &Client, account: &pb::Account, amount: &str) -> Result<pb::DebitResponse, Status> {
    client.clone().debit(debit_request(account, amount)).await.map(|response| response.into_inner())
}

/// Runs each named test body on SQLite and on PostgreSQL, each with a fresh server and database.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        reservoir_testing::on_both_backends!(&$crate::helpers::TestApp; $($name),*);
    };
}

/// The tenant's events from the first one on.
pub async fn events_from_start(client: &Client) -> tonic::Streaming<pb::WatchEventsResponse> {
    client
        .clone()
        .watch_events(pb::WatchEventsRequest { after_sequence: 0, ..Default::default() })
        .await
        .expect("an event stream")
        .into_inner()
}
