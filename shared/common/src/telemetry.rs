//! Structured logs through `tracing`, traces to an OTLP collector when one
//! is configured, and W3C trace context carried on every call between
//! services, so one request is one trace across them.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::TelemetrySettings;

/// Keeps the trace exporter alive; dropping it flushes the spans not yet sent.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {error}");
        }
    }
}

/// Installs the global subscriber. Called once, by the binary.
///
/// JSON logs name each line's trace and span (`openTelemetry.traceId`,
/// `openTelemetry.spanId`), the ids an OTLP collector receives, so a log
/// line leads to its trace. The ids come from an OpenTelemetry tracer, which
/// is installed for JSON logs even without a collector to send spans to.
pub fn init(settings: &TelemetrySettings, service_name: &str) -> Result<TelemetryGuard, String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_filter))
        .map_err(|error| format!("log_filter {:?}: {error}", settings.log_filter))?;
    let logs = match settings.log_format.as_str() {
        "json" => json_logs(std::io::stderr).boxed(),
        "text" => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        other => return Err(format!("log_format must be json or text, not {other:?}")),
    };
    let exporter = if settings.otlp_endpoint.is_empty() {
        None
    } else {
        Some(
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.otlp_endpoint.clone())
                .build()
                .map_err(|error| format!("OTLP exporter: {error}"))?,
        )
    };
    let provider =
        (exporter.is_some() || settings.log_format == "json").then(|| tracer_provider(exporter, service_name));
    let traces =
        provider.as_ref().map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("reservoir")));
    tracing_subscriber::registry()
        .with(filter)
        .with(traces)
        .with(logs)
        .try_init()
        .map_err(|error| format!("installing the log subscriber: {error}"))?;
    Ok(TelemetryGuard { provider })
}

/// A tracer provider sending spans to `exporter`, or only making ids.
pub(crate) fn tracer_provider(
    exporter: Option<opentelemetry_otlp::SpanExporter>,
    service_name: &str,
) -> SdkTracerProvider {
    let builder = SdkTracerProvider::builder()
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_owned()).build());
    match exporter {
        Some(exporter) => builder.with_batch_exporter(exporter),
        None => builder,
    }
    .build()
}

/// One JSON object a line: the event's fields, its current span's, and the
/// OpenTelemetry trace and span ids.
pub(crate) fn json_logs<S, W>(writer: W) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    json_subscriber::fmt::layer().with_current_span(true).with_opentelemetry_ids(true).with_writer(writer)
}

/// A call's span: named `package.Service/Method` and described as
/// OpenTelemetry's RPC conventions say, its outcome recorded when it ends
/// ([`end_rpc_span`]). A macro because a span's name must be a literal.
macro_rules! call_span {
    ($name:literal, $kind:literal, $path:expr) => {{
        let path: &str = $path;
        let (service, method) = $crate::metrics::split_path(path);
        tracing::info_span!(
            $name,
            method = %path,
            otel.name = %path.trim_start_matches('/'),
            otel.kind = $kind,
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        )
    }};
}

/// The span of one incoming call, named and described as OpenTelemetry's
/// RPC conventions say (`rpc.system`, `rpc.service`, `rpc.method`, and
/// `rpc.grpc.status_code` once it ends), the child of the caller's span when
/// the call carries W3C trace context (`traceparent`).
pub fn rpc_span<B>(request: &http::Request<B>) -> tracing::Span {
    let span = call_span!("rpc", "server", request.uri().path());
    // Most calls carry none; without one there is nothing to extract.
    if request.headers().contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        if let Err(error) = span.set_parent(parent) {
            tracing::debug!(%error, "the caller's trace context was not applied");
        }
    }
    span
}

/// The span of one call to another service, named and described like the
/// server's.
pub fn client_span(path: &str) -> tracing::Span {
    call_span!("rpc.client", "client", path)
}

/// Records how a call ended on its span: the gRPC code, and an error status
/// as OpenTelemetry's conventions say: on a client span for any code but
/// OK, on a server span only for the codes that mean the server failed (a
/// refusal of the caller's request is not the server's error).
pub fn end_rpc_span(span: &tracing::Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i64);
    use tonic::Code::{DataLoss, DeadlineExceeded, Internal, Ok, Unavailable, Unimplemented, Unknown};
    let client = span.metadata().is_some_and(|metadata| metadata.name() == "rpc.client");
    let failed = if client {
        code != Ok
    } else {
        matches!(code, Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss)
    };
    if failed {
        span.record("otel.status_code", "ERROR");
    }
}

/// Puts `span`'s trace context on an outgoing call's headers.
pub fn inject_into_headers(span: &tracing::Span, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(key, value);
        }
    }
}

/// JSON log lines kept in memory, for tests.
#[cfg(test)]
pub(crate) mod captured {
    #![allow(clippy::unwrap_used)]
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    pub(crate) struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        pub(crate) fn parsed(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
        }
    }

    /// A subscriber that writes JSON lines, with trace ids, to `lines`.
    pub(crate) fn subscriber(lines: &Lines) -> impl tracing::Subscriber + Send + Sync {
        let provider = super::tracer_provider(None, "test");
        let lines = lines.clone();
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(super::json_logs(move || lines.clone()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::captured::{Lines, subscriber};

    /// Logs one line inside the span of a call to `path` carrying `headers`,
    /// the call ending with `code`; returns the line.
    fn log_inside_a_call(path: &str, headers: &[(&str, &str)], code: tonic::Code) -> serde_json::Value {
        let lines = Lines::default();
        tracing::subscriber::with_default(subscriber(&lines), || {
            let mut request = http::Request::builder().uri(format!("http://wallet{path}"));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let span = super::rpc_span(&request.body(()).unwrap());
            super::end_rpc_span(&span, code);
            let _entered = span.enter();
            tracing::info!(peer = %"127.0.0.1:5000", "inside the call");
        });
        lines.parsed().pop().unwrap()
    }

    #[test]
    fn a_json_line_names_the_callers_trace_and_its_own_span() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let line = log_inside_a_call(
            "/reservoir.wallet.v1.WalletService/Debit",
            &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
            tonic::Code::Ok,
        );
        assert_eq!(line["openTelemetry"]["traceId"], trace, "{line}");
        let span_id = line["openTelemetry"]["spanId"].as_str().unwrap();
        assert_eq!(span_id.len(), 16, "{line}");
        assert_ne!(span_id, "00f067aa0ba902b7", "the call's own span, not the caller's: {line}");
        // Plain values, not Debug renderings.
        assert_eq!(line["fields"]["peer"], "127.0.0.1:5000", "{line}");
        assert_eq!(line["fields"]["message"], "inside the call", "{line}");
    }

    #[test]
    fn a_call_without_trace_context_starts_a_trace_and_follows_the_rpc_conventions() {
        let line = log_inside_a_call("/reservoir.wallet.v1.WalletService/Debit", &[], tonic::Code::Unavailable);
        let trace = line["openTelemetry"]["traceId"].as_str().unwrap();
        assert_eq!(trace.len(), 32, "{line}");
        assert_ne!(trace, "0".repeat(32), "{line}");
        let span = &line["span"];
        assert_eq!(span["rpc.system"], "grpc", "{line}");
        assert_eq!(span["rpc.service"], "reservoir.wallet.v1.WalletService", "{line}");
        assert_eq!(span["rpc.method"], "Debit", "{line}");
        assert_eq!(span["rpc.grpc.status_code"], 14, "{line}");
        assert_eq!(span["otel.status_code"], "ERROR", "{line}");
    }

    #[test]
    fn a_refused_request_is_not_the_servers_error() {
        let line = log_inside_a_call("/reservoir.wallet.v1.WalletService/Debit", &[], tonic::Code::InvalidArgument);
        assert_eq!(line["span"]["rpc.grpc.status_code"], 3, "{line}");
        assert!(line["span"].get("otel.status_code").is_none(), "{line}");
    }
}
