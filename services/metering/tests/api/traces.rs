//! One request is one trace across the services: the caller's W3C trace
//! context reaches metering, and metering's call to the wallet carries it on.

use opentelemetry::trace::SpanKind;
use reservoir_proto::metering as pb;
use reservoir_testing::traces::{Caller, assert_beneath, attribute, method, spans_of};

use crate::helpers::*;

async fn an_ingest_is_one_trace_through_metering_and_the_wallet(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "0.01").await;
    let account = funded_account(&suite, "10").await;
    let caller = Caller::new();
    let mut request = tonic::Request::new(pb::IngestEventsRequest {
        events: vec![event(&account, "tokens", "100")],
        asynchronous: false,
    });
    request.metadata_mut().insert("traceparent", caller.traceparent.parse().unwrap());
    let results = suite.metering.clone().ingest_events(request).await.unwrap().into_inner().results;
    assert_eq!(statuses(&results), vec![pb::EventStatus::Charged]);

    let in_trace = spans_of(
        caller.trace,
        &["/reservoir.metering.v1.MeteringService/IngestEvents", "/reservoir.wallet.v1.WalletService/DrawUsage"],
    )
    .await;
    let ingest = in_trace
        .iter()
        .find(|span| method(span) == "/reservoir.metering.v1.MeteringService/IngestEvents")
        .unwrap_or_else(|| panic!("metering's span is in the caller's trace: {in_trace:#?}"));
    assert_eq!(ingest.parent_span_id, caller.span, "metering's span is the child of the caller's");
    let debit = in_trace
        .iter()
        .find(|span| method(span) == "/reservoir.wallet.v1.WalletService/DrawUsage")
        .unwrap_or_else(|| panic!("the wallet's span is in the caller's trace: {in_trace:#?}"));
    // Both follow OpenTelemetry's RPC conventions, and the wallet's parent
    // is the span of metering's call to it, a client span.
    assert_eq!(ingest.name, "reservoir.metering.v1.MeteringService/IngestEvents");
    assert_eq!(ingest.span_kind, SpanKind::Server);
    assert_eq!(attribute(ingest, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attribute(ingest, "rpc.method").as_deref(), Some("IngestEvents"));
    assert_eq!(attribute(ingest, "rpc.grpc.status_code").as_deref(), Some("0"));
    let call = in_trace
        .iter()
        .find(|span| span.span_context.span_id() == debit.parent_span_id)
        .unwrap_or_else(|| panic!("the wallet's parent is in the trace: {in_trace:#?}"));
    assert_eq!(call.span_kind, SpanKind::Client, "{call:#?}");
    assert_eq!(call.name, "reservoir.wallet.v1.WalletService/DrawUsage");
    assert_eq!(attribute(call, "rpc.grpc.status_code").as_deref(), Some("0"));
    // Which hangs under metering's span: its parent is metering's call
    // span or a span beneath it, all in this trace.
    assert_beneath(&in_trace, debit, ingest.span_context.span_id());
    suite
}

crate::on_both_backends!(an_ingest_is_one_trace_through_metering_and_the_wallet);
