use std::time::Duration;

use reservoir_proto::wallet as pb;
use tonic::Code;

use crate::helpers::*;

fn reserve_request(account: &pb::Account, amount: &str, ttl_seconds: u32) -> pb::ReserveRequest {
    pb::ReserveRequest {
        account_id: account.id.clone(),
        amount: amount.into(),
        ttl_seconds,
        idempotency_key: key(),
        ..Default::default()
    }
}

fn capture_request(hold: &pb::Hold, amount: &str) -> pb::CaptureHoldRequest {
    pb::CaptureHoldRequest {
        hold_id: hold.id.clone(),
        amount: amount.into(),
        idempotency_key: key(),
        ..Default::default()
    }
}

async fn a_hold_sets_funds_aside_and_a_capture_debits_up_to_it(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let reserved = app.client.clone().reserve(reserve_request(&account, "6", 60)).await.unwrap().into_inner();
    let hold = reserved.hold.unwrap();
    let balance_now = reserved.balance.unwrap();
    assert_eq!((balance_now.available.as_str(), balance_now.held.as_str()), ("4.00", "6.00"));
    assert_refused(debit(&app.client, &account, "4.01").await, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");
    assert_refused(
        app.client.clone().capture_hold(capture_request(&hold, "6.01")).await,
        Code::FailedPrecondition,
        "CAPTURE_EXCEEDS_HOLD",
    );
    let captured = app.client.clone().capture_hold(capture_request(&hold, "2.50")).await.unwrap().into_inner();
    assert_eq!(captured.hold.unwrap().status, i32::from(pb::HoldStatus::Captured));
    let kinds: Vec<i32> = captured.entries.iter().map(|entry| entry.kind).collect();
    assert_eq!(kinds, vec![i32::from(pb::EntryKind::Capture), i32::from(pb::EntryKind::Release)]);
    let after = captured.balance.unwrap();
    assert_eq!((after.available.as_str(), after.held.as_str()), ("7.50", "0.00"));
    assert_refused(
        app.client.clone().capture_hold(capture_request(&hold, "1")).await,
        Code::FailedPrecondition,
        "HOLD_NOT_ACTIVE",
    );
    assert_books_balance(&app.client, &account).await;
}

async fn a_released_hold_frees_everything(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let hold =
        app.client.clone().reserve(reserve_request(&account, "10", 60)).await.unwrap().into_inner().hold.unwrap();
    let release = || pb::ReleaseHoldRequest { hold_id: hold.id.clone(), idempotency_key: key() };
    let released = app.client.clone().release_hold(release()).await.unwrap().into_inner();
    assert_eq!(released.balance.unwrap().available, "10.00");
    assert_refused(app.client.clone().release_hold(release()).await, Code::FailedPrecondition, "HOLD_NOT_ACTIVE");
    assert_books_balance(&app.client, &account).await;
}

async fn a_hold_that_expired_before_its_capture_is_refused_and_released(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let hold = app.client.clone().reserve(reserve_request(&account, "6", 1)).await.unwrap().into_inner().hold.unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(available(&app.client, &account).await, d("10"), "an expired hold frees its funds at once");
    assert_refused(
        app.client.clone().capture_hold(capture_request(&hold, "6")).await,
        Code::FailedPrecondition,
        "HOLD_EXPIRED",
    );
    let mut released = false;
    for _ in 0..50 {
        if ledger(&app.client, &account).await.iter().any(|entry| entry.kind == i32::from(pb::EntryKind::Release)) {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "the sweeper wrote the RELEASE entry");
    assert_books_balance(&app.client, &account).await;
}

async fn hold_requests_are_checked(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    assert_invalid(app.client.clone().reserve(reserve_request(&account, "1", 0)).await, "ttl_seconds");
    assert_invalid(app.client.clone().reserve(reserve_request(&account, "1", 40 * 24 * 3_600)).await, "ttl_seconds");
    assert_refused(
        app.client.clone().reserve(reserve_request(&account, "10.01", 60)).await,
        Code::FailedPrecondition,
        "INSUFFICIENT_FUNDS",
    );
    let unknown = pb::Hold { id: uuid::Uuid::now_v7().to_string(), ..Default::default() };
    assert_refused(app.client.clone().capture_hold(capture_request(&unknown, "1")).await, Code::NotFound, "NOT_FOUND");
}

crate::on_both_backends!(
    a_hold_sets_funds_aside_and_a_capture_debits_up_to_it,
    a_released_hold_frees_everything,
    a_hold_that_expired_before_its_capture_is_refused_and_released,
    hold_requests_are_checked,
);
