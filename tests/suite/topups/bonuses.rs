//! Bonus credits given with a purchase: granted after the paid ones and
//! linked to them, clawed back in proportion when the payment is refunded,
//! down to what is left unspent, with the rest recorded; nothing taken twice
//! across a restart; bad bonuses refused by name.

use rust_decimal::Decimal;

use super::*;

async fn top_up(orchestrator: &mut Orchestrator, id: &str) -> pb::TopUp {
    orchestrator.get_top_up(pb::GetTopUpRequest { top_up_id: id.into() }).await.unwrap().into_inner().top_up.unwrap()
}

/// The bonus's clawbacks, once `count` of them are applied (waits up to 20 s).
async fn applied(orchestrator: &Orchestrator, id: &str, count: usize) -> pb::TopUpBonus {
    for _ in 0..200 {
        let bonus = top_up(&mut orchestrator.clone(), id).await.bonus.unwrap();
        if bonus.clawbacks.iter().filter(|clawback| clawback.applied).count() == count {
            return bonus;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{count} clawbacks were not applied within 20 s");
}

async fn a_refund_claws_back_the_unspent_bonus_once(backend: Backend) {
    let Some(mut suite) = Suite::start(backend).await else {
        return;
    };
    let mut orchestrator = suite.orchestrator().await;
    let account = open_funded_account(&suite.wallet, "0").await;
    let card = suite.card(&account, "tok_succeed").await;

    // Buy 100, get 10% free, drawn first (priority 1).
    let bonus = pb::Bonus { percent: 10, priority: Some(1), ..Default::default() };
    let request = pb::StartTopUpRequest { bonus: Some(bonus), ..start(&account, "100", &card) };
    let bought = orchestrator.start_top_up(request.clone()).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(status(&bought), pb::TopUpStatus::Succeeded, "{bought:?}");
    let granted = bought.bonus.clone().unwrap();
    assert_eq!(granted.credits, "10");
    let succeeded: Vec<i32> = bought
        .steps
        .iter()
        .filter(|line| line.outcome == i32::from(pb::StepOutcome::Succeeded))
        .map(|line| line.step)
        .collect();
    let expected: Vec<i32> =
        [pb::Step::CreateInvoice, pb::Step::Charge, pb::Step::Grant, pb::Step::GrantBonus, pb::Step::MarkPaid]
            .into_iter()
            .map(i32::from)
            .collect();
    assert_eq!(succeeded, expected);
    let linked = suite.grants_from(&account, &bought.grant_id).await;
    assert_eq!(linked.len(), 1, "the bonus names the paid grant");
    assert_eq!(linked[0].id, granted.grant_id);
    assert_eq!(
        (linked[0].kind, linked[0].source, linked[0].priority),
        (wallet_pb::GrantKind::Promotional.into(), wallet_pb::GrantSource::Bonus.into(), 1)
    );
    assert_eq!(available(&suite.wallet, &account).await, d("110"));
    assert_eq!(
        orchestrator.start_top_up(request).await.unwrap().into_inner().top_up.unwrap().id,
        bought.id,
        "the same key answers the same top-up, with one bonus"
    );

    // 4 of the bonus is spent; half the payment is refunded: half the bonus
    // (5) is asked back, and 5 of the 6 left is there to take. The
    // orchestrator dies once the wallet has taken it, before it marks the
    // clawback applied: started again, it asks again and takes nothing more.
    suite.debit(&account, "4").await;
    suite.restart_orchestrator("after:CLAWBACK").await;
    let paid: Decimal = bought.amount.parse().unwrap();
    let half = (paid / Decimal::TWO).round_dp(2);
    let refund = |amount: String| payments_pb::RefundRequest {
        payment_id: bought.payment_id.clone(),
        amount,
        reason: "customer asked".into(),
        idempotency_key: key(),
    };
    suite.payments.clone().refund(refund(half.to_string())).await.unwrap();
    suite.processes[ORCHESTRATOR].reap().await;
    assert_eq!(available(&suite.wallet, &account).await, d("101"), "taken before the crash");
    suite.restart_orchestrator("").await;
    orchestrator = suite.orchestrator().await;
    let first = applied(&orchestrator, &bought.id, 1).await;
    let clawback = &first.clawbacks[0];
    assert_eq!(
        (clawback.asked.as_str(), clawback.clawed_back.as_str(), clawback.unrecovered.as_str()),
        ("5", "5", "0"),
        "{first:?}"
    );
    assert_eq!(available(&suite.wallet, &account).await, d("101"));

    // The rest of the payment is refunded: the other 5 is asked, only the 1
    // left can be taken, and the 4 spent is recorded as not recovered.
    suite.payments.clone().refund(refund(String::new())).await.unwrap();
    let both = applied(&orchestrator, &bought.id, 2).await;
    let last = &both.clawbacks[1];
    assert_eq!((last.asked.as_str(), last.clawed_back.as_str(), last.unrecovered.as_str()), ("5", "1", "4"));
    assert_eq!((both.clawed_back.as_str(), both.unrecovered.as_str()), ("6", "4"));
    assert_eq!(available(&suite.wallet, &account).await, d("100"));
    let voids: Vec<String> = ledger(&suite.wallet, &account)
        .await
        .into_iter()
        .filter(|entry| entry.kind == i32::from(wallet_pb::EntryKind::Void))
        .map(|entry| entry.amount)
        .collect();
    assert_eq!(voids, vec!["-5.00", "-1.00"]);

    // A restart reads the payments' events again from its cursor: nothing
    // is taken twice.
    suite.restart_orchestrator("").await;
    orchestrator = suite.orchestrator().await;
    suite.grant(&account, "0.01").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = top_up(&mut orchestrator, &bought.id).await.bonus.unwrap();
    assert_eq!(after.clawbacks.len(), 2);
    assert_eq!(after.clawed_back, "6");
    assert_eq!(available(&suite.wallet, &account).await, d("100.01"));
    let mut stream =
        orchestrator.watch_events(pb::WatchEventsRequest { after_sequence: 0 }).await.unwrap().into_inner();
    let mut clawed = Vec::new();
    while let Ok(Ok(Some(message))) = tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
        clawed.extend(
            message.event.filter(|event| event.r#type == i32::from(pb::EventType::BonusClawedBack)).map(|e| e.credits),
        );
    }
    assert_eq!(clawed, vec!["5", "1"], "one event per refund");
    assert_settled_once(&suite, &account).await;

    // Bad bonuses are refused by name, and start nothing.
    let before = suite.top_ups(&account).await.len();
    let with = |bonus: pb::Bonus| pb::StartTopUpRequest { bonus: Some(bonus), ..start(&account, "100", &card) };
    let past = reservoir_common::time::to_timestamp(chrono::Utc::now() - chrono::Duration::hours(1));
    for (bonus, field) in [
        (pb::Bonus { percent: 101, ..Default::default() }, "bonus.percent"),
        (pb::Bonus { credits: "5".into(), percent: 10, ..Default::default() }, "bonus.credits"),
        (pb::Bonus::default(), "bonus.credits"),
        (pb::Bonus { credits: "1.234".into(), ..Default::default() }, "bonus.credits"),
        (pb::Bonus { credits: "-1".into(), ..Default::default() }, "bonus.credits"),
        (pb::Bonus { credits: "5".into(), expires_at: Some(past), ..Default::default() }, "bonus.expires_at"),
        (pb::Bonus { credits: "5".into(), priority: Some(-1), ..Default::default() }, "bonus.priority"),
    ] {
        assert_invalid(orchestrator.start_top_up(with(bonus)).await, field);
    }
    let tiny = pb::StartTopUpRequest {
        bonus: Some(pb::Bonus { percent: 1, ..Default::default() }),
        ..start(&account, "0.5", &card)
    };
    assert_invalid(orchestrator.start_top_up(tiny).await, "bonus.percent");
    assert_eq!(suite.top_ups(&account).await.len(), before);
    assert_eq!(available(&suite.wallet, &account).await, d("100.01"));
    suite.stop().await;
}

reservoir_testing::each_backend!(a_refund_claws_back_the_unspent_bonus_once,);
