use reservoir_proto::wallet as pb;
use tonic::Code;

use crate::helpers::*;

async fn a_retried_debit_returns_the_original_result_and_debits_once(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let request = debit_request(&account, "3");
    let first = app.client.clone().debit(request.clone()).await.unwrap().into_inner();
    let again = app.client.clone().debit(request.clone()).await.unwrap().into_inner();
    assert_eq!(first, again, "the same entries and the balance as it was then");
    assert_eq!(available(&app.client, &account).await, d("7"));
    let different = pb::DebitRequest { amount: "4".into(), ..request };
    assert_refused(app.client.clone().debit(different).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(ledger(&app.client, &account).await.len(), 2);
}

async fn a_key_cannot_replay_another_method(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let granted = grant_request(&account, "5", pb::GrantKind::Paid);
    app.client.clone().grant_credits(granted.clone()).await.unwrap();
    let debit = pb::DebitRequest { idempotency_key: granted.idempotency_key.clone(), ..debit_request(&account, "1") };
    assert_refused(app.client.clone().debit(debit).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
}

async fn a_refused_call_is_evaluated_afresh_on_retry(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let request = debit_request(&account, "3");
    assert_refused(app.client.clone().debit(request.clone()).await, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");
    grant(&app.client, &account, "5", pb::GrantKind::Paid).await;
    app.client.clone().debit(request.clone()).await.unwrap();
    app.client.clone().debit(request).await.unwrap();
    assert_eq!(available(&app.client, &account).await, d("2"), "debited once");
}

async fn every_mutating_call_replays(app: &TestApp) {
    let mut client = app.client.clone();
    let create = pb::CreateAccountRequest {
        external_id: key(),
        unit: usd(),
        overdraft_policy: pb::OverdraftPolicy::None.into(),
        idempotency_key: key(),
        ..Default::default()
    };
    let account = client.create_account(create.clone()).await.unwrap().into_inner();
    assert_eq!(client.create_account(create).await.unwrap().into_inner(), account);
    let account = account.account.unwrap();
    let granted = grant_request(&account, "10", pb::GrantKind::Paid);
    let first = client.grant_credits(granted.clone()).await.unwrap().into_inner();
    assert_eq!(client.grant_credits(granted).await.unwrap().into_inner(), first);
    let reserve = pb::ReserveRequest {
        account_id: account.id.clone(),
        amount: "2".into(),
        ttl_seconds: 60,
        idempotency_key: key(),
        ..Default::default()
    };
    let hold = client.reserve(reserve.clone()).await.unwrap().into_inner();
    assert_eq!(client.reserve(reserve).await.unwrap().into_inner(), hold);
    let capture = pb::CaptureHoldRequest {
        hold_id: hold.hold.unwrap().id,
        amount: "1".into(),
        idempotency_key: key(),
        ..Default::default()
    };
    let captured = client.capture_hold(capture.clone()).await.unwrap().into_inner();
    assert_eq!(client.capture_hold(capture).await.unwrap().into_inner(), captured);
    let refund = pb::RefundRequest {
        entry_id: captured.entries[0].id.clone(),
        amount: "1".into(),
        idempotency_key: key(),
        reason: String::new(),
    };
    let refunded = client.refund(refund.clone()).await.unwrap().into_inner();
    assert_eq!(client.refund(refund).await.unwrap().into_inner(), refunded);
    let adjust = pb::AdjustRequest {
        account_id: account.id.clone(),
        amount: "-1".into(),
        reason: "fix".into(),
        idempotency_key: key(),
        ..Default::default()
    };
    let adjusted = client.adjust(adjust.clone()).await.unwrap().into_inner();
    assert_eq!(client.adjust(adjust).await.unwrap().into_inner(), adjusted);
    let void = pb::VoidGrantRequest { grant_id: first.grant.unwrap().id, idempotency_key: key(), ..Default::default() };
    let voided = client.void_grant(void.clone()).await.unwrap().into_inner();
    assert_eq!(client.void_grant(void).await.unwrap().into_inner(), voided);
    let update = pb::UpdateAccountRequest {
        account_id: account.id.clone(),
        low_balance_threshold: Some("5".into()),
        idempotency_key: key(),
        ..Default::default()
    };
    let updated = client.update_account(update.clone()).await.unwrap().into_inner();
    assert_eq!(client.update_account(update).await.unwrap().into_inner(), updated);
    assert_eq!(available(&app.client, &account).await, d("0"));
    assert_books_balance(&app.client, &account).await;
}

async fn concurrent_retries_of_one_debit_all_get_its_result(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "100", pb::GrantKind::Paid).await;
    let request = debit_request(&account, "100");
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (client, request) = (app.client.clone(), request.clone());
            tokio::spawn(async move {
                loop {
                    match client.clone().debit(request.clone()).await {
                        Err(status) if status.code() == Code::Aborted => continue,
                        other => return other.map(|response| response.into_inner()),
                    }
                }
            })
        })
        .collect();
    let mut responses = Vec::new();
    for task in tasks {
        responses.push(task.await.unwrap().expect("every retry gets the original success"));
    }
    assert!(responses.windows(2).all(|pair| pair[0] == pair[1]));
    assert_eq!(available(&app.client, &account).await, d("0"));
    assert_eq!(ledger(&app.client, &account).await.len(), 2);
}

crate::on_both_backends!(
    concurrent_retries_of_one_debit_all_get_its_result,
    a_retried_debit_returns_the_original_result_and_debits_once,
    a_key_cannot_replay_another_method,
    a_refused_call_is_evaluated_afresh_on_retry,
    every_mutating_call_replays,
);
