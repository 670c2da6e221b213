//! Fraud rules on recharges, through the whole suite: a velocity limit
//! refuses the top-up past it (its invoice voided, no credits), card testing
//! stops the next charge of a card declined often enough across accounts
//! before it reaches the gateway, and a held charge waits for an operator:
//! released, it is charged and credited once; rejected, nothing is charged.

use super::*;

async fn set_rules(suite: &Suite, rules: payments_pb::ChargeFraudRules) {
    let request = payments_pb::UpdateFraudRulesRequest { rules: Some(rules.clone()) };
    let answered = suite.payments.clone().update_fraud_rules(request).await.unwrap().into_inner();
    assert_eq!(answered.rules, Some(rules));
}

async fn decisions(suite: &Suite) -> Vec<payments_pb::FraudDecision> {
    let request = payments_pb::ListFraudDecisionsRequest::default();
    suite.payments.clone().list_fraud_decisions(request).await.unwrap().into_inner().decisions
}

async fn top_up_of(orchestrator: &mut Orchestrator, id: &str) -> pb::TopUp {
    orchestrator.get_top_up(pb::GetTopUpRequest { top_up_id: id.into() }).await.unwrap().into_inner().top_up.unwrap()
}

async fn recharges_matching_a_rule_are_refused_or_held(backend: Backend) {
    let Some(suite) = Suite::start(backend).await else {
        return;
    };
    let mut orchestrator = suite.orchestrator().await;

    // Two top-ups an hour per account: the third is refused before the card is charged.
    set_rules(
        &suite,
        payments_pb::ChargeFraudRules {
            action: payments_pb::FraudAction::Refuse.into(),
            velocity_window_seconds: 3_600,
            account_max_count: 2,
            ..Default::default()
        },
    )
    .await;
    let busy = open_funded_account(&suite.wallet, "0").await;
    let card = suite.card(&busy, "tok_succeed").await;
    for _ in 0..2 {
        let top_up = orchestrator.start_top_up(start(&busy, "10", &card)).await.unwrap().into_inner().top_up.unwrap();
        assert_eq!(status(&top_up), pb::TopUpStatus::Succeeded, "{top_up:?}");
    }
    let third = orchestrator.start_top_up(start(&busy, "10", &card)).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!((status(&third), third.reason.as_str()), (pb::TopUpStatus::Failed, "CHARGE_REFUSED FRAUD_SUSPECTED"));
    assert_eq!(suite.invoice(&third.invoice_id).await.status, i32::from(invoicing_pb::InvoiceStatus::Void));
    assert_eq!(suite.payments_of(&busy).await.len(), 2, "no payment made for the refused one");
    assert_eq!(available(&suite.wallet, &busy).await, d("20"));
    let refused = &decisions(&suite).await[0];
    assert_eq!((refused.rule.as_str(), refused.decision.as_str()), ("ACCOUNT_VELOCITY", "REFUSED"));

    // Card testing: one card declined on two accounts is not tried on a third.
    set_rules(
        &suite,
        payments_pb::ChargeFraudRules {
            action: payments_pb::FraudAction::Refuse.into(),
            max_declines: 2,
            decline_window_seconds: 3_600,
            ..Default::default()
        },
    )
    .await;
    let mut reasons = Vec::new();
    let mut tested = Vec::new();
    for _ in 0..3 {
        let account = open_funded_account(&suite.wallet, "0").await;
        let card = suite.card(&account, "tok_decline").await;
        let top_up =
            orchestrator.start_top_up(start(&account, "10", &card)).await.unwrap().into_inner().top_up.unwrap();
        assert_eq!(status(&top_up), pb::TopUpStatus::Failed);
        reasons.push(top_up.reason);
        tested.push(account);
    }
    assert_eq!(
        reasons,
        vec!["DECLINED card_declined", "DECLINED card_declined", "CHARGE_REFUSED FRAUD_SUSPECTED"],
        "the first decline is below the threshold; after the second, the card is not tried again"
    );
    assert!(suite.payments_of(&tested[2]).await.is_empty(), "the gateway was not asked");
    assert_eq!(decisions(&suite).await[0].rule, "CARD_TESTING");

    // Held: 30 on one card an hour is the limit, reached; 5 more waits for a person.
    set_rules(
        &suite,
        payments_pb::ChargeFraudRules {
            action: payments_pb::FraudAction::Review.into(),
            velocity_window_seconds: 3_600,
            method_max_amount: "30".into(),
            ..Default::default()
        },
    )
    .await;
    let held_account = open_funded_account(&suite.wallet, "0").await;
    let card = suite.card(&held_account, "tok_succeed").await;
    let first =
        orchestrator.start_top_up(start(&held_account, "30", &card)).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(status(&first), pb::TopUpStatus::Succeeded, "{first:?}");
    let held = orchestrator.start_top_up(start(&held_account, "5", &card)).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!((status(&held), held.reason.as_str()), (pb::TopUpStatus::RequiresAction, "FRAUD_REVIEW"));
    let payment = suite.payments_of(&held_account).await.into_iter().find(|p| p.id == held.payment_id).unwrap();
    assert_eq!(
        (payment.status, payment.failure_code.as_str()),
        (payments_pb::PaymentStatus::Pending.into(), "fraud_review")
    );
    assert!(payment.attempts.is_empty(), "the gateway was not asked");
    assert_eq!(available(&suite.wallet, &held_account).await, d("30"));
    let review = |id: &str, decision: payments_pb::ReviewDecision| payments_pb::ReviewPaymentRequest {
        payment_id: id.into(),
        decision: decision.into(),
        reason: "called the customer".into(),
    };
    let released =
        suite.payments.clone().review_payment(review(&payment.id, payments_pb::ReviewDecision::Release)).await;
    assert_eq!(
        released.unwrap().into_inner().payment.unwrap().status,
        i32::from(payments_pb::PaymentStatus::Succeeded)
    );
    eventually("the released top-up granted", || {
        let mut orchestrator = orchestrator.clone();
        let id = held.id.clone();
        async move { status(&top_up_of(&mut orchestrator, &id).await) == pb::TopUpStatus::Succeeded }
    })
    .await;
    assert_eq!(available(&suite.wallet, &held_account).await, d("35"));
    let again = suite.payments.clone().review_payment(review(&payment.id, payments_pb::ReviewDecision::Release)).await;
    assert_eq!(
        reservoir_common::status::reason_of(&again.unwrap_err()).as_deref(),
        Some("PAYMENT_NOT_HELD"),
        "released once"
    );

    // Another held one, rejected: nothing charged, the top-up fails, its invoice void.
    let rejected =
        orchestrator.start_top_up(start(&held_account, "5", &card)).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(rejected.reason, "FRAUD_REVIEW");
    let answer =
        suite.payments.clone().review_payment(review(&rejected.payment_id, payments_pb::ReviewDecision::Reject)).await;
    let answer = answer.unwrap().into_inner().payment.unwrap();
    assert_eq!(
        (answer.status, answer.failure_code.as_str()),
        (payments_pb::PaymentStatus::Declined.into(), "fraud_rejected")
    );
    eventually("the rejected top-up failed", || {
        let mut orchestrator = orchestrator.clone();
        let id = rejected.id.clone();
        async move { status(&top_up_of(&mut orchestrator, &id).await) == pb::TopUpStatus::Failed }
    })
    .await;
    let rejected = top_up_of(&mut orchestrator, &rejected.id).await;
    assert_eq!(suite.invoice(&rejected.invoice_id).await.status, i32::from(invoicing_pb::InvoiceStatus::Void));
    assert_eq!(available(&suite.wallet, &held_account).await, d("35"), "nothing charged, nothing granted");
    let recorded: Vec<(String, String)> =
        decisions(&suite).await.into_iter().take(4).map(|decision| (decision.rule, decision.decision)).collect();
    let method = "METHOD_VELOCITY".to_owned();
    assert_eq!(
        recorded,
        vec![
            (method.clone(), "REJECTED".to_owned()),
            (method.clone(), "HELD".to_owned()),
            (method.clone(), "RELEASED".to_owned()),
            (method, "HELD".to_owned()),
        ]
    );
    assert_settled_once(&suite, &held_account).await;

    // Released, but the gateway's answer is lost (it charged): the top-up
    // charges again under the payment's key, learns of the charge and
    // grants once.
    let lost = open_funded_account(&suite.wallet, "0").await;
    let card = suite.card(&lost, "tok_timeout").await;
    let held = orchestrator.start_top_up(start(&lost, "31", &card)).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(held.reason, "FRAUD_REVIEW");
    let mut payments = suite.payments.clone();
    let released = payments.review_payment(review(&held.payment_id, payments_pb::ReviewDecision::Release)).await;
    let released = released.unwrap().into_inner().payment.unwrap();
    assert_eq!(
        (released.status, released.failure_code.as_str()),
        (payments_pb::PaymentStatus::Failed.into(), "timeout")
    );
    eventually("the top-up charged again and granted", || {
        let mut orchestrator = orchestrator.clone();
        let id = held.id.clone();
        async move { status(&top_up_of(&mut orchestrator, &id).await) == pb::TopUpStatus::Succeeded }
    })
    .await;
    assert_eq!(available(&suite.wallet, &lost).await, d("31"));
    assert_settled_once(&suite, &lost).await;
    // Each hold told of once, to the tenant's event stream (and so its webhooks).
    let mut stream = suite
        .payments
        .clone()
        .watch_events(payments_pb::WatchEventsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut held_events = Vec::new();
    while let Ok(Ok(Some(message))) = tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
        held_events.extend(
            message
                .event
                .filter(|event| event.r#type == i32::from(payments_pb::EventType::PaymentHeldForReview))
                .map(|event| event.payment_id),
        );
    }
    assert_eq!(held_events, vec![payment.id.clone(), rejected.payment_id.clone(), held.payment_id.clone()]);

    // The operator's commands: the rules as set, the decisions, rules off.
    let endpoint = format!("http://{}", suite.processes[3].address());
    let run = |arguments: &[&str]| {
        let mut command = suite.environment.command(arguments);
        command.env("RESERVOIR_API_KEY", &suite.api_key).env("RESERVOIR_PAYMENTS_ENDPOINT", &endpoint);
        command
    };
    let shown = run(&["fraud", "charge-rules"]).output().await.unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        (shown["method_max_amount"].as_str(), shown["action"].as_str()),
        (Some("30"), Some("FRAUD_ACTION_REVIEW"))
    );
    let table = run(&["fraud", "decisions"]).output().await.unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("CARD_TESTING") && table.contains("REJECTED"), "{table}");
    let off = run(&["fraud", "charge-rules", "--off"]).output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&off.stdout).trim(), "null", "no rules");
    suite.stop().await;
}

reservoir_testing::each_backend!(recharges_matching_a_rule_are_refused_or_held,);
