use std::time::Duration;

use reservoir_proto::payments as pb;
use reservoir_proto::payments::payments_service_client::PaymentsServiceClient;

use crate::helpers::*;

async fn list(suite: &Suite, request: pb::ListPaymentsRequest) -> pb::ListPaymentsResponse {
    suite.payments.clone().list_payments(request).await.unwrap().into_inner()
}

async fn payments_are_listed_newest_first_by_account_invoice_and_status(suite: Suite) -> Suite {
    let account_id = account(&suite).await;
    let good = card(&suite, &account_id, "tok_succeed").await;
    let bad = card(&suite, &account_id, "tok_decline").await;
    let first = charge(&suite, charge_request(&suite, &good, "1").await).await;
    let second = charge(&suite, charge_request(&suite, &bad, "2").await).await;
    let third = charge(&suite, charge_request(&suite, &good, "3").await).await;
    let elsewhere = paid(&suite, "4").await;

    let by_account =
        list(&suite, pb::ListPaymentsRequest { account_id: account_id.clone(), ..Default::default() }).await;
    let ids: Vec<&str> = by_account.payments.iter().map(|payment| payment.id.as_str()).collect();
    assert_eq!(ids, vec![third.id.as_str(), second.id.as_str(), first.id.as_str()]);
    assert_eq!(by_account.next_page_token, "");

    let succeeded = list(
        &suite,
        pb::ListPaymentsRequest {
            account_id: account_id.clone(),
            status: pb::PaymentStatus::Succeeded.into(),
            ..Default::default()
        },
    )
    .await;
    let ids: Vec<&str> = succeeded.payments.iter().map(|payment| payment.id.as_str()).collect();
    assert_eq!(ids, vec![third.id.as_str(), first.id.as_str()]);

    let declined =
        list(&suite, pb::ListPaymentsRequest { status: pb::PaymentStatus::Declined.into(), ..Default::default() })
            .await;
    assert_eq!(declined.payments.len(), 1);
    assert_eq!(declined.payments[0].id, second.id);
    assert_eq!(declined.payments[0].attempts.len(), 1, "listed payments carry their attempts");

    let by_invoice =
        list(&suite, pb::ListPaymentsRequest { invoice_id: elsewhere.invoice_id.clone(), ..Default::default() }).await;
    assert_eq!(by_invoice.payments, vec![elsewhere.clone()]);

    let mut seen = Vec::new();
    let mut page_token = String::new();
    for _ in 0..10 {
        let page = list(&suite, pb::ListPaymentsRequest { page_size: 3, page_token, ..Default::default() }).await;
        assert!(page.payments.len() <= 3);
        seen.extend(page.payments.into_iter().map(|payment| payment.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, vec![elsewhere.id, third.id, second.id, first.id], "pages cover every payment once");

    let mut client = suite.payments.clone();
    let bad_token = pb::ListPaymentsRequest { page_token: "after:nope".into(), ..Default::default() };
    assert_invalid(client.list_payments(bad_token).await, "page_token");
    assert_invalid(
        client.list_payments(pb::ListPaymentsRequest { page_size: 1_001, ..Default::default() }).await,
        "page_size",
    );
    assert_invalid(client.list_payments(pb::ListPaymentsRequest { status: 99, ..Default::default() }).await, "status");
    assert_invalid(
        client.list_payments(pb::ListPaymentsRequest { account_id: "nope".into(), ..Default::default() }).await,
        "account_id",
    );
    suite
}

async fn payment_methods_are_listed_newest_first(suite: Suite) -> Suite {
    let account_id = account(&suite).await;
    let card = card(&suite, &account_id, "tok_succeed").await;
    let transfer = add_method(&suite, &account_id, pb::PaymentMethodKind::BankTransfer, "").await;
    let wallet = add_method(&suite, &account_id, pb::PaymentMethodKind::MobileWallet, "tok_succeed_wallet").await;
    let listed = suite
        .payments
        .clone()
        .list_payment_methods(pb::ListPaymentMethodsRequest { account_id: account_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .payment_methods;
    assert_eq!(listed, vec![wallet, transfer, card]);
    let other = suite
        .payments
        .clone()
        .list_payment_methods(pb::ListPaymentMethodsRequest { account_id: account(&suite).await })
        .await
        .unwrap()
        .into_inner()
        .payment_methods;
    assert!(other.is_empty());
    suite
}

crate::on_both_backends!(
    payments_are_listed_newest_first_by_account_invoice_and_status,
    payment_methods_are_listed_newest_first,
);

/// A key revoked in the wallet stops working on payments within payments'
/// own key cache window: the wallet answers payments' lookups from its key
/// store, not from its own cache (a minute here), so the two windows do not
/// stack.
#[tokio::test]
async fn a_revoked_key_stops_working_within_one_cache_window() {
    let window = Duration::from_millis(300);
    let Some(suite) = Suite::spawn_with_key_cache(reservoir_testing::Backend::Sqlite, window).await else {
        return;
    };
    let issued = suite.wallet_store.issue_key(suite.tenant, PEPPER, chrono::Utc::now()).await.unwrap();
    let mut client = PaymentsServiceClient::with_interceptor(
        reservoir_testing::wallet::channel(suite.address).await,
        reservoir_testing::BearerKey::new(&issued.key),
    );
    let list = || pb::ListPaymentMethodsRequest { account_id: uuid::Uuid::now_v7().to_string() };
    client.list_payment_methods(list()).await.unwrap();
    assert!(suite.wallet_store.revoke_key(issued.id, chrono::Utc::now()).await.unwrap());
    tokio::time::sleep(window + Duration::from_millis(200)).await;
    let refused = client.list_payment_methods(list()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    suite.stop().await;
}
