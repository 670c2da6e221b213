//! A wallet, metering and invoicing on free ports, each with a database of
//! its own, a tenant with a key, clients for all three, and a clock for
//! invoicing that a test moves to the next month.

use reservoir_common::app::App;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reservoir_invoicing::app::{Application as Invoicing, InvoicingSettings};
use reservoir_metering::app::Application as Metering;
use reservoir_proto::invoicing as pb;
use reservoir_proto::invoicing::invoicing_service_client::InvoicingServiceClient;
use reservoir_proto::metering as metering_pb;
use reservoir_proto::metering::metering_service_client::MeteringServiceClient;
use reservoir_proto::wallet as wallet_pb;
use reservoir_testing::services::{KEY_CACHE_TTL, TestWallet, invoicing_settings, metering_settings};
pub use reservoir_testing::wallet::*;
use reservoir_testing::{Backend, BearerKey, Running, TestDatabase};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type InvoicingClient = InvoicingServiceClient<InterceptedService<Channel, BearerKey>>;
pub type MeteringClient = MeteringServiceClient<InterceptedService<Channel, BearerKey>>;

pub struct Suite {
    pub wallet: Client,
    pub metering: MeteringClient,
    pub invoicing: InvoicingClient,
    /// Invoicing as the suite's services call it: a service key acting for
    /// the tenant (marking an invoice paid takes one).
    pub invoicing_as_service: InvoicingClient,
    /// What invoicing believes the time is; `None` follows the system clock.
    pub clock: Arc<Mutex<Option<DateTime<Utc>>>>,
    /// The mail server scheduled reports go to.
    pub smtp: crate::smtp::SmtpSink,
    wallet_service: TestWallet,
    running: Vec<Running>,
    invoicing_settings: InvoicingSettings,
    invoicing_running: Option<Running>,
    databases: Vec<TestDatabase>,
}

type SharedClock = Arc<Mutex<Option<DateTime<Utc>>>>;

/// Invoicing on `settings`, reading the time from `clock`.
async fn build_invoicing(settings: &InvoicingSettings, clock: &SharedClock) -> Result<Invoicing, String> {
    let mut invoicing = Invoicing::build(settings, KEY_CACHE_TTL).await.map_err(|error| error.to_string())?;
    let reading = clock.clone();
    invoicing.set_clock(Arc::new(move || reading.lock().unwrap().unwrap_or_else(Utc::now)));
    Ok(invoicing)
}

impl Suite {
    pub async fn spawn(backend: Backend) -> Option<Self> {
        let wallet_database = TestDatabase::create(backend).await?;
        let metering_database = TestDatabase::create(backend).await?;
        let invoicing_database = TestDatabase::create(backend).await?;
        let wallet = TestWallet::on(&wallet_database).await;
        let mut running = Vec::new();
        let metering_settings = metering_settings(&metering_database, &wallet);
        let metering_app = Metering::build(&metering_settings, KEY_CACHE_TTL).await.expect("metering");
        let metering_address = metering_app.local_addr().unwrap();
        running.push(Running::start(metering_app));
        let (smtp, smtp_address) = crate::smtp::SmtpSink::start().await;
        let mut invoicing_settings = InvoicingSettings {
            database_max_connections: 16,
            worker_interval_ms: 100,
            smtp_url: format!("smtp://{smtp_address}"),
            report_from: "Billing <billing@reservoir.test>".into(),
            ..invoicing_settings(&invoicing_database, &wallet, Some(metering_address))
        };
        let clock: SharedClock = Arc::new(Mutex::new(None));
        let invoicing_app = build_invoicing(&invoicing_settings, &clock).await.expect("building invoicing");
        let invoicing_address = invoicing_app.local_addr().unwrap();
        invoicing_settings.listen = invoicing_address;
        let invoicing_running = Some(Running::start(invoicing_app));
        Some(Self {
            wallet: wallet.client().await,
            metering: MeteringServiceClient::with_interceptor(
                channel(metering_address).await,
                BearerKey::new(&wallet.key),
            ),
            invoicing: InvoicingServiceClient::with_interceptor(
                channel(invoicing_address).await,
                BearerKey::new(&wallet.key),
            ),
            invoicing_as_service: InvoicingServiceClient::with_interceptor(
                channel(invoicing_address).await,
                BearerKey::service(&wallet.service_key, wallet.tenant),
            ),
            clock,
            smtp,
            wallet_service: wallet,
            running,
            invoicing_settings,
            invoicing_running,
            databases: vec![wallet_database, metering_database, invoicing_database],
        })
    }

    /// Moves invoicing's clock to `at`.
    pub fn set_time(&self, at: DateTime<Utc>) {
        *self.clock.lock().unwrap() = Some(at);
    }

    /// Stops the wallet, as an outage would.
    pub async fn stop_wallet(&mut self) {
        self.wallet_service.stop().await;
    }

    /// Starts the wallet again on the same address and database.
    pub async fn start_wallet(&mut self) {
        self.wallet_service.restart().await;
    }

    /// Invoicing's database, to move its rows as another replica would.
    pub fn invoicing_database(&self) -> &TestDatabase {
        &self.databases[2]
    }

    /// Stops invoicing, as a crash or a deployment would.
    pub async fn stop_invoicing(&mut self) {
        if let Some(running) = self.invoicing_running.take() {
            running.stop().await;
        }
    }

    /// Starts invoicing again on the same address and database.
    pub async fn start_invoicing(&mut self) {
        let mut attempts = 0;
        let application = loop {
            match build_invoicing(&self.invoicing_settings, &self.clock).await {
                Ok(application) => break application,
                // The old listener may take a moment to let go of the port.
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("restarting invoicing: {error}"),
            }
        };
        self.invoicing_running = Some(Running::start(application));
    }

    pub async fn stop(mut self) {
        self.stop_invoicing().await;
        for running in self.running.into_iter().rev() {
            running.stop().await;
        }
        self.wallet_service.stop().await;
        for database in self.databases {
            database.drop_database().await;
        }
    }
}

/// An account in `unit` with the overdraft policy and limit given.
pub async fn open_account(
    suite: &Suite,
    unit: wallet_pb::Unit,
    policy: wallet_pb::OverdraftPolicy,
    credit_limit: &str,
) -> wallet_pb::Account {
    suite
        .wallet
        .clone()
        .create_account(wallet_pb::CreateAccountRequest {
            external_id: key(),
            unit: Some(unit),
            overdraft_policy: policy.into(),
            credit_limit: credit_limit.into(),
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
}

pub fn usd() -> wallet_pb::Unit {
    wallet_pb::Unit { code: "USD".into(), ..Default::default() }
}

/// Credits at 0.0125 EUR each, to 4 decimals.
pub fn credits() -> wallet_pb::Unit {
    wallet_pb::Unit {
        code: "CREDIT".into(),
        scale: Some(4),
        price_per_credit: "0.0125".into(),
        billing_currency: "EUR".into(),
    }
}

pub async fn grant(suite: &Suite, account: &wallet_pb::Account, amount: &str, kind: wallet_pb::GrantKind) {
    suite
        .wallet
        .clone()
        .grant_credits(wallet_pb::GrantCreditsRequest {
            account_id: account.id.clone(),
            amount: amount.into(),
            kind: kind.into(),
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// A SUM meter at a flat price, or with a price per value of `dimension`.
pub async fn priced_meter(suite: &Suite, code: &str, unit_price: &str, dimension: Option<(&str, &str, &str)>) {
    let flat = |price: &str| vec![metering_pb::Tier { up_to: String::new(), unit_price: price.into() }];
    suite
        .metering
        .clone()
        .create_meter(metering_pb::CreateMeterRequest {
            code: code.into(),
            unit_name: "unit".into(),
            aggregation: metering_pb::Aggregation::Sum.into(),
            description: String::new(),
            value_dimension: String::new(),
        })
        .await
        .unwrap();
    suite
        .metering
        .clone()
        .set_price(metering_pb::SetPriceRequest {
            meter_code: code.into(),
            effective_from: None,
            tiers: flat(unit_price),
            overrides: dimension
                .map(|(key, value, price)| {
                    vec![metering_pb::DimensionPrice { key: key.into(), value: value.into(), tiers: flat(price) }]
                })
                .unwrap_or_default(),
            idempotency_key: key(),
        })
        .await
        .unwrap();
}

/// Ingests usage and asserts every event was charged.
pub async fn use_meter(
    suite: &Suite,
    account: &wallet_pb::Account,
    meter: &str,
    quantity: &str,
    dimensions: &[(&str, &str)],
) -> Vec<metering_pb::EventResult> {
    let event = metering_pb::UsageEvent {
        event_id: key(),
        account_id: account.id.clone(),
        meter_code: meter.into(),
        quantity: quantity.into(),
        dimensions: dimensions.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..Default::default()
    };
    suite
        .metering
        .clone()
        .ingest_events(metering_pb::IngestEventsRequest { events: vec![event], asynchronous: false })
        .await
        .unwrap()
        .into_inner()
        .results
}

pub async fn create_invoice(suite: &Suite, account: &wallet_pb::Account, credits: &str) -> pb::Invoice {
    suite
        .invoicing
        .clone()
        .create_invoice(pb::CreateInvoiceRequest {
            account_id: account.id.clone(),
            credits: credits.into(),
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap()
}

pub async fn finalize(suite: &Suite, invoice: &pb::Invoice) -> Result<pb::Invoice, tonic::Status> {
    suite
        .invoicing
        .clone()
        .finalize_invoice(pb::FinalizeInvoiceRequest { invoice_id: invoice.id.clone() })
        .await
        .map(|response| response.into_inner().invoice.unwrap())
}

/// Marks the invoice paid as the payment flow does, with a service key.
pub async fn pay(suite: &Suite, invoice: &pb::Invoice, reference: &str) -> Result<pb::Invoice, tonic::Status> {
    suite
        .invoicing_as_service
        .clone()
        .mark_invoice_paid(pb::MarkInvoicePaidRequest {
            invoice_id: invoice.id.clone(),
            payment_reference: reference.into(),
        })
        .await
        .map(|response| response.into_inner().invoice.unwrap())
}

pub async fn void(suite: &Suite, invoice: &pb::Invoice) -> Result<pb::Invoice, tonic::Status> {
    suite
        .invoicing
        .clone()
        .void_invoice(pb::VoidInvoiceRequest { invoice_id: invoice.id.clone() })
        .await
        .map(|response| response.into_inner().invoice.unwrap())
}

pub fn status(invoice: &pb::Invoice) -> pb::InvoiceStatus {
    pb::InvoiceStatus::try_from(invoice.status).unwrap()
}

/// Waits up to 10 s for `check` to hold.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 10 s");
}

/// Runs each named test body on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        reservoir_testing::on_both_backends!($crate::helpers::Suite; $($name),*);
    };
}

pub async fn get_invoice(suite: &Suite, invoice: &pb::Invoice) -> pb::Invoice {
    suite
        .invoicing
        .clone()
        .get_invoice(pb::GetInvoiceRequest { invoice_id: invoice.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap()
}
