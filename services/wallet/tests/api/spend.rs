use std::time::Duration;

use reservoir_proto::wallet as pb;
use rust_decimal::Decimal;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::helpers::*;

async fn update(
    client: &Client,
    account: &pb::Account,
    edit: impl FnOnce(&mut pb::UpdateAccountRequest),
) -> pb::Account {
    let mut request =
        pb::UpdateAccountRequest { account_id: account.id.clone(), idempotency_key: key(), ..Default::default() };
    edit(&mut request);
    client.clone().update_account(request).await.unwrap().into_inner().account.unwrap()
}

async fn spend(client: &Client, account: &pb::Account) -> pb::Spend {
    client
        .clone()
        .get_spend(pb::GetSpendRequest { account_id: account.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .spend
        .unwrap()
}

/// The account's events of one type, read until `count` arrive or a few seconds pass.
async fn events_of(client: &Client, account: &pb::Account, wanted: pb::EventType, count: usize) -> Vec<pb::Event> {
    let mut stream = events_from_start(client).await;
    let mut events = Vec::new();
    while events.len() < count {
        match tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
            Ok(Some(Ok(response))) => {
                let event = response.event.unwrap();
                if event.account_id == account.id && event.r#type == i32::from(wanted) {
                    events.push(event);
                }
            }
            _ => break,
        }
    }
    events
}

async fn the_cap_alerts_at_each_level_once_and_refuses_debits_past_it_until_raised(app: &TestApp) {
    let account = open_account(&app.client, pb::OverdraftPolicy::Unlimited, "").await;
    let updated = update(&app.client, &account, |request| request.monthly_spending_cap = Some("100".into())).await;
    assert_eq!(updated.monthly_spending_cap, "100.00");
    debit(&app.client, &account, "60").await.unwrap();
    debit(&app.client, &account, "25").await.unwrap();
    debit(&app.client, &account, "15").await.unwrap();
    assert_refused(debit(&app.client, &account, "0.01").await, Code::FailedPrecondition, "SPENDING_CAP_REACHED");
    // A hold that could become spend is refused too, and so is each such debit of a batch.
    let reserve = pb::ReserveRequest {
        account_id: account.id.clone(),
        amount: "1".into(),
        ttl_seconds: 60,
        idempotency_key: key(),
        ..Default::default()
    };
    assert_refused(app.client.clone().reserve(reserve).await, Code::FailedPrecondition, "SPENDING_CAP_REACHED");
    let batch = pb::BatchDebitRequest { debits: vec![debit_request(&account, "1")] };
    let results = app.client.clone().batch_debit(batch).await.unwrap().into_inner().results;
    match &results[0].outcome {
        Some(pb::batch_debit_result::Outcome::Error(error)) => assert_eq!(error.reason, "SPENDING_CAP_REACHED"),
        other => panic!("{other:?}"),
    }
    let alerts = events_of(&app.client, &account, pb::EventType::SpendingCapAlert, 4).await;
    let seen: Vec<(u32, &str, &str)> =
        alerts.iter().map(|event| (event.cap_percent, event.amount.as_str(), event.threshold.as_str())).collect();
    assert_eq!(seen, vec![(50, "60.00", "100.00"), (80, "85.00", "100.00"), (100, "100.00", "100.00")]);
    let now = spend(&app.client, &account).await;
    assert_eq!((now.spent.as_str(), now.remaining.as_str(), now.alerted_percent), ("100.00", "0.00", 100));
    assert_eq!(balance(&app.client, &account).await.total, "-100.00", "the refused calls moved nothing");

    // Raised: debits go through again. Removed: no limit at all.
    update(&app.client, &account, |request| request.monthly_spending_cap = Some("150".into())).await;
    debit(&app.client, &account, "50").await.unwrap();
    assert_refused(debit(&app.client, &account, "0.01").await, Code::FailedPrecondition, "SPENDING_CAP_REACHED");
    let removed = update(&app.client, &account, |request| request.monthly_spending_cap = Some(String::new())).await;
    assert_eq!(removed.monthly_spending_cap, "");
    debit(&app.client, &account, "1000").await.unwrap();
    let now = spend(&app.client, &account).await;
    assert_eq!((now.spent.as_str(), now.monthly_spending_cap.as_str(), now.remaining.as_str()), ("1150.00", "", ""));
    assert_books_balance(&app.client, &account).await;
}

async fn the_projection_extends_the_rate_so_far_to_the_end_of_the_month(app: &TestApp) {
    let account = open_account(&app.client, pb::OverdraftPolicy::Unlimited, "").await;
    debit(&app.client, &account, "12.34").await.unwrap();
    let figures = spend(&app.client, &account).await;
    let millis = |at: &Option<prost_types::Timestamp>| {
        let at = at.unwrap();
        Decimal::from(at.seconds * 1_000 + i64::from(at.nanos) / 1_000_000)
    };
    let start = millis(&figures.period_start);
    let elapsed = millis(&figures.as_of) - start;
    let length = millis(&figures.period_end) - start;
    // A constant rate: what was spent in the time gone, over the whole month.
    let expected = (d("12.34") * length / elapsed).round_dp(2);
    assert_eq!((figures.spent.as_str(), d(&figures.projected)), ("12.34", expected));
    assert!(d(&figures.projected) >= d("12.34"));
    let first_of_month = chrono::DateTime::from_timestamp(figures.period_start.unwrap().seconds, 0).unwrap();
    assert_eq!(first_of_month.format("%d %H:%M:%S").to_string(), "01 00:00:00");
}

async fn a_refund_gives_room_back_under_the_cap(app: &TestApp) {
    let account = open_funded_account(&app.client, "500").await;
    update(&app.client, &account, |request| request.monthly_spending_cap = Some("100".into())).await;
    let debited = debit(&app.client, &account, "100").await.unwrap();
    assert_refused(debit(&app.client, &account, "1").await, Code::FailedPrecondition, "SPENDING_CAP_REACHED");
    let refund = pb::RefundRequest {
        entry_id: debited.entries[0].id.clone(),
        amount: "40".into(),
        idempotency_key: key(),
        reason: "a dropped call".into(),
    };
    app.client.clone().refund(refund).await.unwrap();
    assert_eq!(spend(&app.client, &account).await.spent, "60.00");
    debit(&app.client, &account, "40").await.unwrap();
    assert_refused(debit(&app.client, &account, "0.01").await, Code::FailedPrecondition, "SPENDING_CAP_REACHED");
}

async fn the_low_balance_warning_fires_once_per_fall_and_again_after_recovery(app: &TestApp) {
    let account = open_funded_account(&app.client, "100").await;
    let updated = update(&app.client, &account, |request| request.low_balance_warning = Some("30".into())).await;
    assert_eq!(updated.low_balance_warning, "30.00");
    debit(&app.client, &account, "75").await.unwrap();
    debit(&app.client, &account, "5").await.unwrap();
    grant(&app.client, &account, "50", pb::GrantKind::Paid).await;
    debit(&app.client, &account, "50").await.unwrap();
    debit(&app.client, &account, "20").await.unwrap();
    let warnings = events_of(&app.client, &account, pb::EventType::BalanceWarning, 3).await;
    let seen: Vec<(&str, &str)> =
        warnings.iter().map(|event| (event.threshold.as_str(), event.available.as_str())).collect();
    assert_eq!(seen, vec![("30.00", "25.00"), ("30.00", "20.00")], "once per fall below, again after recovery");
    let depleted = events_of(&app.client, &account, pb::EventType::BalanceDepleted, 2).await;
    assert_eq!(depleted.len(), 1);
    assert_invalid(
        app.client
            .clone()
            .update_account(pb::UpdateAccountRequest {
                account_id: account.id.clone(),
                low_balance_warning: Some("-1".into()),
                monthly_spending_cap: Some("ten".into()),
                transfer_max_amount: Some("0".into()),
                idempotency_key: key(),
                ..Default::default()
            })
            .await,
        "monthly_spending_cap",
    );
}

crate::on_both_backends!(
    the_cap_alerts_at_each_level_once_and_refuses_debits_past_it_until_raised,
    the_projection_extends_the_rate_so_far_to_the_end_of_the_month,
    a_refund_gives_room_back_under_the_cap,
    the_low_balance_warning_fires_once_per_fall_and_again_after_recovery,
);
