//! Spans as a test sees them: every span of the test binary exported to
//! memory, a caller's W3C trace context to send, and the spans of one trace
//! waited for until the test has what it looks for.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

/// Every span of this test binary, exported to memory. Installed once: the
/// subscriber is process-wide, and spans of other tests land here too (they
/// have trace ids of their own).
pub fn spans() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    &EXPORTER
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("reservoir-tests")));
            tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
            (exporter, provider)
        })
        .0
}

/// A caller's span in a trace of its own: the trace, the span, and the
/// `traceparent` header that carries them.
pub struct Caller {
    pub trace: TraceId,
    pub span: SpanId,
    pub traceparent: String,
}

impl Caller {
    /// A new caller; spans are exported to [`spans`] from here on.
    pub fn new() -> Self {
        spans();
        let trace = TraceId::from_bytes(*uuid::Uuid::new_v4().as_bytes());
        let mut span = [0; 8];
        span.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
        let span = SpanId::from_bytes(span);
        Self { trace, span, traceparent: format!("00-{trace}-{span}-01") }
    }
}

impl Default for Caller {
    fn default() -> Self {
        Self::new()
    }
}

/// A span's attribute, as text.
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|attribute| attribute.key.as_str() == key).map(|attribute| attribute.value.to_string())
}

/// The gRPC path a server or client span is for.
pub fn method(span: &SpanData) -> String {
    attribute(span, "method").unwrap_or_default()
}

/// The finished spans of `trace` once a span for each of `methods` has
/// ended (server spans end as their responses finish), or what there is
/// after five seconds.
pub async fn spans_of(trace: TraceId, methods: &[&str]) -> Vec<SpanData> {
    let mut in_trace = Vec::new();
    for _ in 0..100 {
        in_trace = spans()
            .get_finished_spans()
            .expect("the exporter answers")
            .into_iter()
            .filter(|span| span.span_context.trace_id() == trace)
            .collect::<Vec<_>>();
        if methods.iter().all(|path| in_trace.iter().any(|span| method(span) == *path)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    in_trace
}

/// Asserts that `span` hangs under the span `ancestor` in `in_trace`: its
/// parent is that span or a span beneath it, all in the trace.
pub fn assert_beneath(in_trace: &[SpanData], span: &SpanData, ancestor: SpanId) {
    let mut parent = span.parent_span_id;
    let mut hops = 0;
    while parent != ancestor {
        let above = in_trace
            .iter()
            .find(|candidate| candidate.span_context.span_id() == parent)
            .unwrap_or_else(|| panic!("{}'s parent {parent} is in the trace: {in_trace:#?}", span.name));
        parent = above.parent_span_id;
        hops += 1;
        assert!(hops < 10, "no loop in the parents");
    }
}
