//! The wallet as a running service: settings, the server, and the expiry
//! sweeper, built once and run until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reservoir_common::app::{App, Listeners, Served};
use reservoir_common::auth::Authenticator;
use reservoir_common::settings::{AuthSettings, DatabaseSettings};
use reservoir_proto::wallet::admin_service_server::AdminServiceServer;
use reservoir_proto::wallet::wallet_service_server::WalletServiceServer;
use serde::Deserialize;
use tokio::sync::watch;

use crate::api::{AdminApi, WalletApi};
use crate::error::WalletError;
use crate::store::{IssuedKey, Store, StoreKeyResolver};
use crate::usecases::sweep::sweep;

/// The gRPC service name, as health checks ask for it.
pub const SERVICE_NAME: &str = "reservoir.wallet.v1.WalletService";
pub const ADMIN_SERVICE_NAME: &str = "reservoir.wallet.v1.AdminService";

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct WalletSettings {
    /// gRPC address to listen on, such as `0.0.0.0:50051`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// `sqlite://path?mode=rwc` or `postgres://user:password@host/database` (add `sslmode=require` off-host).
    pub database_url: String,
    /// The PostgreSQL schema the wallet owns (created on first connection); ignored on SQLite.
    pub database_schema: String,
    /// Connections in this replica's pool.
    pub database_max_connections: u32,
    /// How often expired grants and holds are written off. They stop counting
    /// at their expiry instant regardless; this only decides when the EXPIRY
    /// entries and events appear.
    pub sweep_interval_ms: u64,
    /// The Prometheus scrape endpoint, such as `0.0.0.0:9090`; empty: none.
    #[serde(default)]
    pub metrics_listen: String,
    /// Group committers on PostgreSQL: batches of different accounts commit
    /// side by side, one per committer (each keeps two batches in flight).
    /// Fewer, larger batches cost the database less; more overlap the round
    /// trips. With the database on 2 cores, 1 beat 2 and 4 on every load of
    /// the bench; raise it with the database's cores. SQLite has one writer
    /// and one committer.
    #[serde(default = "default_committers")]
    pub committers: usize,
}

/// One committer, two batches in flight: one is written while the other is
/// decided. Measured against 2 and 4 in docs/PERFORMANCE.md.
pub fn default_committers() -> usize {
    1
}

impl WalletSettings {
    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            schema: self.database_schema.clone(),
            max_connections: self.database_max_connections,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.database().validate().map_err(|error| format!("wallet: {error}"))?;
        if self.sweep_interval_ms == 0 {
            return Err("wallet: sweep_interval_ms must be at least 1".into());
        }
        if !(1..=64).contains(&self.committers) {
            return Err("wallet: committers must be 1 to 64".into());
        }
        Ok(())
    }
}

pub type AppError = reservoir_common::app::AppError<WalletError>;

pub struct Application {
    listeners: Listeners,
    store: Store,
    authenticator: Arc<Authenticator>,
    sweep_interval: Duration,
    /// Keys AdminService issues are stored as their hash under it.
    pepper: String,
}

impl Application {
    /// Connects, migrates and binds; nothing is served until [`Self::run_until`].
    pub async fn build(settings: &WalletSettings, auth: &AuthSettings) -> Result<Self, AppError> {
        settings.validate().map_err(AppError::Settings)?;
        let store = Store::connect(&settings.database(), settings.committers).await?;
        store.migrate().await?;
        let listeners = Listeners::bind(settings.listen, &settings.metrics_listen).await?;
        let resolver = StoreKeyResolver { store: store.clone(), pepper: auth.api_key_pepper.clone() };
        let authenticator =
            Arc::new(Authenticator::new(Arc::new(resolver), Duration::from_millis(auth.key_cache_ttl_ms)));
        Ok(Self {
            listeners,
            store,
            authenticator,
            sweep_interval: Duration::from_millis(settings.sweep_interval_ms),
            pepper: auth.api_key_pepper.clone(),
        })
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// A new installation's first tenant and its ADMIN key, when the wallet
    /// has no tenant yet (what `reservoir up` hands a developer); `None`
    /// once there is one.
    pub async fn first_tenant(&self, name: &str) -> Result<Option<IssuedKey>, WalletError> {
        if !self.store.list_tenants().await?.is_empty() {
            return Ok(None);
        }
        let now = chrono::Utc::now();
        let tenant = self.store.create_tenant(name, now).await?;
        self.store.issue_key(tenant, &self.pepper, now).await.map(Some)
    }

    /// A key for the suite's own services, issued by the wallet this process
    /// runs (`reservoir up` hands it to the other services).
    pub async fn issue_service_key(&self) -> Result<IssuedKey, WalletError> {
        self.store.issue_service_key(&self.pepper, chrono::Utc::now()).await
    }
}

/// The first service key of an installation, written straight to the
/// wallet's database as migrations are: AdminService takes a key, so the
/// first one cannot come from it (`reservoir key issue-service --bootstrap`).
pub async fn bootstrap_service_key(settings: &WalletSettings, auth: &AuthSettings) -> Result<IssuedKey, AppError> {
    settings.validate().map_err(AppError::Settings)?;
    let store = Store::connect(&settings.database(), 1).await?;
    store.migrate().await?;
    Ok(store.issue_service_key(&auth.api_key_pepper, chrono::Utc::now()).await?)
}

impl App for Application {
    type Error = WalletError;

    fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    fn listeners_mut(&mut self) -> &mut Listeners {
        &mut self.listeners
    }

    /// Serves until `shutdown` resolves, then stops taking calls, lets those
    /// in flight finish, and stops the sweeper.
    async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        let (stop, stopping) = watch::channel(false);
        let sweeper = tokio::spawn(sweep(self.store.clone(), self.sweep_interval, stopping.clone()));
        let api = WalletApi::new(self.store.clone(), stopping);
        let admin = AdminApi::new(self.store.clone(), self.pepper);
        let served = Served {
            name: "wallet",
            service_names: &[SERVICE_NAME, ADMIN_SERVICE_NAME],
            authenticator: self.authenticator,
            database: self.store.database().clone(),
            routes: tonic::service::Routes::new(WalletServiceServer::new(api))
                .add_service(AdminServiceServer::new(admin)),
            tasks: vec![(sweeper, "expiry sweeper")],
        };
        self.listeners.run(served, stop, shutdown).await
    }
}
