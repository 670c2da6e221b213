//! Prometheus metrics. One recorder per process; each service serves the
//! text exposition on an HTTP port of its own (`metrics_listen` in its
//! settings), and [`RpcMetricsLayer`] counts every call by method and gRPC
//! status code and times it. Services add their own domain counters with
//! the `metrics` macros.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Call latency buckets, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process's CPU, memory, open files and threads (`process_*`), read
/// at each scrape.
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// The five services and the console, as series name them.
const SERVICES: [&str; 6] = ["wallet", "metering", "invoicing", "payments", "orchestrator", "console"];

/// The process's recorder, installed on first use.
pub fn recorder() -> Result<PrometheusHandle, String> {
    RECORDER
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .map_err(|error| error.to_string())?
                .install_recorder()
                .map_err(|error| format!("installing the metrics recorder: {error}"))?;
            describe();
            PROCESS.get_or_init(metrics_process::Collector::default).describe();
            Ok(handle)
        })
        .clone()
}

/// The `# HELP` text of the series every service shares, and the build's
/// version as `reservoir_build_info` (always 1), so a dashboard can tell
/// which release each pod runs.
fn describe() {
    metrics::describe_counter!(
        "reservoir_rpc_requests_total",
        "Calls answered, by server, service, method and gRPC code (unknown methods counted as unknown)."
    );
    metrics::describe_histogram!(
        "reservoir_rpc_duration_seconds",
        metrics::Unit::Seconds,
        "How long calls took until answered, by server, service and method."
    );
    metrics::describe_counter!(
        "reservoir_rpc_refused_total",
        "Calls and connections refused before reaching a method, by reason."
    );
    metrics::describe_counter!(
        "reservoir_tls_reloads_total",
        "Changes of the TLS certificate files taken up (loaded) or not (failed)."
    );
    metrics::describe_gauge!("reservoir_db_pool_connections", "Database pool connections, by service and state.");
    metrics::describe_gauge!("reservoir_build_info", "Always 1: the running build's version as a label.");
    metrics::gauge!("reservoir_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes, with
/// `GET /healthz` (200 while the process serves) and `GET /readyz` (200
/// while `ready` is true, 503 once the service drains) for probes that
/// cannot speak gRPC over TLS.
///
/// `owner` is the service of the port (`wallet`, …). The process has one
/// recorder, and under `reservoir up` one process runs all five services:
/// each port shows only the series of its own service (see [`owned`]), so
/// scraping every port counts each call once.
pub async fn serve(
    listener: TcpListener,
    owner: String,
    ready: tokio::sync::watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = recorder().map_err(std::io::Error::other)?;
    let owner: Arc<str> = owner.into();
    let router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let (handle, owner) = (handle.clone(), owner.clone());
                async move {
                    if let Some(process) = PROCESS.get() {
                        process.collect();
                    }
                    handle.run_upkeep();
                    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], owned(&handle.render(), &owner))
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "serving\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = *ready.borrow();
                async move {
                    if ready {
                        (http::StatusCode::OK, "ready\n")
                    } else {
                        (http::StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                    }
                }
            }),
        );
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// The lines of a Prometheus text exposition that belong on `owner`'s
/// port: a series naming a service (`reservoir_<service>_…`, or a
/// `server` label, as every call's series has, or a `service` label naming
/// it) only on that service's port; a
/// series of the process (`process_*`, build info, connections refused,
/// TLS reloads) on every port. `# HELP` and `# TYPE` lines go with their
/// series.
///
/// Filtering the rendered text is written here because the `metrics`
/// facade has one recorder per process, and no exporter splits one by a
/// label.
pub(crate) fn owned(exposition: &str, owner: &str) -> String {
    let belongs = |sample: &str| match series_service(sample) {
        Some(service) => service == owner,
        None => true,
    };
    let mut out = String::with_capacity(exposition.len());
    // A family's comments come before its samples: held until one is kept.
    let mut comments: Vec<&str> = Vec::new();
    for line in exposition.lines() {
        if line.starts_with('#') {
            // A new family's comments replace those of one with nothing kept.
            let family = |comment: &str| comment.split_whitespace().nth(2).map(str::to_owned);
            if comments.last().is_some_and(|last| family(last) != family(line)) {
                comments.clear();
            }
            comments.push(line);
            continue;
        }
        if line.is_empty() || !belongs(line) {
            continue;
        }
        for comment in comments.drain(..) {
            out.push_str(comment);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The service a sample line names, if any.
fn series_service(sample: &str) -> Option<&'static str> {
    let name_end = sample.find(['{', ' ']).unwrap_or(sample.len());
    let name = &sample[..name_end];
    let labels = sample[name_end..].strip_prefix('{').and_then(|rest| rest.rfind('}').map(|end| &rest[..end]));
    SERVICES.into_iter().find(|service| {
        name.strip_prefix("reservoir_").is_some_and(|rest| rest.starts_with(&format!("{service}_")))
            || labels.is_some_and(|labels| {
                labels.contains(&format!("server=\"{service}\"")) || labels.contains(&format!("service=\"{service}\""))
            })
    })
}

/// The short name of a port's service, from the first gRPC service it
/// serves: `reservoir.wallet.v1.WalletService` → `wallet`.
pub fn owner_of(service_names: &[&str]) -> String {
    service_names
        .first()
        .and_then(|name| name.strip_prefix("reservoir.")?.split('.').next())
        .unwrap_or("unknown")
        .to_owned()
}

/// Sets `reservoir_db_pool_connections{service, state}` (in use, idle) from
/// the pool every few seconds until `stopping` turns true.
pub async fn watch_pool(
    service: &'static str,
    database: crate::db::Database,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    crate::serve::every(std::time::Duration::from_secs(5), stopping, || async {
        if let Some((open, idle)) = database.pool_connections() {
            let in_use = open.saturating_sub(idle);
            metrics::gauge!("reservoir_db_pool_connections", "service" => service, "state" => "in_use")
                .set(in_use as f64);
            metrics::gauge!("reservoir_db_pool_connections", "service" => service, "state" => "idle").set(idle as f64);
        }
    })
    .await;
}

/// Counts and times every call when it ends (a stream when it is over):
/// `reservoir_rpc_requests_total{service, method, code}` and
/// `reservoir_rpc_duration_seconds{service, method}`.
/// Only methods this server has are labelled by name; any other path,
/// whoever sends it and whatever it is refused with, counts as
/// `unknown`/`unknown`, so no caller can add a series.
#[derive(Clone, Default)]
pub struct RpcMetricsLayer {
    known: Arc<HashMap<String, Arc<MethodSeries>>>,
    unknown: Arc<MethodSeries>,
}

/// The series of one method on one server, each registered with the
/// recorder the first time it is needed and kept: a call ends by
/// incrementing a counter and recording a duration, with no label built,
/// allocated or looked up on the way.
#[derive(Default)]
struct MethodSeries {
    server: Arc<str>,
    service: String,
    method: String,
    duration: OnceLock<metrics::Histogram>,
    /// By gRPC code (0 to 16); a series exists once a call ended with its code.
    calls: [OnceLock<metrics::Counter>; 17],
}

impl MethodSeries {
    fn new(server: &Arc<str>, path: &str) -> Self {
        let (service, method) = service_and_method(path);
        Self { server: server.clone(), service, method, ..Self::default() }
    }

    fn record(&self, code: tonic::Code, elapsed: std::time::Duration) {
        let index = usize::try_from(code as i32).unwrap_or(0).min(self.calls.len() - 1);
        self.calls[index]
            .get_or_init(|| {
                metrics::counter!(
                    "reservoir_rpc_requests_total",
                    "server" => self.server.clone(),
                    "service" => self.service.clone(),
                    "method" => self.method.clone(),
                    "code" => format!("{code:?}"),
                )
            })
            .increment(1);
        self.duration
            .get_or_init(|| {
                metrics::histogram!(
                    "reservoir_rpc_duration_seconds",
                    "server" => self.server.clone(),
                    "service" => self.service.clone(),
                    "method" => self.method.clone()
                )
            })
            .record(elapsed.as_secs_f64());
    }
}

impl RpcMetricsLayer {
    /// Labels by name the methods of `services` found in `descriptor_sets`
    /// (encoded `FileDescriptorSet`s), besides health and reflection.
    pub fn new(descriptor_sets: &[&[u8]], services: &[&str]) -> Self {
        let mut paths: Vec<String> = [
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let served = |name: &str| name == "grpc.health.v1.Health" || services.contains(&name);
        paths.extend(
            method_paths(descriptor_sets).into_iter().filter(|(service, _)| served(service)).map(|(_, path)| path),
        );
        let server: Arc<str> = owner_of(services).into();
        let known = paths.into_iter().map(|path| (path.clone(), Arc::new(MethodSeries::new(&server, &path)))).collect();
        Self { known: Arc::new(known), unknown: Arc::new(MethodSeries::new(&server, "/unknown/unknown")) }
    }
}

/// The decoded `FileDescriptorSet`s of `descriptor_sets`.
pub(crate) fn decoded(descriptor_sets: &[&[u8]]) -> Vec<prost_types::FileDescriptorSet> {
    descriptor_sets.iter().filter_map(|encoded| prost::Message::decode(*encoded).ok()).collect()
}

/// Every method of `sets`: its service's full name, its path
/// (`/package.Service/Method`) and its descriptor.
pub(crate) fn methods(
    sets: &[prost_types::FileDescriptorSet],
) -> impl Iterator<Item = (String, String, &prost_types::MethodDescriptorProto)> {
    sets.iter().flat_map(|set| &set.file).flat_map(|file| {
        file.service.iter().flat_map(move |service| {
            let name = format!("{}.{}", file.package(), service.name());
            service.method.iter().map(move |method| (name.clone(), format!("/{name}/{}", method.name()), method))
        })
    })
}

/// Every method in `descriptor_sets` (encoded `FileDescriptorSet`s): its
/// service's full name and its path, `/package.Service/Method`.
pub(crate) fn method_paths(descriptor_sets: &[&[u8]]) -> Vec<(String, String)> {
    methods(&decoded(descriptor_sets)).map(|(service, path, _)| (service, path)).collect()
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner, known: self.known.clone(), unknown: self.unknown.clone() }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    known: Arc<HashMap<String, Arc<MethodSeries>>>,
    unknown: Arc<MethodSeries>,
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let series = self.known.get(request.uri().path()).unwrap_or(&self.unknown).clone();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            // Polled inside the call's span (tonic enters it around the
            // response future); kept until the body ends, so the span lasts
            // as long as the call, a stream's included.
            let call = Call { series, started, span: tracing::Span::current() };
            match future.await {
                Ok(response) => {
                    let headers_code = grpc_status(response.headers());
                    Ok(response.map(|body| tonic::body::Body::new(Ending::new(body, call, headers_code))))
                }
                Err(error) => {
                    call.end(tonic::Code::Internal);
                    Err(error)
                }
            }
        })
    }
}

/// One call being counted: recorded once, when it ends.
struct Call {
    series: Arc<MethodSeries>,
    started: Instant,
    span: tracing::Span,
}

impl EndOfCall for Call {
    fn end(self, code: tonic::Code) {
        crate::telemetry::end_rpc_span(&self.span, code);
        self.series.record(code, self.started.elapsed());
    }
}

/// What is done when a call ends, with the status it ended with.
pub(crate) trait EndOfCall {
    fn end(self, code: tonic::Code);
}

/// A response body that ends its call when it ends, with the status it
/// ended with: in the headers for a call refused at once, in the trailers
/// for one answered (a stream's status comes only there, once it is over:
/// DEADLINE_EXCEEDED for one [`crate::deadline::DeadlineLayer`] ended),
/// CANCELLED for one the caller went away from.
pub(crate) struct Ending<C: EndOfCall> {
    inner: tonic::body::Body,
    call: Option<C>,
    headers_code: Option<tonic::Code>,
}

impl<C: EndOfCall> Ending<C> {
    pub(crate) fn new(inner: tonic::body::Body, call: C, headers_code: Option<tonic::Code>) -> Self {
        Self { inner, call: Some(call), headers_code }
    }

    fn end(&mut self, code: tonic::Code) {
        if let Some(call) = self.call.take() {
            call.end(code);
        }
    }
}

impl<C: EndOfCall + Unpin> http_body::Body for Ending<C> {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.end(grpc_status(trailers).unwrap_or(tonic::Code::Unknown));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(status))) => {
                this.end(status.code());
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                let code = this.headers_code.unwrap_or(tonic::Code::Ok);
                this.end(code);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<C: EndOfCall> Drop for Ending<C> {
    fn drop(&mut self) {
        // Dropped unfinished: a call answered in its headers alone (its body
        // never read), or one the caller cancelled.
        let code = self.headers_code.unwrap_or(tonic::Code::Cancelled);
        self.end(code);
    }
}

pub(crate) fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(tonic::Code::from)
}

/// The gRPC code a call was answered with, as far as its response headers
/// tell: a failed unary call answers with its status there (trailers-only);
/// a call that gets that far without one is OK.
pub(crate) fn code_of<B, E>(result: &Result<http::Response<B>, E>) -> tonic::Code {
    match result {
        Ok(response) => grpc_status(response.headers()).unwrap_or(tonic::Code::Ok),
        Err(_) => tonic::Code::Internal,
    }
}

/// `/reservoir.wallet.v1.WalletService/Debit` → (`reservoir.wallet.v1.WalletService`, `Debit`).
pub(crate) fn split_path(path: &str) -> (&str, &str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    (parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
}

/// As [`split_path`], owned, for labels.
fn service_and_method(path: &str) -> (String, String) {
    let (service, method) = split_path(path);
    (service.to_owned(), method.to_owned())
}

#[cfg(test)]
mod tests {
    use super::service_and_method;

    #[test]
    fn only_the_served_methods_are_known() {
        let layer = super::RpcMetricsLayer::new(
            &[reservoir_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET],
            &["reservoir.wallet.v1.WalletService"],
        );
        assert!(layer.known.contains_key("/reservoir.wallet.v1.WalletService/Debit"));
        assert!(layer.known.contains_key("/grpc.health.v1.Health/Check"));
        assert!(!layer.known.contains_key("/reservoir.metering.v1.MeteringService/IngestEvents"));
        assert!(!layer.known.contains_key("/reservoir.wallet.v1.WalletService/NoSuchMethod"));
        let debit = &layer.known["/reservoir.wallet.v1.WalletService/Debit"];
        assert_eq!((&*debit.server, debit.method.as_str()), ("wallet", "Debit"));
        assert_eq!((layer.unknown.service.as_str(), layer.unknown.method.as_str()), ("unknown", "unknown"));
    }

    #[test]
    fn each_port_shows_the_series_of_its_own_service_and_those_of_the_process() {
        let exposition = "\
# HELP reservoir_rpc_requests_total Calls answered.
# TYPE reservoir_rpc_requests_total counter
reservoir_rpc_requests_total{server=\"wallet\",service=\"reservoir.wallet.v1.WalletService\",method=\"Debit\",code=\"Ok\"} 3
reservoir_rpc_requests_total{server=\"metering\",service=\"grpc.health.v1.Health\",method=\"Check\",code=\"Ok\"} 2
# HELP reservoir_metering_events_total Events.
# TYPE reservoir_metering_events_total counter
reservoir_metering_events_total{status=\"CHARGED\"} 5
# TYPE reservoir_db_pool_connections gauge
reservoir_db_pool_connections{service=\"wallet\",state=\"idle\"} 4
reservoir_db_pool_connections{service=\"metering\",state=\"idle\"} 1
# TYPE reservoir_build_info gauge
reservoir_build_info{version=\"0.1.0\"} 1
process_resident_memory_bytes 1000
";
        let wallet = super::owned(exposition, "wallet");
        assert_eq!(
            wallet,
            "\
# HELP reservoir_rpc_requests_total Calls answered.
# TYPE reservoir_rpc_requests_total counter
reservoir_rpc_requests_total{server=\"wallet\",service=\"reservoir.wallet.v1.WalletService\",method=\"Debit\",code=\"Ok\"} 3
# TYPE reservoir_db_pool_connections gauge
reservoir_db_pool_connections{service=\"wallet\",state=\"idle\"} 4
# TYPE reservoir_build_info gauge
reservoir_build_info{version=\"0.1.0\"} 1
process_resident_memory_bytes 1000
"
        );
        let metering = super::owned(exposition, "metering");
        assert!(metering.contains("server=\"metering\",service=\"grpc.health.v1.Health\""), "{metering}");
        assert!(metering.contains("reservoir_metering_events_total{status=\"CHARGED\"} 5"), "{metering}");
        assert!(!metering.contains("Debit") && !metering.contains("service=\"wallet\""), "{metering}");
        assert!(metering.contains("process_resident_memory_bytes 1000"), "{metering}");
        assert_eq!(super::owner_of(&["reservoir.orchestrator.v1.TopUpService"]), "orchestrator");
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            service_and_method("/reservoir.wallet.v1.WalletService/Debit"),
            ("reservoir.wallet.v1.WalletService".to_owned(), "Debit".to_owned())
        );
        assert_eq!(service_and_method("/"), (String::new(), String::new()));
    }
}
