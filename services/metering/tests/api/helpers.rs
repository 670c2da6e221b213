//! A wallet and a metering service on free ports, each with a database of its
//! own, a tenant with a key, and clients for both.

use reservoir_common::app::App;
use std::net::SocketAddr;

use reservoir_metering::app::{Application as Metering, MeteringSettings};
use reservoir_proto::metering as pb;
use reservoir_proto::metering::metering_service_client::MeteringServiceClient;
use reservoir_proto::wallet as wallet_pb;
use reservoir_testing::services::{KEY_CACHE_TTL, TestWallet, metering_settings};
pub use reservoir_testing::wallet::*;
use reservoir_testing::{Backend, BearerKey, Running, TestDatabase};
use rust_decimal::Decimal;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type MeteringClient = MeteringServiceClient<InterceptedService<Channel, BearerKey>>;

pub struct Suite {
    pub wallet: Client,
    pub metering: MeteringClient,
    /// Where metering listens, and a service key of the suite, for calls
    /// made as a service.
    pub metering_address: SocketAddr,
    pub service_key: String,
    pub tenant: reservoir_common::auth::TenantId,
    wallet_service: TestWallet,
    metering_running: Running,
    databases: Vec<TestDatabase>,
}

impl Suite {
    pub async fn spawn(backend: Backend) -> Option<Self> {
        let wallet_database = TestDatabase::create(backend).await?;
        let metering_database = TestDatabase::create(backend).await?;
        let wallet = TestWallet::on(&wallet_database).await;
        let metering_settings =
            MeteringSettings { database_max_connections: 16, ..metering_settings(&metering_database, &wallet) };
        let metering_app = Metering::build(&metering_settings, KEY_CACHE_TTL).await.expect("building metering");
        let metering_address: SocketAddr = metering_app.local_addr().unwrap();
        let metering_running = Running::start(metering_app);
        let metering =
            MeteringServiceClient::with_interceptor(channel(metering_address).await, BearerKey::new(&wallet.key));
        Some(Self {
            wallet: wallet.client().await,
            metering,
            metering_address,
            service_key: wallet.service_key.clone(),
            tenant: wallet.tenant,
            wallet_service: wallet,
            metering_running,
            databases: vec![wallet_database, metering_database],
        })
    }

    /// Metering' database, to write rows as an older release did.
    pub fn metering_database(&self) -> &TestDatabase {
        &self.databases[1]
    }

    /// Stops the wallet, as an outage would.
    pub async fn stop_wallet(&mut self) {
        self.wallet_service.stop().await;
    }

    /// Starts the wallet again on the same address and database.
    pub async fn start_wallet(&mut self) {
        self.wallet_service.restart().await;
    }

    pub async fn stop(mut self) {
        self.stop_wallet().await;
        self.metering_running.stop().await;
        for database in self.databases {
            database.drop_database().await;
        }
    }
}

pub async fn meter(suite: &Suite, code: &str, aggregation: pb::Aggregation) -> pb::Meter {
    suite
        .metering
        .clone()
        .create_meter(pb::CreateMeterRequest {
            code: code.into(),
            unit_name: "unit".into(),
            aggregation: aggregation.into(),
            description: String::new(),
            value_dimension: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .meter
        .unwrap()
}

pub fn flat(unit_price: &str) -> Vec<pb::Tier> {
    vec![pb::Tier { up_to: String::new(), unit_price: unit_price.into() }]
}

pub async fn price(suite: &Suite, code: &str, tiers: Vec<pb::Tier>) {
    suite
        .metering
        .clone()
        .set_price(pb::SetPriceRequest {
            meter_code: code.into(),
            effective_from: None,
            tiers,
            overrides: Vec::new(),
            idempotency_key: key(),
        })
        .await
        .unwrap();
}

/// A priced SUM meter.
pub async fn priced_meter(suite: &Suite, code: &str, unit_price: &str) {
    meter(suite, code, pb::Aggregation::Sum).await;
    price(suite, code, flat(unit_price)).await;
}

pub async fn funded_account(suite: &Suite, amount: &str) -> wallet_pb::Account {
    open_funded_account(&suite.wallet, amount).await
}

pub fn event(account: &wallet_pb::Account, meter: &str, quantity: &str) -> pb::UsageEvent {
    pb::UsageEvent {
        event_id: key(),
        account_id: account.id.clone(),
        meter_code: meter.into(),
        quantity: quantity.into(),
        ..Default::default()
    }
}

pub async fn ingest(suite: &Suite, events: Vec<pb::UsageEvent>) -> Vec<pb::EventResult> {
    suite
        .metering
        .clone()
        .ingest_events(pb::IngestEventsRequest { events, asynchronous: false })
        .await
        .unwrap()
        .into_inner()
        .results
}

pub fn statuses(results: &[pb::EventResult]) -> Vec<pb::EventStatus> {
    results.iter().map(|result| pb::EventStatus::try_from(result.status).unwrap()).collect()
}

/// The sum of the wallet's DEBIT entries, as a positive amount.
pub async fn debited(suite: &Suite, account: &wallet_pb::Account) -> Decimal {
    -ledger(&suite.wallet, account)
        .await
        .iter()
        .filter(|entry| {
            entry.kind == i32::from(wallet_pb::EntryKind::Debit)
                || entry.kind == i32::from(wallet_pb::EntryKind::Capture)
        })
        .map(|entry| d(&entry.amount))
        .sum::<Decimal>()
}

/// Runs each named test body on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        reservoir_testing::on_both_backends!($crate::helpers::Suite; $($name),*);
    };
}
