//! The orchestrator as a running service: settings, the server, and the
//! worker that resumes top-ups, fires recurring ones and follows events.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reservoir_common::app::{App, Listeners, Served};
use reservoir_common::auth::{Authenticator, WalletKeyResolver};
use reservoir_common::settings::DatabaseSettings;
use reservoir_proto::orchestrator::top_up_service_server::TopUpServiceServer;
use reservoir_proto::orchestrator::webhook_service_server::WebhookServiceServer;
use serde::Deserialize;
use tokio::sync::watch;

use crate::api::{TopUpApi, WebhookApi};
use crate::clients::Upstream;
use crate::error::OrchestratorError;
use crate::store::Store;
use crate::usecases::saga::{CrashPoint, Saga};
use crate::usecases::webhooks::{WebhookSettings, Webhooks};
use crate::usecases::worker::Worker;

pub const SERVICE_NAME: &str = "reservoir.orchestrator.v1.TopUpService";
pub const WEBHOOK_SERVICE_NAME: &str = "reservoir.orchestrator.v1.WebhookService";

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct OrchestratorSettings {
    /// gRPC address to listen on, such as `0.0.0.0:50055`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// `sqlite://path?mode=rwc` or `postgres://user:password@host/database` (add `sslmode=require` off-host).
    pub database_url: String,
    /// The PostgreSQL schema the orchestrator owns (created on first connection); ignored on SQLite.
    pub database_schema: String,
    /// Connections in this replica's pool.
    pub database_max_connections: u32,
    /// The wallet's gRPC address, such as `http://wallet:50051`.
    pub wallet_endpoint: String,
    /// Invoicing's gRPC address, such as `http://invoicing:50053`.
    pub invoicing_endpoint: String,
    /// Payments' gRPC address, such as `http://payments:50054`.
    pub payments_endpoint: String,
    /// The orchestrator's service key for the other services (`reservoir key issue-service`).
    pub service_key: String,
    /// How often unfinished top-ups, recurring ones and event followers are looked at.
    pub worker_interval_ms: u64,
    /// How long a replica holds a top-up it runs; one whose replica died is
    /// resumed by another after this.
    pub saga_lease_ms: u64,
    /// Failed attempts at a step (other than the charge) after which a
    /// top-up is marked REQUIRES_ACTION with an event; it is still retried.
    #[serde(default = "attempts_before_action_default")]
    pub attempts_before_action: u32,
    /// Testing only: abort the process at a saga point such as `before:CHARGE`
    /// or `after:GRANT` (or `after:CLAWBACK`, a bonus clawback taken but not
    /// yet recorded), to prove a crash there loses nothing. Empty: never.
    /// Refused by builds without the `test-hooks` feature (every build but
    /// the tests').
    #[serde(default)]
    pub crash_at: String,
    /// The Prometheus scrape endpoint, such as `0.0.0.0:9090`; empty: none.
    #[serde(default)]
    pub metrics_listen: String,
    /// Webhook deliveries.
    #[serde(default)]
    pub webhooks: WebhookSettings,
}

fn attempts_before_action_default() -> u32 {
    crate::domain::ATTEMPTS_BEFORE_ACTION_DEFAULT
}

impl OrchestratorSettings {
    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            schema: self.database_schema.clone(),
            max_connections: self.database_max_connections,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.database().validate().map_err(|error| format!("orchestrator: {error}"))?;
        for (name, endpoint) in [
            ("wallet_endpoint", &self.wallet_endpoint),
            ("invoicing_endpoint", &self.invoicing_endpoint),
            ("payments_endpoint", &self.payments_endpoint),
        ] {
            if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                return Err(format!("orchestrator: {name} must be an http(s) URL, not {endpoint:?}"));
            }
        }
        if self.service_key.is_empty() {
            return Err("orchestrator: service_key is required (reservoir key issue-service)".into());
        }
        if self.attempts_before_action == 0 {
            return Err("orchestrator: attempts_before_action must be at least 1".into());
        }
        if self.worker_interval_ms == 0 || self.saga_lease_ms == 0 {
            return Err("orchestrator: worker_interval_ms and saga_lease_ms must be at least 1".into());
        }
        self.webhooks.validate()?;
        check_crash_at(&self.crash_at, cfg!(feature = "test-hooks"))
    }
}

/// A crash point is taken only by a build with the test hooks (the tests'),
/// and only when it names one.
fn check_crash_at(crash_at: &str, hooks_built: bool) -> Result<(), String> {
    if crash_at.is_empty() {
        return Ok(());
    }
    if !hooks_built {
        return Err("orchestrator: crash_at is a test hook, and this build has none".into());
    }
    if CrashPoint::parse(crash_at).is_none() {
        return Err(format!("orchestrator: crash_at {crash_at:?} is not before:STEP, after:STEP or after:CLAWBACK"));
    }
    Ok(())
}

pub type AppError = reservoir_common::app::AppError<OrchestratorError>;

pub struct Application {
    listeners: Listeners,
    store: Store,
    saga: Saga,
    authenticator: Arc<Authenticator>,
    worker_interval: Duration,
    webhooks: WebhookSettings,
}

impl Application {
    pub async fn build(settings: &OrchestratorSettings, key_cache_ttl: Duration) -> Result<Self, AppError> {
        settings.validate().map_err(AppError::Settings)?;
        let store = Store::connect(&settings.database()).await?;
        store.migrate().await?;
        let upstream = Upstream::new(
            &settings.wallet_endpoint,
            &settings.invoicing_endpoint,
            &settings.payments_endpoint,
            settings.service_key.clone(),
        )?;
        let listeners = Listeners::bind(settings.listen, &settings.metrics_listen).await?;
        let authenticator =
            Arc::new(Authenticator::new(Arc::new(WalletKeyResolver::new(upstream.wallet_channel())), key_cache_ttl));
        let saga = Saga::new(
            store.clone(),
            upstream,
            Duration::from_millis(settings.saga_lease_ms),
            CrashPoint::parse(&settings.crash_at),
            settings.attempts_before_action,
        );
        Ok(Self {
            listeners,
            store,
            saga,
            authenticator,
            worker_interval: Duration::from_millis(settings.worker_interval_ms),
            webhooks: settings.webhooks.clone(),
        })
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }
}

impl App for Application {
    type Error = OrchestratorError;

    fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    fn listeners_mut(&mut self) -> &mut Listeners {
        &mut self.listeners
    }

    async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AppError> {
        let (stop, stopping) = watch::channel(false);
        let worker = Worker::new(self.saga.clone(), stopping.clone());
        let running = tokio::spawn({
            let stopping = stopping.clone();
            async move {
                reservoir_common::serve::every(self.worker_interval, stopping, || async {
                    if let Err(error) = worker.pass().await {
                        tracing::warn!(%error, "orchestrator pass failed; retried next pass");
                    }
                })
                .await;
            }
        });
        let webhooks =
            Webhooks::new(self.store.clone(), self.saga.upstream().clone(), self.webhooks.clone(), stopping.clone())?;
        let delivering = tokio::spawn({
            let stopping = stopping.clone();
            let interval = Duration::from_millis(self.webhooks.interval_ms);
            async move {
                reservoir_common::serve::every(interval, stopping, || async {
                    if let Err(error) = webhooks.pass().await {
                        tracing::warn!(%error, "webhook pass failed; retried next pass");
                    }
                })
                .await;
            }
        });
        let webhook_api = WebhookApi::new(self.store.clone(), &self.webhooks);
        let api = TopUpApi::new(self.saga, stopping);
        let served = Served {
            name: "orchestrator",
            service_names: &[SERVICE_NAME, WEBHOOK_SERVICE_NAME],
            authenticator: self.authenticator,
            database: self.store.database().clone(),
            routes: tonic::service::Routes::new(TopUpServiceServer::new(api))
                .add_service(WebhookServiceServer::new(webhook_api)),
            tasks: vec![(running, "worker"), (delivering, "webhook deliverer")],
        };
        self.listeners.run(served, stop, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::check_crash_at;

    /// A production build (no test hooks) refuses any crash point; a test
    /// build takes a well-formed one; none is fine for both.
    #[test]
    fn only_a_build_with_test_hooks_takes_a_crash_point() {
        assert_eq!(
            check_crash_at("before:CHARGE", false),
            Err("orchestrator: crash_at is a test hook, and this build has none".to_owned())
        );
        assert_eq!(check_crash_at("before:CHARGE", true), Ok(()));
        assert!(check_crash_at("sometime", true).is_err());
        assert_eq!(check_crash_at("", false), Ok(()));
    }
}
