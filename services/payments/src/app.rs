//! Payments as a running service: settings, the gateway, and the server,
//! built once and run until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reservoir_common::app::{App, Listeners, Served};
use reservoir_common::auth::{Authenticator, WalletKeyResolver};
use reservoir_common::settings::DatabaseSettings;
use reservoir_common::tls::lazy_channel;
use reservoir_proto::payments::payments_service_server::PaymentsServiceServer;
use serde::Deserialize;
use tokio::sync::watch;

use crate::api::PaymentsApi;
use crate::clients::gateway::SandboxGateway;
use crate::error::PaymentsError;
use crate::store::Store;
use crate::usecases::charges::Charges;

/// The gRPC service name, as health checks ask for it.
pub const SERVICE_NAME: &str = "reservoir.payments.v1.PaymentsService";

/// How long a call to the wallet or invoicing may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest gateway timeout accepted: a caller waits this long at most
/// for a Charge, and a processor that takes longer is as good as down.
const GATEWAY_TIMEOUT_MS_MAX: u64 = 120_000;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct PaymentsSettings {
    /// gRPC address to listen on, such as `0.0.0.0:50054`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// `sqlite://path?mode=rwc` or `postgres://user:password@host/database` (add `sslmode=require` off-host).
    pub database_url: String,
    /// The PostgreSQL schema payments owns (created on first connection); ignored on SQLite.
    pub database_schema: String,
    /// Connections in this replica's pool.
    pub database_max_connections: u32,
    /// The wallet's gRPC address, such as `http://wallet:50051`. Payments asks
    /// the wallet who holds each caller's API key, and whose accounts and
    /// units the ones a call names are.
    pub wallet_endpoint: String,
    /// Payments' service key (`reservoir key issue-service`): it asks the
    /// wallet whether an account named by a payment method or a voucher
    /// redemption is the caller's, and whether the unit of a new voucher
    /// batch is one the tenant keeps accounts in; and invoicing whether the
    /// invoice a charge names is the caller's and open.
    #[serde(default)]
    pub wallet_service_key: String,
    /// Invoicing's gRPC address, such as `http://invoicing:50053`: a charge
    /// is made only for an open invoice of the caller's, for its account
    /// and currency and at most its amount due.
    #[serde(default)]
    pub invoicing_endpoint: String,
    /// How long one gateway call may take before the attempt counts as
    /// timed out (the payment is FAILED, and a retry with its key asks again).
    pub gateway_timeout_ms: u64,
    /// The Prometheus scrape endpoint, such as `0.0.0.0:9090`; empty: none.
    #[serde(default)]
    pub metrics_listen: String,
}

impl PaymentsSettings {
    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            schema: self.database_schema.clone(),
            max_connections: self.database_max_connections,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.database().validate().map_err(|error| format!("payments: {error}"))?;
        if !self.wallet_endpoint.starts_with("http://") && !self.wallet_endpoint.starts_with("https://") {
            return Err(format!("payments: wallet_endpoint must be an http(s) URL, not {:?}", self.wallet_endpoint));
        }
        if self.wallet_service_key.is_empty() {
            return Err("payments: wallet_service_key is required (reservoir key issue-service)".into());
        }
        if !self.invoicing_endpoint.starts_with("http://") && !self.invoicing_endpoint.starts_with("https://") {
            return Err(format!(
                "payments: invoicing_endpoint must be an http(s) URL, not {:?}",
                self.invoicing_endpoint
            ));
        }
        if self.gateway_timeout_ms == 0 || self.gateway_timeout_ms > GATEWAY_TIMEOUT_MS_MAX {
            return Err(format!("payments: gateway_timeout_ms must be 1 to {GATEWAY_TIMEOUT_MS_MAX}"));
        }
        Ok(())
    }
}

pub type AppError = reservoir_common::app::AppError<PaymentsError>;

pub struct Application {
    listeners: Listeners,
    store: Store,
    sandbox: SandboxGateway,
    authenticator: Arc<Authenticator>,
    gateway_timeout: Duration,
    owners: crate::clients::owners::Owners,
}

impl Application {
    pub async fn build(settings: &PaymentsSettings, key_cache_ttl: Duration) -> Result<Self, AppError> {
        settings.validate().map_err(AppError::Settings)?;
        let store = Store::connect(&settings.database()).await?;
        store.migrate().await?;
        // Connected lazily: payments starts while the wallet is down, and
        // calls are refused as UNAVAILABLE until it is up.
        let wallet = lazy_channel(&settings.wallet_endpoint, "wallet", CALL_TIMEOUT)
            .map_err(|error| AppError::Settings(format!("payments: {error}")))?;
        let listeners = Listeners::bind(settings.listen, &settings.metrics_listen).await?;
        let invoicing = lazy_channel(&settings.invoicing_endpoint, "invoicing", CALL_TIMEOUT)
            .map_err(|error| AppError::Settings(format!("payments: {error}")))?;
        let owners =
            crate::clients::owners::Owners::new(wallet.clone(), invoicing, settings.wallet_service_key.clone());
        let authenticator = Arc::new(Authenticator::new(Arc::new(WalletKeyResolver::new(wallet)), key_cache_ttl));
        Ok(Self {
            listeners,
            sandbox: SandboxGateway::new(store.clone()),
            store,
            authenticator,
            gateway_timeout: Duration::from_millis(settings.gateway_timeout_ms),
            owners,
        })
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// The gateway payments charges through: the sandbox, whose ledger tests read.
    pub fn sandbox(&self) -> SandboxGateway {
        self.sandbox.clone()
    }
}

impl App for Application {
    type Error = PaymentsError;

    fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    fn listeners_mut(&mut self) -> &mut Listeners {
        &mut self.listeners
    }

    async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        let (stop, stopping) = watch::channel(false);
        let charges =
            Charges::new(self.store.clone(), Arc::new(self.sandbox.clone()), self.gateway_timeout, self.owners.clone());
        let api = PaymentsApi::new(self.store.clone(), charges, self.owners.clone(), stopping);
        let served = Served {
            name: "payments",
            service_names: &[SERVICE_NAME],
            authenticator: self.authenticator,
            database: self.store.database().clone(),
            routes: tonic::service::Routes::new(PaymentsServiceServer::new(api)),
            tasks: Vec::new(),
        };
        self.listeners.run(served, stop, shutdown).await
    }
}
