//! One request is one trace across the services: the caller's W3C trace
//! context reaches metering, and metering's call to the wallet carries it on.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reservoir_proto::metering as pb;
use tracing_subscriber::layer::SubscriberExt;

use crate::helpers::*;

/// Every span of this test binary, exported to memory. Installed once: the
/// subscriber is process-wide, and spans of other tests land here too (they
/// have trace ids of their own).
fn spans() -> &'static InMemorySpanExporter {
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

fn method(span: &SpanData) -> String {
    span.attributes
        .iter()
        .find(|attribute| attribute.key.as_str() == "method")
        .map(|attribute| attribute.value.to_string())
        .unwrap_or_default()
}

async fn an_ingest_is_one_trace_through_metering_and_the_wallet(suite: Suite) -> Suite {
    let exporter = spans();
    priced_meter(&suite, "tokens", "0.01").await;
    let account = funded_account(&suite, "10").await;
    let trace = TraceId::from_bytes(*uuid::Uuid::new_v4().as_bytes());
    let caller = SpanId::from_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap());
    let mut request = tonic::Request::new(pb::IngestEventsRequest {
        events: vec![event(&account, "tokens", "100")],
        asynchronous: false,
    });
    request.metadata_mut().insert("traceparent", format!("00-{trace}-{caller}-01").parse().unwrap());
    let results = suite.metering.clone().ingest_events(request).await.unwrap().into_inner().results;
    assert_eq!(statuses(&results), vec![pb::EventStatus::Charged]);

    // Server spans end as their responses finish; wait for both.
    let mut in_trace = Vec::new();
    for _ in 0..100 {
        in_trace = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|span| span.span_context.trace_id() == trace)
            .collect::<Vec<_>>();
        let has = |path: &str| in_trace.iter().any(|span| method(span) == path);
        if has("/reservoir.metering.v1.MeteringService/IngestEvents")
            && has("/reservoir.wallet.v1.WalletService/DrawUsage")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ingest = in_trace
        .iter()
        .find(|span| method(span) == "/reservoir.metering.v1.MeteringService/IngestEvents")
        .unwrap_or_else(|| panic!("metering's span is in the caller's trace: {in_trace:#?}"));
    assert_eq!(ingest.parent_span_id, caller, "metering's span is the child of the caller's");
    let debit = in_trace
        .iter()
        .find(|span| method(span) == "/reservoir.wallet.v1.WalletService/DrawUsage")
        .unwrap_or_else(|| panic!("the wallet's span is in the caller's trace: {in_trace:#?}"));
    // Both follow OpenTelemetry's RPC conventions, and the wallet's parent
    // is the span of metering's call to it, a client span.
    let attribute = |span: &SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|attribute| attribute.key.as_str() == key)
            .map(|attribute| attribute.value.to_string())
    };
    assert_eq!(ingest.name, "reservoir.metering.v1.MeteringService/IngestEvents");
    assert_eq!(ingest.span_kind, opentelemetry::trace::SpanKind::Server);
    assert_eq!(attribute(ingest, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attribute(ingest, "rpc.method").as_deref(), Some("IngestEvents"));
    assert_eq!(attribute(ingest, "rpc.grpc.status_code").as_deref(), Some("0"));
    let call = in_trace
        .iter()
        .find(|span| span.span_context.span_id() == debit.parent_span_id)
        .unwrap_or_else(|| panic!("the wallet's parent is in the trace: {in_trace:#?}"));
    assert_eq!(call.span_kind, opentelemetry::trace::SpanKind::Client, "{call:#?}");
    assert_eq!(call.name, "reservoir.wallet.v1.WalletService/DrawUsage");
    assert_eq!(attribute(call, "rpc.grpc.status_code").as_deref(), Some("0"));
    // Which hangs under metering's span: its parent is metering's call
    // span or a span beneath it, all in this trace.
    let mut parent = debit.parent_span_id;
    let mut hops = 0;
    while parent != ingest.span_context.span_id() {
        let above = in_trace
            .iter()
            .find(|span| span.span_context.span_id() == parent)
            .unwrap_or_else(|| panic!("the wallet's parent {parent} is a span of metering's: {in_trace:#?}"));
        parent = above.parent_span_id;
        hops += 1;
        assert!(hops < 10, "no loop in the parents");
    }
    suite
}

crate::on_both_backends!(an_ingest_is_one_trace_through_metering_and_the_wallet);
