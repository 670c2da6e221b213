use std::time::Duration;

use reservoir_proto::metering as pb;
use tonic::Code;

use crate::helpers::*;

fn authorize_request(
    account: &reservoir_proto::wallet::Account,
    estimate: &str,
    ttl_seconds: u32,
) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        account_id: account.id.clone(),
        meter_code: "gpu".into(),
        estimated_quantity: estimate.into(),
        dimensions: Default::default(),
        ttl_seconds,
        idempotency_key: key(),
    }
}

/// An authorization the metering service granted.
async fn authorize(
    suite: &Suite,
    account: &reservoir_proto::wallet::Account,
    estimate: &str,
    ttl_seconds: u32,
) -> pb::Authorization {
    suite
        .metering
        .clone()
        .authorize(authorize_request(account, estimate, ttl_seconds))
        .await
        .unwrap()
        .into_inner()
        .authorization
        .unwrap()
}

async fn settle(
    suite: &Suite,
    authorization: &pb::Authorization,
    actual: &str,
) -> Result<pb::SettleResponse, tonic::Status> {
    suite
        .metering
        .clone()
        .settle(pb::SettleRequest { authorization_id: authorization.id.clone(), actual_quantity: actual.into() })
        .await
        .map(|response| response.into_inner())
}

async fn an_authorization_holds_the_estimate_and_settles_the_actual(suite: Suite) -> Suite {
    priced_meter(&suite, "gpu", "2").await;
    let account = funded_account(&suite, "100").await;
    let request = authorize_request(&account, "10", 60);
    let authorization =
        suite.metering.clone().authorize(request.clone()).await.unwrap().into_inner().authorization.unwrap();
    assert_eq!(authorization.estimated_amount, "20");
    assert_eq!(authorization.status, i32::from(pb::AuthorizationStatus::Active));
    let again = suite.metering.clone().authorize(request).await.unwrap().into_inner().authorization.unwrap();
    assert_eq!(again.id, authorization.id, "the same key returns the same authorization");
    let balance_now = balance(&suite.wallet, &account).await;
    assert_eq!((balance_now.available.as_str(), balance_now.held.as_str()), ("80.00", "20.00"));
    let settled = settle(&suite, &authorization, "6").await.unwrap();
    let result = settled.result.unwrap();
    assert_eq!((result.status, result.amount.as_str()), (i32::from(pb::EventStatus::Charged), "12"));
    let settled_authorization = settled.authorization.unwrap();
    assert_eq!(settled_authorization.status, i32::from(pb::AuthorizationStatus::Settled));
    assert_eq!(settled_authorization.charged_amount, "12");
    let after = balance(&suite.wallet, &account).await;
    assert_eq!((after.available.as_str(), after.held.as_str()), ("88.00", "0.00"), "the rest is released");
    let replay = settle(&suite, &authorization, "6").await.unwrap();
    assert_eq!(replay.result.unwrap().amount, "12", "settling again returns the settlement");
    assert_refused(settle(&suite, &authorization, "7").await, Code::FailedPrecondition, "AUTHORIZATION_SETTLED");
    assert_books_balance(&suite.wallet, &account).await;
    suite
}

async fn an_actual_above_the_estimate_is_charged_when_the_wallet_allows(suite: Suite) -> Suite {
    priced_meter(&suite, "gpu", "1").await;
    let account = funded_account(&suite, "10").await;
    let authorization = authorize(&suite, &account, "4", 60).await;
    let settled = settle(&suite, &authorization, "7").await.unwrap();
    assert_eq!(settled.result.unwrap().status, i32::from(pb::EventStatus::Charged));
    assert_eq!(available(&suite.wallet, &account).await, d("3"));

    let authorization = authorize(&suite, &account, "2", 60).await;
    let settled = settle(&suite, &authorization, "5").await.unwrap();
    let result = settled.result.unwrap();
    assert_eq!((result.status, result.reason.as_str()), (i32::from(pb::EventStatus::Uncovered), "INSUFFICIENT_FUNDS"));
    let settled_authorization = settled.authorization.unwrap();
    assert_eq!(
        (settled_authorization.charged_amount.as_str(), settled_authorization.uncovered_amount.as_str()),
        ("2", "3")
    );
    assert_eq!(available(&suite.wallet, &account).await, d("1"), "the held estimate is charged, the excess is not");
    assert_books_balance(&suite.wallet, &account).await;
    suite
}

async fn an_authorization_the_wallet_cannot_cover_is_refused(suite: Suite) -> Suite {
    priced_meter(&suite, "gpu", "1").await;
    let account = funded_account(&suite, "3").await;
    assert_refused(
        suite.metering.clone().authorize(authorize_request(&account, "4", 60)).await,
        Code::FailedPrecondition,
        "INSUFFICIENT_FUNDS",
    );
    assert_eq!(available(&suite.wallet, &account).await, d("3"));
    suite
}

async fn an_unsettled_authorization_expires_with_its_hold(suite: Suite) -> Suite {
    priced_meter(&suite, "gpu", "1").await;
    let account = funded_account(&suite, "10").await;
    let authorization = authorize(&suite, &account, "4", 1).await;
    assert_eq!(available(&suite.wallet, &account).await, d("6"));
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_refused(settle(&suite, &authorization, "1").await, Code::FailedPrecondition, "AUTHORIZATION_EXPIRED");
    assert_eq!(available(&suite.wallet, &account).await, d("10"), "the wallet hold expired with it");
    suite
}

async fn a_settlement_the_wallet_interrupted_finishes_once(mut suite: Suite) -> Suite {
    priced_meter(&suite, "gpu", "1").await;
    let account = funded_account(&suite, "10").await;
    let authorization = authorize(&suite, &account, "4", 60).await;
    suite.stop_wallet().await;
    let interrupted = settle(&suite, &authorization, "3").await;
    assert_eq!(interrupted.unwrap_err().code(), Code::Unavailable);
    suite.start_wallet().await;
    // The worker runs meanwhile; it must not charge the settlement's usage on its own.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let settled = settle(&suite, &authorization, "3").await.unwrap();
    assert_eq!(settled.result.unwrap().status, i32::from(pb::EventStatus::Charged));
    assert_eq!(available(&suite.wallet, &account).await, d("7"));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(debited(&suite, &account).await, d("3"), "captured once, never debited besides");
    assert_books_balance(&suite.wallet, &account).await;
    suite
}

async fn settlement_event_ids_are_reserved(suite: Suite) -> Suite {
    priced_meter(&suite, "gpu", "1").await;
    let account = funded_account(&suite, "10").await;
    let mut usage = crate::helpers::event(&account, "gpu", "1");
    usage.event_id = format!("authorization:{}", uuid::Uuid::now_v7());
    let results = ingest(&suite, vec![usage]).await;
    assert_eq!((results[0].status, results[0].field.as_str()), (i32::from(pb::EventStatus::Invalid), "event_id"));
    suite
}

crate::on_both_backends!(
    a_settlement_the_wallet_interrupted_finishes_once,
    settlement_event_ids_are_reserved,
    an_authorization_holds_the_estimate_and_settles_the_actual,
    an_actual_above_the_estimate_is_charged_when_the_wallet_allows,
    an_authorization_the_wallet_cannot_cover_is_refused,
    an_unsettled_authorization_expires_with_its_hold,
);
