//! One top-up is one trace: the caller's W3C trace context reaches the
//! orchestrator, and its calls to invoicing, payments and the wallet carry
//! it on, each hanging under the top-up's span.

use reservoir_proto::orchestrator as pb;
use reservoir_proto::payments as payments_pb;
use reservoir_testing::traces::{Caller, assert_beneath, method, spans_of};

use crate::helpers::*;

const CALLS: [&str; 5] = [
    "/reservoir.invoicing.v1.InvoicingService/CreateInvoice",
    "/reservoir.invoicing.v1.InvoicingService/FinalizeInvoice",
    "/reservoir.payments.v1.PaymentsService/Charge",
    "/reservoir.wallet.v1.WalletService/GrantCredits",
    "/reservoir.invoicing.v1.InvoicingService/MarkInvoicePaid",
];

async fn a_top_up_is_one_trace_through_invoicing_payments_and_the_wallet(suite: Suite) -> Suite {
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
    let caller = Caller::new();
    let mut request = tonic::Request::new(pb::StartTopUpRequest {
        account_id: account.id.clone(),
        credits: "12".into(),
        payment_method_id: card.id.clone(),
        reconcile_later: false,
        idempotency_key: key(),
        credits_expire_at: None,
        bonus: None,
    });
    request.metadata_mut().insert("traceparent", caller.traceparent.parse().unwrap());
    let top_up = suite.top_ups.clone().start_top_up(request).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(top_up.status, i32::from(pb::TopUpStatus::Succeeded), "{top_up:?}");

    let start = "/reservoir.orchestrator.v1.TopUpService/StartTopUp";
    let in_trace = spans_of(caller.trace, &[&[start][..], &CALLS[..]].concat()).await;
    let root = in_trace
        .iter()
        .find(|span| method(span) == start)
        .unwrap_or_else(|| panic!("the orchestrator's span is in the caller's trace: {in_trace:#?}"));
    assert_eq!(root.parent_span_id, caller.span, "the top-up's span is the child of the caller's");
    for call in CALLS {
        let span = in_trace
            .iter()
            .find(|span| method(span) == call)
            .unwrap_or_else(|| panic!("{call} is in the top-up's trace: {in_trace:#?}"));
        assert_beneath(&in_trace, span, root.span_context.span_id());
    }
    suite
}

crate::on_both_backends!(a_top_up_is_one_trace_through_invoicing_payments_and_the_wallet);
