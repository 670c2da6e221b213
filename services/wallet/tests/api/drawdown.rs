use std::time::Duration;

use reservoir_common::time::to_timestamp;
use reservoir_proto::wallet as pb;
use rust_decimal::Decimal;
use tonic::Code;

use crate::helpers::*;

fn money_entries(entries: &[pb::LedgerEntry]) -> Vec<(String, String)> {
    entries.iter().map(|entry| (entry.grant_id.clone(), entry.amount.clone())).collect()
}

async fn free_credits_are_drawn_first_one_entry_per_grant(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let paid = grant(&app.client, &account, "10.00", pb::GrantKind::Paid).await.grant.unwrap();
    let promo = grant(&app.client, &account, "3.00", pb::GrantKind::Promotional).await.grant.unwrap();
    let response = debit(&app.client, &account, "5.00").await.unwrap();
    assert_eq!(
        money_entries(&response.entries),
        vec![(promo.id.clone(), "-3.00".into()), (paid.id.clone(), "-2.00".into())]
    );
    let balance = response.balance.unwrap();
    assert_eq!(
        (balance.available.as_str(), balance.paid.as_str(), balance.promotional.as_str()),
        ("8.00", "8.00", "0.00")
    );
    assert_books_balance(&app.client, &account).await;
}

async fn a_debit_equal_to_the_balance_succeeds_and_one_cent_more_is_refused(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10.00", pb::GrantKind::Paid).await;
    debit(&app.client, &account, "4.00").await.unwrap();
    assert_refused(debit(&app.client, &account, "6.01").await, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");
    assert_eq!(available(&app.client, &account).await, d("6.00"), "a refused debit changes nothing");
    debit(&app.client, &account, "6.00").await.unwrap();
    assert_eq!(available(&app.client, &account).await, Decimal::ZERO);
    assert_books_balance(&app.client, &account).await;
}

async fn bad_amounts_are_refused_naming_the_field(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    // The last two have a digit past the cent beyond 28 significant digits,
    // where a decimal parser rounds them to 0.01 and 1.00.
    for bad in [
        "1.001",
        "0",
        "-1",
        "1e2",
        "abc",
        "",
        "1000000000000000000",
        "0.00999999999999999999999999999999",
        "1.0000000000000000000000000000001",
    ] {
        assert_invalid(debit(&app.client, &account, bad).await, "amount");
        let mut request = grant_request(&account, bad, pb::GrantKind::Paid);
        request.idempotency_key = key();
        assert_invalid(app.client.clone().grant_credits(request).await, "amount");
    }
    // Text that is not what it shows: a NUL, a control, a direction override.
    for description in ["a\0b", "bell\u{7}", "\u{202E}fdp.exe"] {
        let request = pb::DebitRequest { description: description.into(), ..debit_request(&account, "1") };
        assert_invalid(app.client.clone().debit(request).await, "description");
    }
    assert_eq!(ledger(&app.client, &account).await.len(), 1, "nothing was written");
    assert_eq!(available(&app.client, &account).await, Decimal::from(10));
}

async fn a_grant_restricted_to_a_meter_is_drawn_only_by_that_meter(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let mut request = grant_request(&account, "5", pb::GrantKind::Promotional);
    request.meter_codes = vec!["gpu".into()];
    let gpu_credits = app.client.clone().grant_credits(request).await.unwrap().into_inner().grant.unwrap();
    grant(&app.client, &account, "5", pb::GrantKind::Paid).await;
    let mut cpu = debit_request(&account, "2");
    cpu.meter_code = "cpu".into();
    let response = app.client.clone().debit(cpu).await.unwrap().into_inner();
    assert_ne!(response.entries[0].grant_id, gpu_credits.id);
    let mut gpu = debit_request(&account, "6");
    gpu.meter_code = "gpu".into();
    let response = app.client.clone().debit(gpu).await.unwrap().into_inner();
    assert_eq!(response.entries[0].grant_id, gpu_credits.id, "the meter's own credits go first");
    assert_eq!(response.entries[0].amount, "-5.00");
    assert_eq!(available(&app.client, &account).await, d("2"));
    assert_books_balance(&app.client, &account).await;
}

async fn a_credit_limit_lets_the_balance_go_negative_and_new_credits_repay_it(app: &TestApp) {
    let account = open_account(&app.client, pb::OverdraftPolicy::CreditLimit, "20").await;
    grant(&app.client, &account, "5", pb::GrantKind::Paid).await;
    let response = debit(&app.client, &account, "25").await.unwrap();
    assert_eq!(response.entries.len(), 2);
    assert_eq!(response.entries[1].grant_id, "", "the overdraft part has no grant");
    assert_refused(debit(&app.client, &account, "0.01").await, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");
    let balance_now = balance(&app.client, &account).await;
    assert_eq!((balance_now.available.as_str(), balance_now.overdraft_used.as_str()), ("-20.00", "20.00"));
    let repaid = grant(&app.client, &account, "30", pb::GrantKind::Paid).await;
    assert_eq!(repaid.grant.unwrap().remaining_amount, "10.00");
    let after = repaid.balance.unwrap();
    assert_eq!((after.available.as_str(), after.overdraft_used.as_str()), ("10.00", "0.00"));
    assert_books_balance(&app.client, &account).await;
}

async fn an_overdue_invoice_blocks_the_credit_limit_until_cleared(app: &TestApp) {
    let account = open_account(&app.client, pb::OverdraftPolicy::CreditLimit, "100").await;
    grant(&app.client, &account, "5", pb::GrantKind::Paid).await;
    let set_blocked = |blocked: bool| pb::UpdateAccountRequest {
        account_id: account.id.clone(),
        credit_blocked: Some(blocked),
        idempotency_key: key(),
        ..Default::default()
    };
    let updated = app.client.clone().update_account(set_blocked(true)).await.unwrap().into_inner();
    assert!(updated.account.unwrap().credit_blocked);
    assert_refused(debit(&app.client, &account, "5.01").await, Code::FailedPrecondition, "CREDIT_BLOCKED");
    debit(&app.client, &account, "5").await.expect("credits still spend while blocked");
    app.client.clone().update_account(set_blocked(false)).await.unwrap();
    debit(&app.client, &account, "30").await.unwrap();
    assert_eq!(available(&app.client, &account).await, d("-30"));
    assert_books_balance(&app.client, &account).await;
}

async fn an_unlimited_account_takes_any_debit(app: &TestApp) {
    let account = open_account(&app.client, pb::OverdraftPolicy::Unlimited, "").await;
    debit(&app.client, &account, "99999.99").await.unwrap();
    assert_eq!(available(&app.client, &account).await, d("-99999.99"));
    assert_books_balance(&app.client, &account).await;
}

async fn credits_stop_counting_at_expiry_and_the_sweeper_writes_them_off(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let mut request = grant_request(&account, "7", pb::GrantKind::Promotional);
    request.expires_at = Some(to_timestamp(chrono::Utc::now() + chrono::Duration::milliseconds(600)));
    let granted = app.client.clone().grant_credits(request).await.unwrap().into_inner().grant.unwrap();
    assert_eq!(available(&app.client, &account).await, d("7"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(available(&app.client, &account).await, Decimal::ZERO, "expired credits no longer count");
    assert_refused(debit(&app.client, &account, "1").await, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");
    let mut written_off = false;
    for _ in 0..50 {
        let entries = ledger(&app.client, &account).await;
        if let Some(expiry) = entries.iter().find(|entry| entry.kind == i32::from(pb::EntryKind::Expiry)) {
            assert_eq!((expiry.grant_id.as_str(), expiry.amount.as_str()), (granted.id.as_str(), "-7.00"));
            written_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(written_off, "the sweeper wrote the EXPIRY entry");
    assert_books_balance(&app.client, &account).await;
}

async fn a_refund_goes_back_to_the_grants_drawn_and_never_exceeds_the_debit(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let promo = grant(&app.client, &account, "3", pb::GrantKind::Promotional).await.grant.unwrap();
    let paid = grant(&app.client, &account, "10", pb::GrantKind::Paid).await.grant.unwrap();
    let debited = debit(&app.client, &account, "5").await.unwrap();
    let refund = |amount: &str| pb::RefundRequest {
        entry_id: debited.entries[0].id.clone(),
        amount: amount.into(),
        idempotency_key: key(),
        reason: "service outage".into(),
    };
    let refunded = app.client.clone().refund(refund("4")).await.unwrap().into_inner();
    assert_eq!(
        money_entries(&refunded.entries),
        vec![(paid.id.clone(), "2.00".into()), (promo.id.clone(), "2.00".into())],
        "last drawn, first refunded"
    );
    assert_refused(app.client.clone().refund(refund("1.01")).await, Code::FailedPrecondition, "REFUND_EXCEEDS_DEBIT");
    app.client.clone().refund(refund("1")).await.unwrap();
    assert_eq!(available(&app.client, &account).await, d("13"));
    let grant_entry = ledger(&app.client, &account).await[0].id.clone();
    let not_a_debit = pb::RefundRequest { entry_id: grant_entry, ..refund("1") };
    assert_refused(app.client.clone().refund(not_a_debit).await, Code::FailedPrecondition, "ENTRY_NOT_REFUNDABLE");
    assert_books_balance(&app.client, &account).await;
}

async fn voiding_a_grant_removes_what_remains_of_it(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let promo = grant(&app.client, &account, "10", pb::GrantKind::Promotional).await.grant.unwrap();
    debit(&app.client, &account, "4").await.unwrap();
    let void = || pb::VoidGrantRequest {
        grant_id: promo.id.clone(),
        idempotency_key: key(),
        reason: "abuse".into(),
        ..Default::default()
    };
    let voided = app.client.clone().void_grant(void()).await.unwrap().into_inner();
    assert_eq!(voided.grant.unwrap().status, i32::from(pb::GrantStatus::Voided));
    assert_eq!(voided.entries[0].amount, "-6.00");
    assert_refused(app.client.clone().void_grant(void()).await, Code::FailedPrecondition, "GRANT_NOT_ACTIVE");
    assert_eq!(available(&app.client, &account).await, Decimal::ZERO);
    assert_books_balance(&app.client, &account).await;
}

async fn adjustments_add_courtesy_credits_or_take_within_the_floor(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let adjust = |amount: &str| pb::AdjustRequest {
        account_id: account.id.clone(),
        amount: amount.into(),
        reason: "billing correction".into(),
        idempotency_key: key(),
        ..Default::default()
    };
    let up = app.client.clone().adjust(adjust("5")).await.unwrap().into_inner();
    assert_eq!(up.grant.unwrap().kind, i32::from(pb::GrantKind::Courtesy));
    app.client.clone().adjust(adjust("-2")).await.unwrap();
    assert_refused(app.client.clone().adjust(adjust("-3.01")).await, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");
    assert_invalid(app.client.clone().adjust(adjust("0")).await, "amount");
    assert_invalid(
        app.client.clone().adjust(pb::AdjustRequest { reason: String::new(), ..adjust("1") }).await,
        "reason",
    );
    assert_eq!(available(&app.client, &account).await, d("3"));
    assert_books_balance(&app.client, &account).await;
}

async fn a_quote_shows_the_draw_and_changes_nothing(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let promo = grant(&app.client, &account, "2", pb::GrantKind::Promotional).await.grant.unwrap();
    grant(&app.client, &account, "5", pb::GrantKind::Paid).await;
    let quote = |amount: &str| pb::QuoteDebitRequest {
        account_id: account.id.clone(),
        amount: amount.into(),
        meter_code: String::new(),
    };
    let allowed = app.client.clone().quote_debit(quote("3")).await.unwrap().into_inner();
    assert!(allowed.allowed);
    assert_eq!(allowed.entries[0].grant_id, promo.id);
    assert_eq!(allowed.balance_after.unwrap().available, "4.00");
    let refused = app.client.clone().quote_debit(quote("8")).await.unwrap().into_inner();
    assert!(!refused.allowed);
    assert_eq!(refused.reason, "INSUFFICIENT_FUNDS");
    assert_eq!(available(&app.client, &account).await, d("7"));
    assert_eq!(ledger(&app.client, &account).await.len(), 2);
}

async fn a_batch_answers_each_debit_on_its_own(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let debits = vec![
        debit_request(&account, "4"),
        debit_request(&account, "7"),
        debit_request(&account, "0.001"),
        pb::DebitRequest { account_id: uuid::Uuid::now_v7().to_string(), ..debit_request(&account, "1") },
        debit_request(&account, "6"),
    ];
    let results = app.client.clone().batch_debit(pb::BatchDebitRequest { debits }).await.unwrap().into_inner().results;
    let outcomes: Vec<String> = results
        .iter()
        .map(|result| match result.outcome.as_ref().unwrap() {
            pb::batch_debit_result::Outcome::Ok(_) => "ok".to_owned(),
            pb::batch_debit_result::Outcome::Error(error) => error.reason.clone(),
        })
        .collect();
    assert_eq!(outcomes, vec!["ok", "INSUFFICIENT_FUNDS", "INVALID_ARGUMENT", "NOT_FOUND", "ok"]);
    if let Some(pb::batch_debit_result::Outcome::Error(error)) = &results[2].outcome {
        assert_eq!(error.fields, vec!["amount".to_owned()]);
        assert_eq!(error.code, Code::InvalidArgument as i32);
    }
    assert_eq!(available(&app.client, &account).await, Decimal::ZERO);
    let too_many = (0..1_001).map(|_| debit_request(&account, "1")).collect();
    assert_invalid(app.client.clone().batch_debit(pb::BatchDebitRequest { debits: too_many }).await, "debits");
    assert_invalid(app.client.clone().batch_debit(pb::BatchDebitRequest { debits: Vec::new() }).await, "debits");
    assert_books_balance(&app.client, &account).await;
}

crate::on_both_backends!(
    free_credits_are_drawn_first_one_entry_per_grant,
    a_debit_equal_to_the_balance_succeeds_and_one_cent_more_is_refused,
    bad_amounts_are_refused_naming_the_field,
    a_grant_restricted_to_a_meter_is_drawn_only_by_that_meter,
    a_credit_limit_lets_the_balance_go_negative_and_new_credits_repay_it,
    an_unlimited_account_takes_any_debit,
    an_overdue_invoice_blocks_the_credit_limit_until_cleared,
    credits_stop_counting_at_expiry_and_the_sweeper_writes_them_off,
    a_refund_goes_back_to_the_grants_drawn_and_never_exceeds_the_debit,
    voiding_a_grant_removes_what_remains_of_it,
    adjustments_add_courtesy_credits_or_take_within_the_floor,
    a_quote_shows_the_draw_and_changes_nothing,
    a_batch_answers_each_debit_on_its_own,
);
