//! The services as the service test suites start them in their own process:
//! one set of test settings per service (on a fresh database, a free port,
//! no metrics listener), and a wallet with a tenant, its key and a service
//! key that can be stopped and started again as an outage would. A suite
//! changes what it needs with `..` on these settings; each service is under
//! a feature of its name, so a suite builds only the services it starts.

#[cfg(feature = "wallet")]
pub use self::wallet::{TestWallet, settings as wallet_settings};

/// The pepper every suite's keys are hashed with.
pub const PEPPER: &str = "test-pepper";

/// How long a service trusts a key it checked, in the suites.
pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// What every suite's services check keys with.
pub fn auth_settings() -> reservoir_common::settings::AuthSettings {
    reservoir_common::settings::AuthSettings {
        api_key_pepper: PEPPER.into(),
        key_cache_ttl_ms: u64::try_from(KEY_CACHE_TTL.as_millis()).unwrap_or(u64::MAX),
    }
}

#[cfg(feature = "wallet")]
fn any_port() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

#[cfg(feature = "wallet")]
fn endpoint(address: std::net::SocketAddr) -> String {
    format!("http://{address}")
}

#[cfg(feature = "wallet")]
mod wallet {
    use std::net::SocketAddr;
    use std::time::Duration;

    use chrono::Utc;
    use reservoir_common::app::App;
    use reservoir_common::auth::TenantId;
    use reservoir_wallet::app::{Application, WalletSettings};
    use reservoir_wallet::store::Store;

    use super::{PEPPER, any_port, auth_settings};
    use crate::{Running, TestDatabase};

    /// The wallet's settings in a suite, on `database`.
    pub fn settings(database: &TestDatabase) -> WalletSettings {
        WalletSettings {
            listen: any_port(),
            database_url: database.url.clone(),
            database_schema: database.schema.clone(),
            database_max_connections: 16,
            sweep_interval_ms: 100,
            committers: 4,
            metrics_listen: String::new(),
        }
    }

    /// A wallet serving a suite: a tenant with a key, and a service key the
    /// suite's other services call it with.
    pub struct TestWallet {
        pub address: SocketAddr,
        pub store: Store,
        pub tenant: TenantId,
        /// The tenant's key.
        pub key: String,
        pub service_key: String,
        settings: WalletSettings,
        running: Option<Running>,
    }

    impl TestWallet {
        /// Starts a wallet with `settings` (its listen address is kept, so
        /// that a restart takes the same port).
        pub async fn start(mut settings: WalletSettings) -> Self {
            let application = Application::build(&settings, &auth_settings()).await.expect("building the wallet");
            let address = application.local_addr().expect("a bound address");
            settings.listen = address;
            let store = application.store();
            let tenant = store.create_tenant("test", Utc::now()).await.expect("a tenant");
            let key = store.issue_key(tenant, PEPPER, Utc::now()).await.expect("a key").key;
            let service_key = store.issue_service_key(PEPPER, Utc::now()).await.expect("a service key").key;
            let running = Some(Running::start(application));
            Self { address, store, tenant, key, service_key, settings, running }
        }

        /// A wallet with the suites' settings on `database`.
        pub async fn on(database: &TestDatabase) -> Self {
            Self::start(settings(database)).await
        }

        /// Another tenant, with a key of its own.
        pub async fn other_tenant(&self, name: &str) -> (TenantId, String) {
            let tenant = self.store.create_tenant(name, Utc::now()).await.expect("a tenant");
            let key = self.store.issue_key(tenant, PEPPER, Utc::now()).await.expect("a key").key;
            (tenant, key)
        }

        /// A client of the wallet with the tenant's key.
        pub async fn client(&self) -> crate::wallet::Client {
            crate::wallet::client(self.address, &self.key).await
        }

        /// Stops the wallet, as an outage would.
        pub async fn stop(&mut self) {
            if let Some(running) = self.running.take() {
                running.stop().await;
            }
        }

        /// Starts the wallet again on the same address and database.
        pub async fn restart(&mut self) {
            let mut attempts = 0;
            let application = loop {
                match Application::build(&self.settings, &auth_settings()).await {
                    Ok(application) => break application,
                    // The old listener may take a moment to let go of the port.
                    Err(_) if attempts < 50 => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => panic!("restarting the wallet: {error}"),
                }
            };
            self.running = Some(Running::start(application));
        }
    }
}

/// Metering's settings in a suite, on `database`, drawing from `wallet`.
#[cfg(feature = "metering")]
pub fn metering_settings(
    database: &crate::TestDatabase,
    wallet: &TestWallet,
) -> reservoir_metering::app::MeteringSettings {
    reservoir_metering::app::MeteringSettings {
        listen: any_port(),
        database_url: database.url.clone(),
        database_schema: database.schema.clone(),
        database_max_connections: 8,
        wallet_endpoint: endpoint(wallet.address),
        wallet_service_key: wallet.service_key.clone(),
        worker_interval_ms: 200,
        metrics_listen: String::new(),
    }
}

/// Invoicing's settings in a suite, on `database`, with `wallet` and the
/// metering at `metering` (none: nothing listens there, no statement is made).
#[cfg(feature = "invoicing")]
pub fn invoicing_settings(
    database: &crate::TestDatabase,
    wallet: &TestWallet,
    metering: Option<std::net::SocketAddr>,
) -> reservoir_invoicing::app::InvoicingSettings {
    reservoir_invoicing::app::InvoicingSettings {
        listen: any_port(),
        database_url: database.url.clone(),
        database_schema: database.schema.clone(),
        database_max_connections: 8,
        wallet_endpoint: endpoint(wallet.address),
        metering_endpoint: metering.map_or_else(|| "http://127.0.0.1:9".to_owned(), endpoint),
        service_key: wallet.service_key.clone(),
        payment_due_days_default: 14,
        worker_interval_ms: 1_000,
        metrics_listen: String::new(),
        smtp_url: String::new(),
        report_from: "Reservoir <reservoir@localhost>".into(),
    }
}

/// Payments' settings in a suite, on `database`, with `wallet` and the
/// invoicing at `invoicing`.
#[cfg(feature = "payments")]
pub fn payments_settings(
    database: &crate::TestDatabase,
    wallet: &TestWallet,
    invoicing: std::net::SocketAddr,
) -> reservoir_payments::app::PaymentsSettings {
    reservoir_payments::app::PaymentsSettings {
        listen: any_port(),
        database_url: database.url.clone(),
        database_schema: database.schema.clone(),
        database_max_connections: 8,
        wallet_endpoint: endpoint(wallet.address),
        wallet_service_key: wallet.service_key.clone(),
        invoicing_endpoint: endpoint(invoicing),
        gateway_timeout_ms: 5_000,
        metrics_listen: String::new(),
    }
}

/// The orchestrator's settings in a suite, on `database`, with `wallet` and
/// the invoicing and payments at the addresses given.
#[cfg(feature = "orchestrator")]
pub fn orchestrator_settings(
    database: &crate::TestDatabase,
    wallet: &TestWallet,
    invoicing: std::net::SocketAddr,
    payments: std::net::SocketAddr,
) -> reservoir_orchestrator::app::OrchestratorSettings {
    reservoir_orchestrator::app::OrchestratorSettings {
        listen: any_port(),
        database_url: database.url.clone(),
        database_schema: database.schema.clone(),
        database_max_connections: 8,
        wallet_endpoint: endpoint(wallet.address),
        invoicing_endpoint: endpoint(invoicing),
        payments_endpoint: endpoint(payments),
        service_key: wallet.service_key.clone(),
        worker_interval_ms: 100,
        saga_lease_ms: 1_000,
        attempts_before_action: 8,
        crash_at: String::new(),
        metrics_listen: String::new(),
        webhooks: Default::default(),
    }
}
