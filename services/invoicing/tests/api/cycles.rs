//! Monthly billing cycles: statements of prepaid, hybrid and credit-limit
//! accounts, the credit block of an overdue statement, re-runs and the report.

use chrono::Utc;
use reservoir_proto::invoicing as pb;
use reservoir_proto::wallet as wallet_pb;
use tonic::Code;

use crate::helpers::*;

/// This month, as RunBillingCycle names it, and invoicing's clock moved to
/// an hour into the next month so that it has ended.
fn end_this_month(suite: &Suite) -> String {
    let now = Utc::now();
    let period = now.format("%Y-%m").to_string();
    let next = reservoir_invoicing::domain::Month::parse(&period).unwrap().end();
    suite.set_time(next + chrono::Duration::hours(1));
    period
}

async fn run_cycle(suite: &Suite, period: &str) -> pb::RunBillingCycleResponse {
    suite
        .invoicing
        .clone()
        .run_billing_cycle(pb::RunBillingCycleRequest { period: period.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn statement_of(suite: &Suite, account: &wallet_pb::Account) -> pb::Invoice {
    let mut listed = suite
        .invoicing
        .clone()
        .list_invoices(pb::ListInvoicesRequest {
            account_id: account.id.clone(),
            kind: pb::InvoiceKind::Statement.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .invoices;
    assert_eq!(listed.len(), 1, "one statement per account and month");
    listed.pop().unwrap()
}

fn line<'a>(invoice: &'a pb::Invoice, kind: pb::LineKind, dimension_value: &str) -> &'a pb::InvoiceLine {
    invoice
        .lines
        .iter()
        .find(|line| line.kind == i32::from(kind) && line.dimension_value == dimension_value)
        .unwrap_or_else(|| panic!("no {kind:?} line for {dimension_value:?} in {:?}", invoice.lines))
}

async fn a_prepaid_month_lists_usage_and_credits_applied_and_is_due_nothing(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "0.5", Some(("model", "large", "1"))).await;
    let account = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::None, "").await;
    grant(&suite, &account, "100", wallet_pb::GrantKind::Paid).await;
    use_meter(&suite, &account, "tokens", "10", &[("model", "small")]).await;
    use_meter(&suite, &account, "tokens", "4", &[("model", "large")]).await;
    // A charge made straight on the wallet, not through metering.
    suite
        .wallet
        .clone()
        .debit(wallet_pb::DebitRequest {
            account_id: account.id.clone(),
            amount: "3".into(),
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap();
    // Usage beyond what is left: refused by the wallet, listed as uncovered.
    let refused = use_meter(&suite, &account, "tokens", "400", &[("model", "small")]).await;
    assert_eq!(refused[0].status, i32::from(reservoir_proto::metering::EventStatus::Uncovered));
    let idle = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::None, "").await;

    // A month that has not ended, or is not a month, is refused.
    let this_month = Utc::now().format("%Y-%m").to_string();
    let not_ended = suite.invoicing.clone().run_billing_cycle(pb::RunBillingCycleRequest { period: this_month }).await;
    assert_invalid(not_ended, "period");
    let malformed =
        suite.invoicing.clone().run_billing_cycle(pb::RunBillingCycleRequest { period: "2026-13".into() }).await;
    assert_invalid(malformed, "period");

    let period = end_this_month(&suite);
    let run = run_cycle(&suite, &period).await;
    assert_eq!((run.accounts, run.statements_created, run.invoices_due, run.accounts_without_activity), (2, 1, 0, 1));

    let statement = statement_of(&suite, &account).await;
    assert_eq!(status(&statement), pb::InvoiceStatus::Paid, "nothing is due, so nothing stays open");
    assert_eq!(statement.number, 1);
    assert_eq!(statement.amount_due, "0.00");
    assert_eq!(statement.total, "0.00");
    assert!(statement.due_at.is_none());
    let small = line(&statement, pb::LineKind::Usage, "small");
    assert_eq!((small.quantity.as_str(), small.amount.as_str(), small.dimension_key.as_str()), ("10", "5.00", "model"));
    let large = line(&statement, pb::LineKind::Usage, "large");
    assert_eq!((large.quantity.as_str(), large.amount.as_str()), ("4", "4.00"));
    assert_eq!(line(&statement, pb::LineKind::Other, "").amount, "3.00");
    assert_eq!(line(&statement, pb::LineKind::CreditsApplied, "").amount, "-12.00");
    assert_eq!(statement.uncovered_amount, "200.00");
    assert!(
        suite
            .invoicing
            .clone()
            .list_invoices(pb::ListInvoicesRequest { account_id: idle.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .invoices
            .is_empty(),
        "an account without activity gets no statement"
    );

    // Running the month again creates nothing.
    let again = run_cycle(&suite, &period).await;
    assert_eq!((again.statements_created, again.statements_existing), (0, 1));
    assert_eq!(statement_of(&suite, &account).await.id, statement.id);

    // The report has one row per line, with the invoice's number and amounts.
    let start = reservoir_invoicing::domain::Month::parse(&period).unwrap().start();
    let report = suite
        .invoicing
        .clone()
        .export_report(pb::ExportReportRequest {
            start_time: Some(reservoir_common::time::to_timestamp(start)),
            end_time: Some(reservoir_common::time::to_timestamp(start + chrono::Duration::days(31))),
        })
        .await
        .unwrap()
        .into_inner()
        .csv;
    let rows: Vec<&str> = report.lines().collect();
    assert!(rows[0].starts_with("invoice_number,invoice_id,account_id,kind,status"), "{}", rows[0]);
    assert_eq!(rows.len(), 1 + statement.lines.len(), "{report}");
    assert!(rows[1..].iter().all(|row| row.starts_with(&format!("1,{},{},STATEMENT,PAID", statement.id, account.id))));
    assert!(report.contains(",USAGE,Usage of tokens (model=small),tokens,model,small,10,,5.00,0.00,0.00,"), "{report}");
    suite
}

async fn a_hybrid_month_spends_credits_first_and_bills_the_overage(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "1", None).await;
    let account = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::Unlimited, "").await;
    grant(&suite, &account, "20", wallet_pb::GrantKind::Promotional).await;
    use_meter(&suite, &account, "tokens", "50", &[]).await;
    let period = end_this_month(&suite);
    let run = run_cycle(&suite, &period).await;
    assert_eq!((run.statements_created, run.invoices_due), (1, 1));
    let statement = statement_of(&suite, &account).await;
    assert_eq!(status(&statement), pb::InvoiceStatus::Open);
    assert_eq!(statement.amount_due, "30.00", "the overage beyond the free credits");
    assert_eq!(statement.credits, "30");
    assert_eq!(line(&statement, pb::LineKind::Usage, "").amount, "50.00");
    assert_eq!(line(&statement, pb::LineKind::CreditsApplied, "").amount, "-20.00");
    let issued = reservoir_common::time::from_timestamp(statement.issued_at.as_ref().unwrap()).unwrap();
    let due = reservoir_common::time::from_timestamp(statement.due_at.as_ref().unwrap()).unwrap();
    assert_eq!(due - issued, chrono::Duration::days(14), "the default terms");
    assert!(!statement.overdue);
    suite
}

async fn an_overdue_credit_limit_statement_blocks_the_credit_until_it_is_paid(suite: Suite) -> Suite {
    suite
        .invoicing
        .clone()
        .update_billing_settings(pb::UpdateBillingSettingsRequest {
            settings: Some(pb::BillingSettings { payment_due_days: 0, monthly_cycle: false }),
        })
        .await
        .unwrap();
    priced_meter(&suite, "tokens", "1", None).await;
    let account = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::CreditLimit, "100").await;
    use_meter(&suite, &account, "tokens", "40", &[]).await;
    assert_eq!(available(&suite.wallet, &account).await, d("-40"));
    let period = end_this_month(&suite);
    run_cycle(&suite, &period).await;
    let statement = statement_of(&suite, &account).await;
    assert_eq!(status(&statement), pb::InvoiceStatus::Open);
    assert_eq!(statement.amount_due, "40.00");
    assert!(statement.overdue, "due on issue with 0 days of terms");

    let get_account = || async {
        suite
            .wallet
            .clone()
            .get_account(wallet_pb::GetAccountRequest { account_id: account.id.clone() })
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap()
    };
    eventually("the credit block", || async { get_account().await.credit_blocked }).await;
    let debit = |amount: &str| wallet_pb::DebitRequest {
        account_id: account.id.clone(),
        amount: amount.into(),
        idempotency_key: key(),
        ..Default::default()
    };
    assert_refused(suite.wallet.clone().debit(debit("1")).await, Code::FailedPrecondition, "CREDIT_BLOCKED");

    let paid = pay(&suite, &statement, "bank-transfer-77").await.unwrap();
    assert_eq!(status(&paid), pb::InvoiceStatus::Paid);
    assert!(!paid.overdue);
    assert!(!get_account().await.credit_blocked, "paying lifts the block at once");
    assert_eq!(available(&suite.wallet, &account).await, d("0"), "the payment repaid the overdraft");
    let grants = suite
        .wallet
        .clone()
        .list_grants(wallet_pb::ListGrantsRequest { account_id: account.id.clone(), include_inactive: true })
        .await
        .unwrap()
        .into_inner()
        .grants;
    let repayment: Vec<_> = grants.iter().filter(|grant| grant.source_reference == statement.id).collect();
    assert_eq!(repayment.len(), 1);
    assert_eq!(repayment[0].original_amount, "40.00");
    assert_eq!(repayment[0].source, i32::from(wallet_pb::GrantSource::Invoice));
    suite.wallet.clone().debit(debit("1")).await.expect("the credit limit spends again");
    assert_books_balance(&suite.wallet, &account).await;
    // Paying again changes nothing.
    pay(&suite, &statement, "bank-transfer-77").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(available(&suite.wallet, &account).await, d("-1"));
    assert!(!get_account().await.credit_blocked);
    suite
}

async fn a_statement_paid_while_the_wallet_is_down_is_repaid_and_unblocked_once_it_is_back(mut suite: Suite) -> Suite {
    suite
        .invoicing
        .clone()
        .update_billing_settings(pb::UpdateBillingSettingsRequest {
            settings: Some(pb::BillingSettings { payment_due_days: 0, monthly_cycle: false }),
        })
        .await
        .unwrap();
    priced_meter(&suite, "tokens", "1", None).await;
    let account = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::CreditLimit, "100").await;
    use_meter(&suite, &account, "tokens", "25", &[]).await;
    let period = end_this_month(&suite);
    run_cycle(&suite, &period).await;
    let statement = statement_of(&suite, &account).await;
    let credit_blocked = |wallet: Client| {
        let account_id = account.id.clone();
        async move {
            wallet
                .clone()
                .get_account(wallet_pb::GetAccountRequest { account_id })
                .await
                .unwrap()
                .into_inner()
                .account
                .unwrap()
                .credit_blocked
        }
    };
    eventually("the credit block", || credit_blocked(suite.wallet.clone())).await;

    // The payment flow's service key is in use, so invoicing has checked it
    // recently (it asks the wallet, and remembers the answer for a while).
    suite
        .invoicing_as_service
        .clone()
        .get_invoice(pb::GetInvoiceRequest { invoice_id: statement.id.clone() })
        .await
        .unwrap();
    suite.stop_wallet().await;
    let paid = pay(&suite, &statement, "pay-while-down").await.unwrap();
    assert_eq!(status(&paid), pb::InvoiceStatus::Paid, "the invoice is paid whether or not the wallet answers");
    suite.start_wallet().await;
    let wallet = suite.wallet.clone();
    eventually("the repayment and the unblock", || {
        let wallet = wallet.clone();
        let account = account.clone();
        async move { available(&wallet, &account).await == d("0") && !credit_blocked(wallet.clone()).await }
    })
    .await;
    // The worker goes on passing; the repayment stays one grant.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let grants = suite
        .wallet
        .clone()
        .list_grants(wallet_pb::ListGrantsRequest { account_id: account.id.clone(), include_inactive: true })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(grants.iter().filter(|grant| grant.source_reference == statement.id).count(), 1);
    assert_eq!(available(&suite.wallet, &account).await, d("0"));
    assert_books_balance(&suite.wallet, &account).await;
    suite
}

crate::on_both_backends!(
    a_prepaid_month_lists_usage_and_credits_applied_and_is_due_nothing,
    a_hybrid_month_spends_credits_first_and_bills_the_overage,
    an_overdue_credit_limit_statement_blocks_the_credit_until_it_is_paid,
    a_statement_paid_while_the_wallet_is_down_is_repaid_and_unblocked_once_it_is_back,
);
