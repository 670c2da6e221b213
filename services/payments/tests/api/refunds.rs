use reservoir_proto::payments as pb;
use tonic::Code;

use crate::helpers::*;

async fn a_payment_is_refunded_in_part_then_in_full(suite: Suite) -> Suite {
    let mut client = suite.payments.clone();
    let payment = paid(&suite, "10.00").await;
    let partial = refund_request(&payment, "4.25");
    let first = client.refund(partial.clone()).await.unwrap().into_inner();
    let refund = first.refund.clone().unwrap();
    assert_eq!(refund.amount, "4.25");
    assert!(refund.gateway_reference.starts_with("re_"), "refunded through the gateway");
    assert_eq!(first.payment.as_ref().unwrap().refunded_amount, "4.25");
    assert_eq!(client.refund(partial.clone()).await.unwrap().into_inner(), first, "a retry answers the same refund");

    let before = get(&suite, &payment).await;
    assert_refused(
        client.refund(refund_request(&payment, "5.76")).await,
        Code::FailedPrecondition,
        "REFUND_EXCEEDS_CAPTURED",
    );
    assert_eq!(get(&suite, &payment).await, before, "a refused refund changes nothing");
    assert_invalid(client.refund(refund_request(&payment, "1.001")).await, "amount");
    assert_invalid(client.refund(refund_request(&payment, "-1")).await, "amount");

    let rest = client.refund(refund_request(&payment, "")).await.unwrap().into_inner();
    assert_eq!(rest.refund.unwrap().amount, "5.75", "an empty amount refunds the rest");
    let after = rest.payment.unwrap();
    assert_eq!(after.refunded_amount, "10");
    assert_eq!(after.refunds.len(), 2);
    assert_eq!(status(&after), pb::PaymentStatus::Succeeded);
    assert_refused(
        client.refund(refund_request(&payment, "")).await,
        Code::FailedPrecondition,
        "REFUND_EXCEEDS_CAPTURED",
    );
    assert_refused(
        client.refund(refund_request(&payment, "0.01")).await,
        Code::FailedPrecondition,
        "REFUND_EXCEEDS_CAPTURED",
    );
    let reused = pb::RefundRequest { amount: "1".into(), ..partial };
    assert_refused(client.refund(reused).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    suite
}

async fn only_a_succeeded_payment_is_refunded(suite: Suite) -> Suite {
    let mut client = suite.payments.clone();
    let declined =
        charge(&suite, charge_request(&suite, &card(&suite, &account(&suite).await, "tok_decline").await, "8").await)
            .await;
    assert_refused(
        client.refund(refund_request(&declined, "")).await,
        Code::FailedPrecondition,
        "PAYMENT_NOT_REFUNDABLE",
    );
    assert_refused(
        client.refund(refund_request(&declined, "1")).await,
        Code::FailedPrecondition,
        "PAYMENT_NOT_REFUNDABLE",
    );
    let pending = charge(&suite, reconcile_later_request(&suite, &account(&suite).await, "8").await).await;
    assert_refused(
        client.refund(refund_request(&pending, "")).await,
        Code::FailedPrecondition,
        "PAYMENT_NOT_REFUNDABLE",
    );
    assert_eq!(get(&suite, &declined).await.refunded_amount, "0");
    let unknown = pb::RefundRequest {
        payment_id: uuid::Uuid::now_v7().to_string(),
        amount: String::new(),
        reason: String::new(),
        idempotency_key: key(),
    };
    assert_refused(client.refund(unknown).await, Code::NotFound, "NOT_FOUND");
    suite
}

async fn a_confirmed_payment_is_refunded_by_hand(suite: Suite) -> Suite {
    let mut client = suite.payments.clone();
    let payment = charge(&suite, reconcile_later_request(&suite, &account(&suite).await, "40").await).await;
    suite
        .service
        .clone()
        .confirm_payment(pb::ConfirmPaymentRequest {
            payment_id: payment.id.clone(),
            external_transaction_id: "wire-77".into(),
        })
        .await
        .unwrap();
    let refunded = client.refund(refund_request(&payment, "15")).await.unwrap().into_inner();
    let refund = refunded.refund.unwrap();
    assert_eq!(refund.amount, "15");
    assert_eq!(refund.gateway_reference, "", "no gateway: a manual refund");
    assert_eq!(refunded.payment.unwrap().refunded_amount, "15");
    suite
}

crate::on_both_backends!(
    a_payment_is_refunded_in_part_then_in_full,
    only_a_succeeded_payment_is_refunded,
    a_confirmed_payment_is_refunded_by_hand,
);
