//! One top-up is one trace: the caller's W3C trace context reaches the
//! orchestrator, and its calls to invoicing, payments and the wallet carry
//! it on, each hanging under the top-up's span.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reservoir_proto::orchestrator as pb;
use reservoir_proto::payments as payments_pb;
use tracing_subscriber::layer::SubscriberExt;

use crate::helpers::*;

/// Every span of this test binary, exported to memory; installed once, as
/// the subscriber is process-wide (other tests' spans have other trace ids).
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

const CALLS: [&str; 5] = [
    "/reservoir.invoicing.v1.InvoicingService/CreateInvoice",
    "/reservoir.invoicing.v1.InvoicingService/FinalizeInvoice",
    "/reservoir.payments.v1.PaymentsService/Charge",
    "/reservoir.wallet.v1.WalletService/GrantCredits",
    "/reservoir.invoicing.v1.InvoicingService/MarkInvoicePaid",
];

async fn a_top_up_is_one_trace_through_invoicing_payments_and_the_wallet(suite: Suite) -> Suite {
    let exporter = spans();
    let account = open_funded_account(&suite.wallet, "0").await;
    let card = suite
        .payments
        .clone()
        .add_payment_method(payments_pb::AddPaymentMethodRequest {
            account_id: account.id.clone(),
            kind: payments_pb::PaymentMethodKind::Card.into(),
            gateway_token: "tok_succeed".into(),
            label: String::new(),
            idempotency_key: key(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment_method
        .unwrap();
    let trace = TraceId::from_bytes(*uuid::Uuid::new_v4().as_bytes());
    let caller = SpanId::from_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap());
    let mut request = tonic::Request::new(pb::StartTopUpRequest {
        account_id: account.id.clone(),
        credits: "12".into(),
        payment_method_id: card.id.clone(),
        reconcile_later: false,
        idempotency_key: key(),
        credits_expire_at: None,
    });
    request.metadata_mut().insert("traceparent", format!("00-{trace}-{caller}-01").parse().unwrap());
    let top_up = suite.top_ups.clone().start_top_up(request).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(top_up.status, i32::from(pb::TopUpStatus::Succeeded), "{top_up:?}");

    let start = "/reservoir.orchestrator.v1.TopUpService/StartTopUp";
    let mut in_trace = Vec::new();
    for _ in 0..100 {
        in_trace = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|span| span.span_context.trace_id() == trace)
            .collect::<Vec<_>>();
        let has = |path: &str| in_trace.iter().any(|span| method(span) == path);
        if has(start) && CALLS.iter().all(|call| has(call)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let root = in_trace
        .iter()
        .find(|span| method(span) == start)
        .unwrap_or_else(|| panic!("the orchestrator's span is in the caller's trace: {in_trace:#?}"));
    assert_eq!(root.parent_span_id, caller, "the top-up's span is the child of the caller's");
    for call in CALLS {
        let span = in_trace
            .iter()
            .find(|span| method(span) == call)
            .unwrap_or_else(|| panic!("{call} is in the top-up's trace: {in_trace:#?}"));
        let mut parent = span.parent_span_id;
        let mut hops = 0;
        while parent != root.span_context.span_id() {
            let above = in_trace
                .iter()
                .find(|span| span.span_context.span_id() == parent)
                .unwrap_or_else(|| panic!("{call}'s parent {parent} is in the trace: {in_trace:#?}"));
            parent = above.parent_span_id;
            hops += 1;
            assert!(hops < 10, "no loop in the parents");
        }
    }
    suite
}

crate::on_both_backends!(a_top_up_is_one_trace_through_invoicing_payments_and_the_wallet);
