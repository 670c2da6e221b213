//! Structured logs through `tracing`, and traces to an OTLP collector when one
//! is configured.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
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
pub fn init(settings: &TelemetrySettings, service_name: &str) -> Result<TelemetryGuard, String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_filter))
        .map_err(|error| format!("log_filter {:?}: {error}", settings.log_filter))?;
    let logs = match settings.log_format.as_str() {
        "json" => tracing_subscriber::fmt::layer().json().with_current_span(true).with_writer(std::io::stderr).boxed(),
        "text" => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        other => return Err(format!("log_format must be json or text, not {other:?}")),
    };
    let (traces, provider) = if settings.otlp_endpoint.is_empty() {
        (None, None)
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.otlp_endpoint.clone())
            .build()
            .map_err(|error| format!("OTLP exporter: {error}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_owned()).build())
            .build();
        let tracer = provider.tracer("reservoir");
        (Some(tracing_opentelemetry::layer().with_tracer(tracer)), Some(provider))
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|error| format!("installing the log subscriber: {error}"))?;
    Ok(TelemetryGuard { provider })
}
