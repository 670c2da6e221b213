//! What every service does around its own parts when it starts and stops,
//! written once: bind its ports before serving (so port 0 can be asked for
//! its address), serve its routes with the guards of [`crate::serve`], tell
//! its streams and background tasks to stop when the drain begins, and wait
//! for those tasks before it reports stopped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::Routes;

use crate::auth::Authenticator;
use crate::db::Database;
use crate::limits::LimitSettings;
use crate::serve::{Port, ServeError, bind_metrics, serve};
use crate::tls::TlsSettings;

/// Why a service could not start, or stopped with an error; `E` is the
/// service's own error (its store's, when connecting or migrating fails).
#[derive(Debug, thiserror::Error)]
pub enum AppError<E: std::error::Error + 'static> {
    #[error("settings: {0}")]
    Settings(String),
    #[error("listening on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] E),
    #[error(transparent)]
    Serve(ServeError),
}

/// A service's gRPC port and scrape endpoint, bound, and the guards they
/// will be served with (defaults until the binary says otherwise).
pub struct Listeners {
    listener: TcpListener,
    metrics: Option<TcpListener>,
    /// Bounds on connections, calls in flight and each tenant's rate.
    limits: LimitSettings,
    /// TLS (and mTLS) on the port; plaintext without a certificate.
    tls: TlsSettings,
}

impl Listeners {
    /// Binds `listen`, and `metrics_listen` unless it is empty.
    pub async fn bind<E: std::error::Error + 'static>(
        listen: SocketAddr,
        metrics_listen: &str,
    ) -> Result<Self, AppError<E>> {
        let listener =
            TcpListener::bind(listen).await.map_err(|source| AppError::Listen { address: listen, source })?;
        let metrics = bind_metrics(metrics_listen).await.map_err(AppError::Settings)?;
        Ok(Self { listener, metrics, limits: LimitSettings::default(), tls: TlsSettings::default() })
    }

    /// Serves `service`'s routes until `shutdown` resolves; then sends `stop`
    /// (ending open streams and background tasks), finishes the calls in
    /// flight, and waits for each of the service's `tasks`.
    pub async fn run<E: std::error::Error + 'static>(
        self,
        service: Served<'_>,
        stop: watch::Sender<bool>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AppError<E>> {
        let Served { name, service_names, authenticator, database, routes, tasks } = service;
        tokio::spawn(crate::metrics::watch_pool(name, database.clone(), stop.subscribe()));
        let port = Port {
            listener: self.listener,
            service_names,
            authenticator,
            limits: &self.limits,
            tls: &self.tls,
            metrics: self.metrics,
            database: Some(database),
        };
        let drained = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        let served = serve(port, routes, drained).await;
        for (task, what) in tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "the {name} {what} ended abnormally");
            }
        }
        served.map_err(AppError::Serve)?;
        tracing::info!("{name} stopped");
        Ok(())
    }
}

/// What a running service serves: the parts only it has.
pub struct Served<'a> {
    /// Its short name, as in logs and metric labels: "wallet".
    pub name: &'static str,
    /// The gRPC services health reports for it.
    pub service_names: &'a [&'a str],
    pub authenticator: Arc<Authenticator>,
    /// The database its health follows.
    pub database: Database,
    pub routes: Routes,
    /// Background tasks that end when `stop` is sent, each with what it is.
    pub tasks: Vec<(JoinHandle<()>, &'static str)>,
}

/// A service built and bound, not yet serving: what the binary and the
/// tests do with any of the five.
pub trait App: Sized {
    /// The service's own error.
    type Error: std::error::Error + Send + Sync + 'static;

    fn listeners(&self) -> &Listeners;

    fn listeners_mut(&mut self) -> &mut Listeners;

    /// Serves until `shutdown` resolves, then drains (see [`Listeners::run`]).
    fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = Result<(), AppError<Self::Error>>> + Send;

    /// Serves within `limits` instead of the defaults.
    fn with_limits(mut self, limits: LimitSettings) -> Self {
        self.listeners_mut().limits = limits;
        self
    }

    /// Serves over TLS as `tls` says.
    fn with_tls(mut self, tls: TlsSettings) -> Self {
        self.listeners_mut().tls = tls;
        self
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.listeners().listener.local_addr().ok()
    }

    /// The Prometheus scrape endpoint's address, if one is served.
    fn metrics_addr(&self) -> Option<SocketAddr> {
        self.listeners().metrics.as_ref().and_then(|listener| listener.local_addr().ok())
    }
}
