//! Fraud rules on transfers: each rule trips at its threshold and not below
//! it; a matching transfer is refused (FRAUD_SUSPECTED, naming the rule) or
//! held for review (an event, nothing moved); a held transfer is released
//! once (the key it was asked with answers the transfer made) or rejected
//! without moving money; bad rules are refused by name.

use std::time::Duration;

use reservoir_proto::wallet as pb;
use tonic::Code;

use crate::helpers::*;
use crate::transfers::transfer_request;

async fn set_rules(app: &TestApp, rules: pb::TransferFraudRules) -> pb::TenantSettings {
    let request = pb::UpdateTenantSettingsRequest { transfer_fraud: Some(rules), ..Default::default() };
    app.client.clone().update_tenant_settings(request).await.unwrap().into_inner().settings.unwrap()
}

fn rule_of(status: &tonic::Status) -> Option<String> {
    reservoir_common::status::metadata_of(status).get("rule").cloned()
}

async fn review(
    app: &TestApp,
    id: &str,
    decision: pb::ReviewDecision,
) -> Result<pb::ReviewTransferResponse, tonic::Status> {
    let request =
        pb::ReviewTransferRequest { review_id: id.into(), decision: decision.into(), reason: "checked".into() };
    app.client.clone().review_transfer(request).await.map(tonic::Response::into_inner)
}

/// The tenant's events of one type, from the start.
async fn events_of(app: &TestApp, kind: pb::EventType) -> Vec<pb::Event> {
    let mut stream = events_from_start(&app.client).await;
    let mut events = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(300), stream.message()).await.map(Result::transpose)
    {
        events.extend(message.event.filter(|event| event.r#type == i32::from(kind)));
    }
    events
}

async fn the_count_limit_refuses_the_transfer_past_it(app: &TestApp) {
    let from = open_funded_account(&app.client, "100").await;
    let to = prepaid(&app.client).await;
    let rules = pb::TransferFraudRules {
        action: pb::FraudAction::Refuse.into(),
        velocity_window_seconds: 3_600,
        velocity_max_count: 2,
        ..Default::default()
    };
    let settings = set_rules(app, rules.clone()).await;
    assert_eq!(settings.transfer_fraud, Some(rules));
    let mut client = app.client.clone();
    client.transfer(transfer_request(&from, &to, "1")).await.unwrap();
    client.transfer(transfer_request(&from, &to, "1")).await.unwrap();
    let refused = client.transfer(transfer_request(&from, &to, "1")).await;
    let status = refused.as_ref().expect_err("the third in the hour is refused");
    assert_eq!(rule_of(status).as_deref(), Some("VELOCITY_COUNT"));
    assert_refused(refused, Code::FailedPrecondition, "FRAUD_SUSPECTED");
    assert_eq!((available(&app.client, &from).await, available(&app.client, &to).await), (d("98"), d("2")));
    // Another sender has its own count.
    let other = open_funded_account(&app.client, "10").await;
    client.transfer(transfer_request(&other, &to, "1")).await.unwrap();
    assert_books_balance(&app.client, &from).await;
}

async fn a_held_transfer_moves_nothing_until_released_once(app: &TestApp) {
    let from = open_funded_account(&app.client, "100").await;
    let to = prepaid(&app.client).await;
    let rules = pb::TransferFraudRules {
        action: pb::FraudAction::Review.into(),
        velocity_window_seconds: 3_600,
        velocity_max_amount: "10".into(),
        ..Default::default()
    };
    set_rules(app, rules).await;
    let mut client = app.client.clone();
    client.transfer(transfer_request(&from, &to, "6")).await.unwrap();
    client.transfer(transfer_request(&from, &to, "4")).await.unwrap();
    // 10 in the hour is the limit, reached; one cent more is held.
    let asked = transfer_request(&from, &to, "0.01");
    let held = client.transfer(asked.clone()).await.unwrap().into_inner();
    let review_of = held.review.clone().expect("held for review");
    assert!(held.out_entries.is_empty() && held.in_entries.is_empty(), "nothing moved");
    assert_eq!(
        (review_of.status, review_of.rule.as_str(), review_of.amount.as_str()),
        (pb::ReviewStatus::Held.into(), "VELOCITY_AMOUNT", "0.01")
    );
    assert_eq!(client.transfer(asked.clone()).await.unwrap().into_inner(), held, "asked again: still held");
    let mut changed = asked.clone();
    changed.amount = "0.02".into();
    assert_refused(client.transfer(changed).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(available(&app.client, &from).await, d("90"));
    let held_events = events_of(app, pb::EventType::TransferHeld).await;
    assert_eq!(held_events.len(), 1);
    assert_eq!(
        (held_events[0].account_id.as_str(), held_events[0].counterparty_account_id.as_str()),
        (from.id.as_str(), to.id.as_str())
    );
    let listed = client
        .list_transfer_reviews(pb::ListTransferReviewsRequest {
            status: pb::ReviewStatus::Held.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.reviews, vec![review_of.clone()]);

    // Released: the transfer is made then, once.
    let released = review(app, &review_of.id, pb::ReviewDecision::Release).await.unwrap();
    let review_now = released.review.unwrap();
    assert_eq!((review_now.status, review_now.reason.as_str()), (pb::ReviewStatus::Released.into(), "checked"));
    let transfer = released.transfer.unwrap();
    assert_eq!(transfer.out_entries[0].amount, "-0.01");
    assert_eq!((available(&app.client, &from).await, available(&app.client, &to).await), (d("89.99"), d("10.01")));
    let again = client.transfer(asked).await.unwrap().into_inner();
    assert_eq!(again, transfer, "the key it was asked with answers the transfer made");
    assert_refused(
        review(app, &review_of.id, pb::ReviewDecision::Release).await,
        Code::FailedPrecondition,
        "REVIEW_DECIDED",
    );
    assert_refused(
        review(app, &review_of.id, pb::ReviewDecision::Reject).await,
        Code::FailedPrecondition,
        "REVIEW_DECIDED",
    );
    assert_eq!(available(&app.client, &from).await, d("89.99"), "released once");
    assert_books_balance(&app.client, &from).await;
    assert_books_balance(&app.client, &to).await;
}

async fn a_new_recipient_is_capped_and_a_rejected_transfer_moves_nothing(app: &TestApp) {
    let from = open_funded_account(&app.client, "100").await;
    let (first, second) = (prepaid(&app.client).await, prepaid(&app.client).await);
    let rules = pb::TransferFraudRules {
        action: pb::FraudAction::Review.into(),
        new_recipient_max_amount: "20".into(),
        new_recipient_cooling_seconds: 86_400,
        ..Default::default()
    };
    set_rules(app, rules).await;
    let mut client = app.client.clone();
    // The cap itself goes through; a cent over it to a new recipient is held.
    let made = client.transfer(transfer_request(&from, &first, "20")).await.unwrap().into_inner();
    assert!(made.review.is_none());
    let held = client.transfer(transfer_request(&from, &second, "20.01")).await.unwrap().into_inner();
    let held = held.review.unwrap();
    assert_eq!(held.rule, "NEW_RECIPIENT");
    let still_new = client.transfer(transfer_request(&from, &first, "21")).await.unwrap().into_inner();
    assert!(still_new.review.is_some(), "a recipient stays new for the cooling period");

    let rejected = review(app, &held.id, pb::ReviewDecision::Reject).await.unwrap();
    assert!(rejected.transfer.is_none());
    assert_eq!(rejected.review.unwrap().status, i32::from(pb::ReviewStatus::Rejected));
    assert_refused(
        review(app, &held.id, pb::ReviewDecision::Release).await,
        Code::FailedPrecondition,
        "REVIEW_DECIDED",
    );
    assert_eq!(available(&app.client, &second).await, d("0"), "nothing moved");
    assert_eq!(available(&app.client, &from).await, d("80"));
    assert_eq!(events_of(app, pb::EventType::TransferRejected).await.len(), 1);
    assert_books_balance(&app.client, &from).await;
}

async fn bad_rules_are_refused_naming_their_field(app: &TestApp) {
    let mut client = app.client.clone();
    let with = |rules: pb::TransferFraudRules| pb::UpdateTenantSettingsRequest {
        transfer_fraud: Some(rules),
        ..Default::default()
    };
    let cases = [
        (
            pb::TransferFraudRules { velocity_max_count: 2, ..Default::default() },
            "transfer_fraud.velocity_window_seconds",
        ),
        (
            pb::TransferFraudRules {
                velocity_window_seconds: 60,
                velocity_max_amount: "-1".into(),
                ..Default::default()
            },
            "transfer_fraud.velocity_max_amount",
        ),
        (
            pb::TransferFraudRules { new_recipient_max_amount: "5".into(), ..Default::default() },
            "transfer_fraud.new_recipient_cooling_seconds",
        ),
        (pb::TransferFraudRules { action: 9, ..Default::default() }, "transfer_fraud.action"),
    ];
    for (rules, field) in cases {
        assert_invalid(client.update_tenant_settings(with(rules)).await, field);
    }
    let settings = client.get_tenant_settings(pb::GetTenantSettingsRequest {}).await.unwrap().into_inner();
    assert_eq!(settings.settings.unwrap().transfer_fraud, None, "nothing set");
    assert_invalid(review(app, "not-an-id", pb::ReviewDecision::Release).await, "review_id");
    assert_refused(
        review(app, &uuid::Uuid::now_v7().to_string(), pb::ReviewDecision::Release).await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

crate::on_both_backends!(
    the_count_limit_refuses_the_transfer_past_it,
    a_held_transfer_moves_nothing_until_released_once,
    a_new_recipient_is_capped_and_a_rejected_transfer_moves_nothing,
    bad_rules_are_refused_naming_their_field,
);
