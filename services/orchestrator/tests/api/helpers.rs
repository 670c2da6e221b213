//! A wallet, invoicing, payments and the orchestrator on free ports, each
//! with a database of its own, a tenant with a key, and clients. Metering is
//! not running: nothing here bills usage.

use reservoir_common::app::App;
use std::time::Duration;

use chrono::Utc;
use reservoir_common::settings::AuthSettings;
use reservoir_orchestrator::app::{Application as Orchestrator, OrchestratorSettings};
use reservoir_proto::orchestrator::top_up_service_client::TopUpServiceClient;
use reservoir_proto::orchestrator::webhook_service_client::WebhookServiceClient;
pub use reservoir_testing::wallet::*;
use reservoir_testing::{Backend, BearerKey, Running, TestDatabase};
use reservoir_wallet::app::{Application as Wallet, WalletSettings};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type TopUpClient = TopUpServiceClient<InterceptedService<Channel, BearerKey>>;
pub type WebhookClient = WebhookServiceClient<InterceptedService<Channel, BearerKey>>;

const PEPPER: &str = "test-pepper";

pub struct Suite {
    pub wallet: Client,
    pub payments: reservoir_proto::payments::payments_service_client::PaymentsServiceClient<
        InterceptedService<Channel, BearerKey>,
    >,
    pub top_ups: TopUpClient,
    /// The same services under another tenant's key.
    pub other_top_ups: TopUpClient,
    pub webhooks: WebhookClient,
    pub other_webhooks: WebhookClient,
    stops: Vec<Running>,
    databases: Vec<TestDatabase>,
}

impl Suite {
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with(backend, true).await
    }

    /// A suite whose orchestrator sends webhooks to public addresses only
    /// (`allow_private_destinations` off), as production runs.
    pub async fn spawn_with(backend: Backend, allow_private_destinations: bool) -> Option<Self> {
        Self::spawn_with_webhooks(
            backend,
            reservoir_orchestrator::usecases::webhooks::WebhookSettings {
                // Receivers in these tests listen on loopback.
                allow_private_destinations,
                ..Self::quick_webhooks()
            },
        )
        .await
    }

    /// Quick retries, so a receiver that is down for a second sees several.
    pub fn quick_webhooks() -> reservoir_orchestrator::usecases::webhooks::WebhookSettings {
        reservoir_orchestrator::usecases::webhooks::WebhookSettings {
            interval_ms: 50,
            retry_base_ms: 100,
            retry_max_ms: 400,
            allow_http: true,
            allow_private_destinations: true,
            ..Default::default()
        }
    }

    pub async fn spawn_with_webhooks(
        backend: Backend,
        webhooks: reservoir_orchestrator::usecases::webhooks::WebhookSettings,
    ) -> Option<Self> {
        let wallet_database = TestDatabase::create(backend).await?;
        let orchestrator_database = TestDatabase::create(backend).await?;
        let invoicing_database = TestDatabase::create(backend).await?;
        let payments_database = TestDatabase::create(backend).await?;
        let auth = AuthSettings { api_key_pepper: PEPPER.into(), key_cache_ttl_ms: 60_000 };
        let wallet_settings = WalletSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: wallet_database.url.clone(),
            database_schema: wallet_database.schema.clone(),
            database_max_connections: 8,
            sweep_interval_ms: 100,
            committers: 4,
            metrics_listen: String::new(),
        };
        let wallet = Wallet::build(&wallet_settings, &auth).await.unwrap();
        let wallet_address = wallet.local_addr().unwrap();
        let store = wallet.store();
        let tenant = store.create_tenant("test", Utc::now()).await.unwrap();
        let key = store.issue_key(tenant, PEPPER, Utc::now()).await.unwrap().key;
        let other = store.create_tenant("other", Utc::now()).await.unwrap();
        let other_key = store.issue_key(other, PEPPER, Utc::now()).await.unwrap().key;
        let service_key = store.issue_service_key(PEPPER, Utc::now()).await.unwrap().key;
        let mut stops = Vec::new();
        stops.push(Running::start(wallet));
        let invoicing = reservoir_invoicing::app::Application::build(
            &reservoir_invoicing::app::InvoicingSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                database_url: invoicing_database.url.clone(),
                database_schema: invoicing_database.schema.clone(),
                database_max_connections: 8,
                wallet_endpoint: format!("http://{wallet_address}"),
                // Nothing listens here: no statement is made.
                metering_endpoint: "http://127.0.0.1:9".into(),
                service_key: service_key.clone(),
                payment_due_days_default: 14,
                worker_interval_ms: 1_000,
                metrics_listen: String::new(),
                smtp_url: String::new(),
                report_from: "Reservoir <reservoir@localhost>".into(),
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let invoicing_address = invoicing.local_addr().unwrap();
        stops.push(Running::start(invoicing));
        let payments = reservoir_payments::app::Application::build(
            &reservoir_payments::app::PaymentsSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                database_url: payments_database.url.clone(),
                database_schema: payments_database.schema.clone(),
                database_max_connections: 8,
                wallet_endpoint: format!("http://{wallet_address}"),
                wallet_service_key: service_key.clone(),
                invoicing_endpoint: format!("http://{invoicing_address}"),
                gateway_timeout_ms: 5_000,
                metrics_listen: String::new(),
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let payments_address = payments.local_addr().unwrap();
        stops.push(Running::start(payments));
        let settings = OrchestratorSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: orchestrator_database.url.clone(),
            database_schema: orchestrator_database.schema.clone(),
            database_max_connections: 8,
            wallet_endpoint: format!("http://{wallet_address}"),
            invoicing_endpoint: format!("http://{invoicing_address}"),
            payments_endpoint: format!("http://{payments_address}"),
            service_key,
            worker_interval_ms: 100,
            saga_lease_ms: 1_000,
            attempts_before_action: 8,
            crash_at: String::new(),
            metrics_listen: String::new(),
            webhooks,
        };
        let orchestrator = Orchestrator::build(&settings, Duration::from_secs(60)).await.unwrap();
        let address = orchestrator.local_addr().unwrap();
        stops.push(Running::start(orchestrator));
        Some(Self {
            wallet: client(wallet_address, &key).await,
            payments: reservoir_proto::payments::payments_service_client::PaymentsServiceClient::with_interceptor(
                channel(payments_address).await,
                BearerKey::new(&key),
            ),
            top_ups: TopUpServiceClient::with_interceptor(channel(address).await, BearerKey::new(&key)),
            other_top_ups: TopUpServiceClient::with_interceptor(channel(address).await, BearerKey::new(&other_key)),
            webhooks: WebhookServiceClient::with_interceptor(channel(address).await, BearerKey::new(&key)),
            other_webhooks: WebhookServiceClient::with_interceptor(channel(address).await, BearerKey::new(&other_key)),
            stops,
            databases: vec![wallet_database, orchestrator_database, invoicing_database, payments_database],
        })
    }

    pub async fn stop(self) {
        for running in self.stops.into_iter().rev() {
            running.stop().await;
        }
        for database in self.databases {
            database.drop_database().await;
        }
    }
}

/// Runs each named test body on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        reservoir_testing::on_both_backends!($crate::helpers::Suite; $($name),*);
    };
}
