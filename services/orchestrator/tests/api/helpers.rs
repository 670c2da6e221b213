//! A wallet, invoicing, payments and the orchestrator on free ports, each
//! with a database of its own, a tenant with a key, and clients. Metering is
//! not running: nothing here bills usage.

use reservoir_common::app::App;
use reservoir_orchestrator::app::{Application as Orchestrator, OrchestratorSettings};
use reservoir_proto::orchestrator::top_up_service_client::TopUpServiceClient;
use reservoir_proto::orchestrator::webhook_service_client::WebhookServiceClient;
use reservoir_testing::services::{
    KEY_CACHE_TTL, TestWallet, invoicing_settings, orchestrator_settings, payments_settings, wallet_settings,
};
pub use reservoir_testing::wallet::*;
use reservoir_testing::{Backend, BearerKey, Running, TestDatabase};
use reservoir_wallet::app::WalletSettings;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type TopUpClient = TopUpServiceClient<InterceptedService<Channel, BearerKey>>;
pub type WebhookClient = WebhookServiceClient<InterceptedService<Channel, BearerKey>>;

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
    wallet_service: TestWallet,
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
        let wallet =
            TestWallet::start(WalletSettings { database_max_connections: 8, ..wallet_settings(&wallet_database) })
                .await;
        let (_, other_key) = wallet.other_tenant("other").await;
        let mut stops = Vec::new();
        let invoicing = reservoir_invoicing::app::Application::build(
            &invoicing_settings(&invoicing_database, &wallet, None),
            KEY_CACHE_TTL,
        )
        .await
        .unwrap();
        let invoicing_address = invoicing.local_addr().unwrap();
        stops.push(Running::start(invoicing));
        let payments = reservoir_payments::app::Application::build(
            &payments_settings(&payments_database, &wallet, invoicing_address),
            KEY_CACHE_TTL,
        )
        .await
        .unwrap();
        let payments_address = payments.local_addr().unwrap();
        stops.push(Running::start(payments));
        let settings = OrchestratorSettings {
            webhooks,
            ..orchestrator_settings(&orchestrator_database, &wallet, invoicing_address, payments_address)
        };
        let orchestrator = Orchestrator::build(&settings, KEY_CACHE_TTL).await.unwrap();
        let address = orchestrator.local_addr().unwrap();
        stops.push(Running::start(orchestrator));
        let key = wallet.key.clone();
        Some(Self {
            wallet: wallet.client().await,
            payments: reservoir_proto::payments::payments_service_client::PaymentsServiceClient::with_interceptor(
                channel(payments_address).await,
                BearerKey::new(&key),
            ),
            top_ups: TopUpServiceClient::with_interceptor(channel(address).await, BearerKey::new(&key)),
            other_top_ups: TopUpServiceClient::with_interceptor(channel(address).await, BearerKey::new(&other_key)),
            webhooks: WebhookServiceClient::with_interceptor(channel(address).await, BearerKey::new(&key)),
            other_webhooks: WebhookServiceClient::with_interceptor(channel(address).await, BearerKey::new(&other_key)),
            stops,
            wallet_service: wallet,
            databases: vec![wallet_database, orchestrator_database, invoicing_database, payments_database],
        })
    }

    pub async fn stop(mut self) {
        for running in self.stops.into_iter().rev() {
            running.stop().await;
        }
        self.wallet_service.stop().await;
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
