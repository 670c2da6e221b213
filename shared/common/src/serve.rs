//! The serving loop every service shares: authentication, one span per call,
//! health, reflection, and a graceful stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::auth::{AuthLayer, Authenticator};
use crate::db::Database;
use crate::limits::{InFlightLayer, LimitSettings, TenantRateLayer, bounded_connections};
use crate::tls::{ServerTls, TlsSettings};

/// Calls one HTTP/2 connection may have in flight at once.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Resolves when the process is asked to stop: SIGTERM (Kubernetes) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("stop requested: finishing calls in flight");
}

/// How often the database is asked whether it answers, how long it has to
/// answer, and how many misses in a row take the services out: a pool busy
/// for a moment must not take a replica out of its Service.
const DATABASE_CHECK_EVERY: Duration = Duration::from_secs(2);
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
const DATABASE_MISSES_MAX: u32 = 3;

/// One service port: where it listens and what guards it.
pub struct Port<'a> {
    pub listener: TcpListener,
    /// The services it serves, reported SERVING by health while the
    /// process takes calls and its database answers.
    pub service_names: &'a [&'a str],
    pub authenticator: Arc<Authenticator>,
    /// The connections, the calls in flight and each tenant's rate.
    pub limits: &'a LimitSettings,
    /// TLS (and mTLS) when it has a certificate, plaintext when not.
    pub tls: &'a TlsSettings,
    /// The scrape endpoint, with `/healthz` and `/readyz`.
    pub metrics: Option<TcpListener>,
    /// The database health follows.
    pub database: Option<Database>,
}

/// Serves `routes` plus health and reflection on the port until `shutdown`
/// resolves; then stops accepting calls and returns once those in flight end.
///
/// Health answers for each of the port's services (what readiness probes
/// ask): SERVING while the process takes calls and the database answers,
/// NOT_SERVING after three missed checks two seconds apart until it answers
/// again, and from the start of a drain on. The server as a whole (the
/// empty service name, what liveness probes ask) stays SERVING while the
/// database is away: restarting the process would not bring it back.
pub async fn serve(
    port: Port<'_>,
    routes: Routes,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let Port { listener, service_names, authenticator, limits, tls, metrics, database } = port;
    let tls = ServerTls::load(tls).map_err(|error| ServeError::Tls(error.to_string()))?;
    let (background_stop, background_stopping) = tokio::sync::watch::channel(false);
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().reload_until(background_stopping.clone()));
    }
    // The scrape endpoint lives as long as the gRPC server.
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready, ready_seen) = tokio::sync::watch::channel(true);
    let metrics_server = metrics.map(|listener| {
        tokio::spawn(crate::metrics::serve(listener, crate::metrics::owner_of(service_names), ready_seen, async move {
            let _ = metrics_stopped.await;
        }))
    });
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in service_names {
        reporter.set_service_status(*name, ServingStatus::Serving).await;
    }
    let serving = Arc::new(Serving {
        reporter: reporter.clone(),
        names: service_names.iter().map(|name| (*name).to_owned()).collect(),
        ready,
        state: tokio::sync::Mutex::new(ServingState { draining: false, database_answers: true }),
    });
    if let Some(database) = database {
        tokio::spawn(follow_database(serving.clone(), database, background_stopping.clone()));
    }
    // Reflection advertises what this port serves (its services, health and
    // itself), not every service the suite's descriptors hold.
    let reflection = |itself: &'static str| {
        service_names.iter().chain(["grpc.health.v1.Health", itself].iter()).fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(reservoir_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(*name),
        )
    };
    let reflection_v1 = reflection("grpc.reflection.v1.ServerReflection")
        .build_v1()
        .map_err(|error| ServeError::Reflection(error.to_string()))?;
    let reflection_v1alpha = reflection("grpc.reflection.v1alpha.ServerReflection")
        .build_v1alpha()
        .map_err(|error| ServeError::Reflection(error.to_string()))?;
    let routes = routes.add_service(health).add_service(reflection_v1).add_service(reflection_v1alpha);
    let local: Option<SocketAddr> = listener.local_addr().ok();
    let address = local.map(|address| address.to_string()).unwrap_or_default();
    tracing::info!(%address, services = %service_names.join(","), tls = tls.is_some(), "serving");
    if tls.is_none() && local.is_some_and(|address| !address.ip().is_loopback()) {
        tracing::warn!(
            %address,
            "serving plaintext gRPC beyond this machine: bearer keys travel in clear unless a mesh (Istio, Linkerd) \
             encrypts the traffic between pods"
        );
    }
    // Without TCP_NODELAY small responses wait on delayed ACKs: tens of
    // milliseconds per call under load.
    let drain_delay = limits.drain_delay();
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(limits.keepalive_interval()));
    let served = tonic::transport::Server::builder()
        // gRPC-Web over HTTP/1.1 as well as gRPC over HTTP/2, so browser code
        // and HTTP/1.1 tools can call the API directly.
        .accept_http1(true)
        .trace_fn(crate::telemetry::rpc_span)
        // Bounds the calls one connection may have open; beyond it callers
        // queue on their side rather than in this process's memory.
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .http2_keepalive_interval(Some(limits.keepalive_interval()))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout()))
        .max_connection_age(limits.max_connection_age())
        .max_connection_age_grace(limits.max_connection_age_grace())
        .timeout(limits.call_timeout())
        // Outermost of all: a browser's preflight from a listed origin is
        // answered here, before any key is asked for, and the answers of
        // its calls carry the headers that let its page read them.
        .layer(tower::util::option_layer(crate::cors::layer(&limits.browser_origins)))
        // Then: a gRPC-Web call becomes a gRPC call on the way in and
        // its answer gRPC-Web on the way out, refusals of the layers below
        // included (gRPC calls pass through untouched).
        .layer(tonic_web::GrpcWebLayer::new())
        // A call past the limit is refused before anything else is spent on it.
        .layer(InFlightLayer::new(limits))
        .layer(AuthLayer::new(authenticator))
        // Inside authentication: the tenant is known, and nothing an
        // unauthenticated caller sends becomes a label.
        .layer(TenantRateLayer::new(limits))
        .layer(crate::metrics::RpcMetricsLayer::new(
            &[reservoir_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET],
            service_names,
        ))
        // Innermost, around the handler: the calls it makes to other
        // services carry what is left of its caller's deadline.
        .layer(crate::deadline::DeadlineLayer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            crate::tls::accept(bounded_connections(incoming, limits), tls, background_stopping),
            async move {
                shutdown.await;
                // Probes see the pod going before its port closes.
                serving.change(|state| state.draining = true).await;
                reporter.set_service_status("", ServingStatus::NotServing).await;
                // Calls still arrive while the pod is taken out of the
                // endpoints; they are served until the delay is over.
                if !drain_delay.is_zero() {
                    tracing::info!(
                        delay_ms = drain_delay.as_millis() as u64,
                        "draining: NOT_SERVING, still taking calls"
                    );
                    tokio::time::sleep(drain_delay).await;
                }
            },
        )
        .await
        .map_err(|error| ServeError::Transport(error.to_string()));
    let _ = background_stop.send(true);
    let _ = metrics_stop.send(());
    if let Some(server) = metrics_server {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the metrics endpoint failed"),
            Err(error) => tracing::warn!(%error, "the metrics endpoint ended abnormally"),
        }
    }
    served
}

/// What the port's services are reported as, and why.
struct Serving {
    reporter: tonic_health::server::HealthReporter,
    names: Vec<String>,
    /// What `/readyz` answers.
    ready: tokio::sync::watch::Sender<bool>,
    /// Held while a change is reported, so a late database check cannot
    /// report SERVING after the drain has begun.
    state: tokio::sync::Mutex<ServingState>,
}

struct ServingState {
    draining: bool,
    database_answers: bool,
}

impl Serving {
    async fn change(&self, change: impl FnOnce(&mut ServingState)) {
        let mut state = self.state.lock().await;
        let was = !state.draining && state.database_answers;
        change(&mut state);
        let now = !state.draining && state.database_answers;
        if was != now {
            let status = if now { ServingStatus::Serving } else { ServingStatus::NotServing };
            for name in &self.names {
                self.reporter.set_service_status(name, status).await;
            }
            let _ = self.ready.send(now);
        }
    }
}

/// Asks the database whether it answers every two seconds until `stopping`,
/// and takes the services out after three misses in a row, back in at the
/// first answer.
async fn follow_database(serving: Arc<Serving>, database: Database, mut stopping: tokio::sync::watch::Receiver<bool>) {
    let mut misses = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(DATABASE_CHECK_EVERY) => {}
            _ = stopping.changed() => return,
        }
        let answered =
            matches!(tokio::time::timeout(DATABASE_CHECK_TIMEOUT, database.connection().ping()).await, Ok(Ok(())));
        if answered {
            if misses >= DATABASE_MISSES_MAX {
                tracing::info!("the database answers again: SERVING");
            }
            misses = 0;
            serving.change(|state| state.database_answers = true).await;
        } else {
            misses += 1;
            if misses == DATABASE_MISSES_MAX {
                tracing::warn!(
                    checks = misses,
                    "the database has not answered: NOT_SERVING until it does (liveness stays SERVING)"
                );
                serving.change(|state| state.database_answers = false).await;
            }
        }
    }
}

/// Binds the scrape endpoint named by a `metrics_listen` setting: empty
/// means none.
pub async fn bind_metrics(listen: &str) -> Result<Option<TcpListener>, String> {
    if listen.is_empty() {
        return Ok(None);
    }
    let address: SocketAddr = listen.parse().map_err(|error| format!("metrics_listen {listen:?}: {error}"))?;
    // Installed now, before anything records: figures recorded earlier are lost.
    crate::metrics::recorder()?;
    TcpListener::bind(address).await.map(Some).map_err(|error| format!("listening on {address} for metrics: {error}"))
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("building reflection: {0}")]
    Reflection(String),
    #[error("serving: {0}")]
    Transport(String),
    #[error("{0}")]
    Tls(String),
}

/// Runs `pass` at once and then every `interval` (a slow pass delays the
/// next instead of bunching them up) until `stopping` turns true: the loop
/// of every background job.
pub async fn every<F, Fut>(interval: std::time::Duration, mut stopping: tokio::sync::watch::Receiver<bool>, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopping.changed() => return,
        }
        if *stopping.borrow() {
            return;
        }
        pass().await;
    }
}
