//! The console as a running service: its settings, the listener, and a
//! graceful stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;

use crate::api::{Console, router};
use crate::clients::{Endpoints, Upstream};
use crate::store::Sessions;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct ConsoleSettings {
    /// HTTP address to listen on, such as `127.0.0.1:8080`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The wallet's gRPC address, such as `http://wallet:50051`.
    pub wallet_endpoint: String,
    /// Metering's gRPC address, such as `http://metering:50052`.
    pub metering_endpoint: String,
    /// Invoicing's gRPC address, such as `http://invoicing:50053`.
    pub invoicing_endpoint: String,
    /// The orchestrator's gRPC address, such as `http://orchestrator:50055`.
    pub orchestrator_endpoint: String,
    /// A session ends after this long without a page.
    #[serde(default = "session_idle_ms_default")]
    pub session_idle_ms: u64,
    /// Sessions kept at most; beyond it the one seen least recently ends.
    #[serde(default = "max_sessions_default")]
    pub max_sessions: usize,
    /// Cookies sent over HTTPS only. Unset: on unless `listen` is a loopback
    /// address (behind a TLS-terminating ingress, leave it unset or true).
    #[serde(default)]
    pub secure_cookies: Option<bool>,
    /// The Prometheus scrape endpoint (with /healthz and /readyz), such as `0.0.0.0:9056`; empty: none.
    #[serde(default)]
    pub metrics_listen: String,
}

fn session_idle_ms_default() -> u64 {
    30 * 60 * 1000
}

fn max_sessions_default() -> usize {
    10_000
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleAppError {
    #[error("{0}")]
    Settings(String),
    #[error("listening on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("serving: {0}")]
    Serve(std::io::Error),
}

pub struct Application {
    listener: TcpListener,
    metrics: Option<TcpListener>,
    console: Arc<Console>,
}

impl Application {
    pub async fn build(settings: &ConsoleSettings) -> Result<Self, ConsoleAppError> {
        let upstream = Upstream::new(&Endpoints {
            wallet: &settings.wallet_endpoint,
            metering: &settings.metering_endpoint,
            invoicing: &settings.invoicing_endpoint,
            orchestrator: &settings.orchestrator_endpoint,
        })
        .map_err(ConsoleAppError::Settings)?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|error| ConsoleAppError::Listen(settings.listen, error))?;
        let metrics =
            reservoir_common::serve::bind_metrics(&settings.metrics_listen).await.map_err(ConsoleAppError::Settings)?;
        let secure_cookies = settings.secure_cookies.unwrap_or(!settings.listen.ip().is_loopback());
        let sessions = Sessions::new(Duration::from_millis(settings.session_idle_ms), settings.max_sessions);
        Ok(Self { listener, metrics, console: Arc::new(Console { upstream, sessions, secure_cookies }) })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` completes, then lets the requests in flight finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ConsoleAppError> {
        let (ready, readiness) = tokio::sync::watch::channel(true);
        let (stopped, stopping) = tokio::sync::watch::channel(false);
        let metrics = self.metrics.map(|listener| {
            let mut stopping = stopping.clone();
            tokio::spawn(reservoir_common::metrics::serve(listener, "console".to_owned(), readiness, async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            }))
        });
        let served = axum::serve(self.listener, router(self.console))
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = ready.send(false);
                tracing::info!("draining: finishing the requests in flight");
            })
            .await
            .map_err(ConsoleAppError::Serve);
        let _ = stopped.send(true);
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        served
    }
}
