//! Metering as a running service: settings, the server, and the worker that
//! finishes every debit a crash or a wallet outage interrupted.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reservoir_common::app::{App, Listeners, Served};
use reservoir_common::auth::{Authenticator, WalletKeyResolver};
use reservoir_common::settings::DatabaseSettings;
use reservoir_proto::metering::metering_service_server::MeteringServiceServer;
use serde::Deserialize;
use tokio::sync::watch;

use crate::api::MeteringApi;
use crate::clients::wallet::WalletGateway;
use crate::error::MeteringError;
use crate::store::Store;
use crate::usecases::worker::work;

pub const SERVICE_NAME: &str = "reservoir.metering.v1.MeteringService";

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct MeteringSettings {
    /// gRPC address to listen on, such as `0.0.0.0:50052`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// `sqlite://path?mode=rwc` or `postgres://user:password@host/database` (add `sslmode=require` off-host).
    pub database_url: String,
    /// The PostgreSQL schema metering owns (created on first connection); ignored on SQLite.
    pub database_schema: String,
    /// Connections in this replica's pool.
    pub database_max_connections: u32,
    /// The wallet's gRPC address, such as `http://wallet:50051`.
    pub wallet_endpoint: String,
    /// Metering's service key for the wallet (`reservoir key issue-service`).
    pub wallet_service_key: String,
    /// How often pending debits, settlements and expiries are looked at.
    pub worker_interval_ms: u64,
    /// The Prometheus scrape endpoint, such as `0.0.0.0:9090`; empty: none.
    #[serde(default)]
    pub metrics_listen: String,
}

impl MeteringSettings {
    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            schema: self.database_schema.clone(),
            max_connections: self.database_max_connections,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.database().validate().map_err(|error| format!("metering: {error}"))?;
        if !self.wallet_endpoint.starts_with("http://") && !self.wallet_endpoint.starts_with("https://") {
            return Err(format!("metering: wallet_endpoint must be an http(s) URL, not {:?}", self.wallet_endpoint));
        }
        if self.wallet_service_key.is_empty() {
            return Err("metering: wallet_service_key is required (reservoir key issue-service)".into());
        }
        if self.worker_interval_ms == 0 {
            return Err("metering: worker_interval_ms must be at least 1".into());
        }
        Ok(())
    }
}

pub type AppError = reservoir_common::app::AppError<MeteringError>;

pub struct Application {
    listeners: Listeners,
    store: Store,
    wallet: WalletGateway,
    authenticator: Arc<Authenticator>,
    worker_interval: Duration,
}

impl Application {
    pub async fn build(settings: &MeteringSettings, key_cache_ttl: Duration) -> Result<Self, AppError> {
        settings.validate().map_err(AppError::Settings)?;
        let store = Store::connect(&settings.database()).await?;
        store.migrate().await?;
        let wallet = WalletGateway::new(&settings.wallet_endpoint, settings.wallet_service_key.clone())?;
        let listeners = Listeners::bind(settings.listen, &settings.metrics_listen).await?;
        let authenticator =
            Arc::new(Authenticator::new(Arc::new(WalletKeyResolver::new(wallet.channel())), key_cache_ttl));
        Ok(Self {
            listeners,
            store,
            wallet,
            authenticator,
            worker_interval: Duration::from_millis(settings.worker_interval_ms),
        })
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }
}

impl App for Application {
    type Error = MeteringError;

    fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    fn listeners_mut(&mut self) -> &mut Listeners {
        &mut self.listeners
    }

    async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        let (stop, stopping) = watch::channel(false);
        let api = MeteringApi::new(self.store.clone(), self.wallet.clone());
        let worker = tokio::spawn(work(self.store.clone(), self.wallet.clone(), self.worker_interval, stopping));
        let served = Served {
            name: "metering",
            service_names: &[SERVICE_NAME],
            authenticator: self.authenticator,
            database: self.store.database().clone(),
            routes: tonic::service::Routes::new(MeteringServiceServer::new(api)),
            tasks: vec![(worker, "worker")],
        };
        self.listeners.run(served, stop, shutdown).await
    }
}
