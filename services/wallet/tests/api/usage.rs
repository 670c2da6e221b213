use reservoir_proto::wallet as pb;
use tonic::Code;

use crate::helpers::*;

fn line(account: &pb::Account, meter: &str, amounts: &[&str]) -> pb::UsageLine {
    pb::UsageLine {
        account_id: account.id.clone(),
        meter_code: meter.into(),
        amounts: amounts.iter().map(|amount| (*amount).to_owned()).collect(),
        reference: format!("batch-{}", key()),
        idempotency_key: key(),
    }
}

async fn draw(client: &Client, lines: Vec<pb::UsageLine>) -> Vec<pb::UsageLineResult> {
    client.clone().draw_usage(pb::DrawUsageRequest { lines }).await.unwrap().into_inner().results
}

fn drawn(result: &pb::UsageLineResult) -> &pb::UsageDraw {
    match result.outcome.as_ref() {
        Some(pb::usage_line_result::Outcome::Drawn(drawn)) => drawn,
        other => panic!("the line was not drawn: {other:?}"),
    }
}

fn answers(drawn: &pb::UsageDraw) -> Vec<(bool, &str)> {
    drawn.amounts.iter().map(|amount| (amount.charged, amount.reason.as_str())).collect()
}

async fn each_amount_is_decided_in_order_and_the_charged_ones_drawn_at_once(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let request = line(&account, "tokens", &["4", "5", "3", "1"]);
    let results = draw(&app.client, vec![request.clone()]).await;
    let drawn = drawn(&results[0]);
    assert_eq!(
        answers(drawn),
        vec![(true, ""), (true, ""), (false, "INSUFFICIENT_FUNDS"), (true, "")],
        "the third does not fit after the first two; the fourth still does"
    );
    assert_eq!(drawn.entries.len(), 1, "one entry for the one grant touched");
    let entry = &drawn.entries[0];
    assert_eq!((entry.kind, entry.amount.as_str()), (i32::from(pb::EntryKind::Debit), "-10.00"));
    assert_eq!(entry.meter_code, "tokens");
    assert_eq!(entry.correlation_id, request.reference);
    assert_eq!(entry.metadata.get("events").map(String::as_str), Some("3"));
    assert_eq!(drawn.balance.as_ref().unwrap().available, "0.00");
    assert_eq!(available(&app.client, &account).await, d("0"));
    assert_books_balance(&app.client, &account).await;
}

async fn a_line_draws_its_meters_credits_first_with_an_entry_per_grant(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let gpu = pb::GrantCreditsRequest {
        meter_codes: vec!["gpu".into()],
        ..grant_request(&account, "5", pb::GrantKind::Promotional)
    };
    let gpu = app.client.clone().grant_credits(gpu).await.unwrap().into_inner().grant.unwrap();
    let results = draw(&app.client, vec![line(&account, "cpu", &["2"]), line(&account, "gpu", &["3", "4"])]).await;
    let cpu = drawn(&results[0]);
    assert_eq!(cpu.entries.len(), 1);
    assert_ne!(cpu.entries[0].grant_id, gpu.id, "cpu usage never touches the gpu credits");
    let gpu_drawn = drawn(&results[1]);
    assert_eq!(answers(gpu_drawn), vec![(true, ""), (true, "")]);
    let amounts: Vec<(&str, &str)> =
        gpu_drawn.entries.iter().map(|entry| (entry.grant_id.as_str(), entry.amount.as_str())).collect();
    assert_eq!(amounts.len(), 2, "the gpu grant, then the paid one");
    assert_eq!(amounts[0], (gpu.id.as_str(), "-5.00"));
    assert_eq!(amounts[1].1, "-2.00");
    assert_eq!(available(&app.client, &account).await, d("6"), "15 less the 2 of cpu and the 7 of gpu");
    assert_books_balance(&app.client, &account).await;
}

async fn amounts_past_the_spending_cap_are_left_uncovered(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "100", pb::GrantKind::Paid).await;
    let update = pb::UpdateAccountRequest {
        account_id: account.id.clone(),
        monthly_spending_cap: Some("6".into()),
        idempotency_key: key(),
        ..Default::default()
    };
    app.client.clone().update_account(update).await.unwrap();
    let results = draw(&app.client, vec![line(&account, "tokens", &["4", "3", "2"])]).await;
    assert_eq!(answers(drawn(&results[0])), vec![(true, ""), (false, "SPENDING_CAP_REACHED"), (true, "")]);
    assert_eq!(available(&app.client, &account).await, d("94"));
}

async fn a_line_sent_again_is_answered_as_before_and_draws_nothing(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let request = line(&account, "tokens", &["4", "7"]);
    let first = draw(&app.client, vec![request.clone()]).await;
    let again = draw(&app.client, vec![request.clone()]).await;
    assert_eq!(first, again, "the same answers, entries and balance as then");
    assert_eq!(available(&app.client, &account).await, d("6"));
    let changed = pb::UsageLine { amounts: vec!["1".into()], ..request };
    let refused = draw(&app.client, vec![changed]).await;
    match refused[0].outcome.as_ref() {
        Some(pb::usage_line_result::Outcome::Error(error)) => {
            assert_eq!((error.code, error.reason.as_str()), (Code::AlreadyExists as i32, "IDEMPOTENCY_KEY_REUSED"));
        }
        other => panic!("expected the key's reuse to be refused: {other:?}"),
    }
    assert_eq!(ledger(&app.client, &account).await.len(), 2, "the grant and one draw");
}

async fn lines_of_refused_accounts_fail_alone(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let suspended = prepaid(&app.client).await;
    grant(&app.client, &suspended, "10", pb::GrantKind::Paid).await;
    let update = pb::UpdateAccountRequest {
        account_id: suspended.id.clone(),
        status: Some(pb::AccountStatus::Suspended.into()),
        idempotency_key: key(),
        ..Default::default()
    };
    app.client.clone().update_account(update).await.unwrap();
    let unknown = pb::UsageLine { account_id: uuid::Uuid::now_v7().to_string(), ..line(&account, "tokens", &["1"]) };
    let bad = line(&account, "tokens", &["1.001"]);
    let results =
        draw(&app.client, vec![line(&account, "tokens", &["1"]), line(&suspended, "tokens", &["1"]), unknown, bad])
            .await;
    assert_eq!(answers(drawn(&results[0])), vec![(true, "")]);
    let errors: Vec<(i32, &str)> = results[1..]
        .iter()
        .map(|result| match result.outcome.as_ref() {
            Some(pb::usage_line_result::Outcome::Error(error)) => (error.code, error.reason.as_str()),
            other => panic!("expected a refusal: {other:?}"),
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (Code::FailedPrecondition as i32, "ACCOUNT_SUSPENDED"),
            (Code::NotFound as i32, "NOT_FOUND"),
            (Code::InvalidArgument as i32, "INVALID_ARGUMENT"),
        ]
    );
    assert_eq!(available(&app.client, &account).await, d("9"));
    assert_eq!(available(&app.client, &suspended).await, d("10"));
    assert_invalid(app.client.clone().draw_usage(pb::DrawUsageRequest { lines: Vec::new() }).await, "lines");
}

crate::on_both_backends!(
    each_amount_is_decided_in_order_and_the_charged_ones_drawn_at_once,
    a_line_draws_its_meters_credits_first_with_an_entry_per_grant,
    amounts_past_the_spending_cap_are_left_uncovered,
    a_line_sent_again_is_answered_as_before_and_draws_nothing,
    lines_of_refused_accounts_fail_alone,
);
