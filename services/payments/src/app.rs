//! Payments as a running service: settings, the gateway, and the server,
//! built once and run until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reservoir_common::auth::{Authenticator, WalletKeyResolver};
use reservoir_common::limits::LimitSettings;
use reservoir_common::serve::{Port, ServeError, serve};
use reservoir_common::settings::DatabaseSettings;
use reservoir_common::tls::TlsSettings;
use reservoir_proto::payments::payments_service_server::PaymentsServiceServer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::PaymentsApi;
use crate::clients::gateway::SandboxGateway;
use crate::error::PaymentsError;
use crate::store::Store;

/// The gRPC service name, as health checks ask for it.
pub const SERVICE_NAME: &str = "reservoir.payments.v1.PaymentsService";

/// How long asking the wallet who holds a key may take.
const WALLET_CALL_TIMEOUT: Duration = Duration::from_secs(10);
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

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("settings: {0}")]
    Settings(String),
    #[error("listening on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] PaymentsError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

pub struct Application {
    listener: TcpListener,
    metrics: Option<TcpListener>,
    store: Store,
    sandbox: SandboxGateway,
    authenticator: Arc<Authenticator>,
    /// Bounds on connections, calls in flight and each tenant's rate.
    limits: LimitSettings,
    /// TLS (and mTLS) on the port; plaintext without a certificate.
    tls: TlsSettings,
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
        let wallet = reservoir_common::tls::endpoint(&settings.wallet_endpoint)
            .map_err(|error| AppError::Settings(format!("payments: wallet_endpoint: {error}")))?
            .timeout(WALLET_CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| AppError::Listen { address: settings.listen, source })?;
        let metrics =
            reservoir_common::serve::bind_metrics(&settings.metrics_listen).await.map_err(AppError::Settings)?;
        let invoicing = reservoir_common::tls::endpoint(&settings.invoicing_endpoint)
            .map_err(|error| AppError::Settings(format!("payments: invoicing_endpoint: {error}")))?
            .timeout(WALLET_CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        let owners =
            crate::clients::owners::Owners::new(wallet.clone(), invoicing, settings.wallet_service_key.clone());
        let authenticator = Arc::new(Authenticator::new(Arc::new(WalletKeyResolver::new(wallet)), key_cache_ttl));
        Ok(Self {
            limits: LimitSettings::default(),
            tls: TlsSettings::default(),
            listener,
            metrics,
            sandbox: SandboxGateway::new(store.clone()),
            store,
            authenticator,
            gateway_timeout: Duration::from_millis(settings.gateway_timeout_ms),
            owners,
        })
    }

    /// Serves within `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: LimitSettings) -> Self {
        self.limits = limits;
        self
    }

    /// Serves over TLS as `tls` says.
    pub fn with_tls(mut self, tls: TlsSettings) -> Self {
        self.tls = tls;
        self
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The Prometheus scrape endpoint's address, if one is served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// The gateway payments charges through: the sandbox, whose ledger tests read.
    pub fn sandbox(&self) -> SandboxGateway {
        self.sandbox.clone()
    }

    /// Serves until `shutdown` resolves, then stops taking calls, ends the
    /// open event streams and returns once the calls in flight are done.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        let (stop_sender, stopping) = watch::channel(false);
        tokio::spawn(reservoir_common::metrics::watch_pool(
            "payments",
            self.store.database().clone(),
            stopping.clone(),
        ));
        let api = PaymentsApi::new(
            self.store.clone(),
            Arc::new(self.sandbox.clone()),
            self.gateway_timeout,
            self.owners.clone(),
            stopping,
        );
        let routes = tonic::service::Routes::new(PaymentsServiceServer::new(api));
        let stop = async move {
            shutdown.await;
            let _ = stop_sender.send(true);
        };
        let port = Port {
            listener: self.listener,
            service_names: &[SERVICE_NAME],
            authenticator: self.authenticator,
            limits: &self.limits,
            tls: &self.tls,
            metrics: self.metrics,
            database: Some(self.store.database().clone()),
        };
        serve(port, routes, stop).await?;
        tracing::info!("payments stopped");
        Ok(())
    }
}
