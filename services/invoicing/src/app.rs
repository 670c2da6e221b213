//! Invoicing as a running service: settings, the server, and the worker that
//! blocks overdue credit, repays paid statements and runs monthly cycles.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reservoir_common::app::{App, Listeners, Served};
use reservoir_common::auth::{Authenticator, WalletKeyResolver};
use reservoir_common::settings::DatabaseSettings;
use reservoir_proto::invoicing::invoicing_service_server::InvoicingServiceServer;
use serde::Deserialize;
use tokio::sync::watch;

use crate::api::InvoicingApi;
use crate::clients::Upstream;
use crate::clients::mail::Mailer;
use crate::domain::PAYMENT_DUE_DAYS_MAX;
use crate::error::InvoicingError;
use crate::store::Store;
use crate::usecases::alerts::Alerts;
use crate::usecases::billing::{Billing, system_clock};
use crate::usecases::reports::Reports;

pub const SERVICE_NAME: &str = "reservoir.invoicing.v1.InvoicingService";

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct InvoicingSettings {
    /// gRPC address to listen on, such as `0.0.0.0:50053`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// `sqlite://path?mode=rwc` or `postgres://user:password@host/database` (add `sslmode=require` off-host).
    pub database_url: String,
    /// The PostgreSQL schema invoicing owns (created on first connection); ignored on SQLite.
    pub database_schema: String,
    /// Connections in this replica's pool.
    pub database_max_connections: u32,
    /// The wallet's gRPC address, such as `http://wallet:50051`.
    pub wallet_endpoint: String,
    /// Metering's gRPC address, such as `http://metering:50052`.
    pub metering_endpoint: String,
    /// Invoicing's service key for the wallet and metering (`reservoir key issue-service`).
    pub service_key: String,
    /// Days from issue to the due date of a statement, for tenants that set none.
    pub payment_due_days_default: u32,
    /// How often overdue statements, repayments and monthly cycles are looked at.
    pub worker_interval_ms: u64,
    /// The Prometheus scrape endpoint, such as `0.0.0.0:9090`; empty: none.
    #[serde(default)]
    pub metrics_listen: String,
    /// The mail server scheduled reports and billing alerts go through: `smtp://host:25`,
    /// `smtp://user:password@host:587?tls=required`, `smtps://host:465`; empty: no mail
    /// is sent (reports and alerts are kept and end FAILED).
    #[serde(default)]
    pub smtp_url: String,
    /// The sender of scheduled reports and billing alerts, such as `Billing <billing@example.com>`.
    #[serde(default = "report_from_default")]
    pub report_from: String,
}

fn report_from_default() -> String {
    "Reservoir <reservoir@localhost>".into()
}

impl InvoicingSettings {
    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            schema: self.database_schema.clone(),
            max_connections: self.database_max_connections,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.database().validate().map_err(|error| format!("invoicing: {error}"))?;
        for (name, endpoint) in
            [("wallet_endpoint", &self.wallet_endpoint), ("metering_endpoint", &self.metering_endpoint)]
        {
            if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                return Err(format!("invoicing: {name} must be an http(s) URL, not {endpoint:?}"));
            }
        }
        if self.service_key.is_empty() {
            return Err("invoicing: service_key is required (reservoir key issue-service)".into());
        }
        if self.payment_due_days_default > PAYMENT_DUE_DAYS_MAX {
            return Err(format!("invoicing: payment_due_days_default must be 0 to {PAYMENT_DUE_DAYS_MAX}"));
        }
        if self.worker_interval_ms == 0 {
            return Err("invoicing: worker_interval_ms must be at least 1".into());
        }
        Ok(())
    }
}

pub type AppError = reservoir_common::app::AppError<InvoicingError>;

pub struct Application {
    listeners: Listeners,
    store: Store,
    api: InvoicingApi,
    authenticator: Arc<Authenticator>,
    worker_interval: Duration,
}

impl Application {
    pub async fn build(settings: &InvoicingSettings, key_cache_ttl: Duration) -> Result<Self, AppError> {
        settings.validate().map_err(AppError::Settings)?;
        let store = Store::connect(&settings.database()).await?;
        store.migrate().await?;
        let upstream =
            Upstream::new(&settings.wallet_endpoint, &settings.metering_endpoint, settings.service_key.clone())?;
        let listeners = Listeners::bind(settings.listen, &settings.metrics_listen).await?;
        let authenticator =
            Arc::new(Authenticator::new(Arc::new(WalletKeyResolver::new(upstream.wallet_channel())), key_cache_ttl));
        let mailer = Mailer::new(&settings.smtp_url, &settings.report_from).map_err(AppError::Settings)?;
        let billing = Billing::new(store.clone(), upstream.clone(), settings.payment_due_days_default, system_clock());
        let reports = Reports::new(store.clone(), upstream.clone(), mailer.clone(), system_clock());
        let alerts = Alerts::new(store.clone(), upstream.clone(), mailer, system_clock());
        let api = InvoicingApi::new(store.clone(), upstream, billing, reports, alerts);
        Ok(Self {
            listeners,
            store,
            api,
            authenticator,
            worker_interval: Duration::from_millis(settings.worker_interval_ms),
        })
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Replaces the clock, for tests: it decides when months end and
    /// statements fall due.
    #[cfg(feature = "test-hooks")]
    pub fn set_clock(&mut self, clock: crate::usecases::billing::Clock) {
        self.api = self.api.with_clock(clock);
    }
}

impl App for Application {
    type Error = InvoicingError;

    fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    fn listeners_mut(&mut self) -> &mut Listeners {
        &mut self.listeners
    }

    async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        let (stop, stopping) = watch::channel(false);
        let worker = tokio::spawn(work(self.api.clone(), self.worker_interval, stopping.clone()));
        let alerts = tokio::spawn(alert(self.api.clone(), self.worker_interval, stopping.clone()));
        let served = Served {
            name: "invoicing",
            service_names: &[SERVICE_NAME],
            authenticator: self.authenticator,
            database: self.store.database().clone(),
            routes: tonic::service::Routes::new(InvoicingServiceServer::new(self.api.with_stopping(stopping))),
            tasks: vec![(worker, "worker"), (alerts, "alerts")],
        };
        self.listeners.run(served, stop, shutdown).await
    }
}

/// Finishes what calls left to the wallet, runs the monthly cycles, and makes
/// and sends scheduled reports. Every replica may run it: each wallet change
/// carries an idempotency key of its own, and a statement's key makes a
/// second one for the same month a no-op.
async fn work(api: InvoicingApi, interval: Duration, stopping: watch::Receiver<bool>) {
    reservoir_common::serve::every(interval, stopping, || async {
        let now = api.now();
        if let Err(error) = api.billing().finish_repayments().await {
            tracing::warn!(%error, "repaying paid statements failed; retried next pass");
        }
        if let Err(error) = api.billing().reconcile_credit_blocks(now).await {
            tracing::warn!(%error, "applying credit blocks failed; retried next pass");
        }
        if let Err(error) = api.billing().run_due_cycles(now).await {
            tracing::warn!(%error, "the monthly billing cycle failed; retried next pass");
        }
        if let Err(error) = api.reports().send_due_reports(now).await {
            tracing::warn!(%error, "scheduled reports failed; retried next pass");
        }
    })
    .await;
}

/// Finds and sends billing alerts, in a loop of its own: reading many
/// tenants' events takes a while, and must not hold up the billing cycle.
async fn alert(api: InvoicingApi, interval: Duration, stopping: watch::Receiver<bool>) {
    reservoir_common::serve::every(interval, stopping, || async {
        if let Err(error) = api.alerts().pass().await {
            tracing::warn!(%error, "billing alerts failed; retried next pass");
        }
    })
    .await;
}
