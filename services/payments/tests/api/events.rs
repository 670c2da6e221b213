use std::time::Duration;

use reservoir_proto::payments as pb;
use tonic::Streaming;

use crate::helpers::*;

async fn next(stream: &mut Streaming<pb::WatchEventsResponse>) -> pb::Event {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .expect("the stream is healthy")
        .expect("the stream is open")
        .event
        .expect("an event")
}

fn event_type(event: &pb::Event) -> pb::EventType {
    pb::EventType::try_from(event.r#type).unwrap()
}

async fn events_are_delivered_in_commit_order_to_their_tenant_only(suite: Suite) -> Suite {
    let payment = paid(&suite, "20").await;
    let mut client = suite.payments.clone();
    let refund = client.refund(refund_request(&payment, "5")).await.unwrap().into_inner().refund.unwrap();
    let batch = voucher_batch(&suite, 1, "10").await;
    let redeemer = account(&suite).await;
    client.redeem_voucher(redeem_request(&batch.codes[0], &redeemer)).await.unwrap();

    let mut stream = client.watch_events(pb::WatchEventsRequest { after_sequence: 0 }).await.unwrap().into_inner();
    let succeeded = next(&mut stream).await;
    assert_eq!(event_type(&succeeded), pb::EventType::PaymentSucceeded);
    assert_eq!(succeeded.payment_id, payment.id);
    assert_eq!(succeeded.invoice_id, payment.invoice_id);
    assert_eq!((succeeded.amount.as_str(), succeeded.currency.as_str()), ("20", "USD"));
    let refunded = next(&mut stream).await;
    assert_eq!(event_type(&refunded), pb::EventType::PaymentRefunded);
    assert_eq!(refunded.refund_id, refund.id);
    assert_eq!(refunded.amount, "5");
    let redeemed = next(&mut stream).await;
    assert_eq!(event_type(&redeemed), pb::EventType::VoucherRedeemed);
    assert_eq!(redeemed.account_id, redeemer);
    assert_eq!(redeemed.voucher_id, batch.vouchers[0].id);
    assert_eq!((redeemed.amount.as_str(), redeemed.currency.as_str()), ("10", "CREDIT"));
    assert!(succeeded.sequence < refunded.sequence && refunded.sequence < redeemed.sequence);

    // Events committed while the stream is open arrive on it.
    let pending = charge(&suite, reconcile_later_request(&suite, &account(&suite).await, "3").await).await;
    let live = next(&mut stream).await;
    assert_eq!(event_type(&live), pb::EventType::PaymentPending);
    assert_eq!(live.payment_id, pending.id);
    // Its confirmation, and a declined charge, go out too.
    suite
        .service
        .clone()
        .confirm_payment(pb::ConfirmPaymentRequest {
            payment_id: pending.id.clone(),
            external_transaction_id: "bank-1".into(),
        })
        .await
        .unwrap();
    let confirmed = next(&mut stream).await;
    assert_eq!(
        (event_type(&confirmed), confirmed.payment_id.as_str()),
        (pb::EventType::PaymentConfirmed, pending.id.as_str())
    );
    let declining = card(&suite, &account(&suite).await, "tok_decline").await;
    let declined_payment = charge(&suite, charge_request(&suite, &declining, "4").await).await;
    let declined = next(&mut stream).await;
    assert_eq!(
        (event_type(&declined), declined.payment_id.as_str()),
        (pb::EventType::PaymentDeclined, declined_payment.id.as_str())
    );

    // A consumer resumes after the last sequence it handled.
    let mut resumed =
        client.watch_events(pb::WatchEventsRequest { after_sequence: refunded.sequence }).await.unwrap().into_inner();
    assert_eq!(next(&mut resumed).await, redeemed);

    let mut other =
        suite.other.clone().watch_events(pb::WatchEventsRequest { after_sequence: 0 }).await.unwrap().into_inner();
    let nothing = tokio::time::timeout(Duration::from_millis(500), other.message()).await;
    assert!(nothing.is_err(), "another tenant sees none of these events");
    suite
}

crate::on_both_backends!(events_are_delivered_in_commit_order_to_their_tenant_only);
