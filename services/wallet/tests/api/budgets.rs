//! Shared budgets: children drawing on a parent's credits past their own,
//! within a limit per period, on both ledgers in one transaction, once per
//! key; 50 children at once never pass a limit nor the parent's funds; bad
//! requests change nothing.

use reservoir_proto::wallet as pb;
use rust_decimal::Decimal;
use tonic::Code;

use crate::helpers::*;

fn set(child: &pb::Account, parent: &pb::Account, limit: &str, period: pb::BudgetPeriod) -> pb::SetBudgetRequest {
    pb::SetBudgetRequest {
        account_id: child.id.clone(),
        parent_account_id: parent.id.clone(),
        limit: limit.into(),
        period: period.into(),
    }
}

async fn spend(client: &Client, account: &pb::Account) -> pb::GetSpendResponse {
    client.clone().get_spend(pb::GetSpendRequest { account_id: account.id.clone() }).await.unwrap().into_inner()
}

fn sum_of(entries: &[pb::LedgerEntry], kind: pb::EntryKind) -> Decimal {
    entries.iter().filter(|entry| entry.kind == i32::from(kind)).map(|entry| d(&entry.amount)).sum()
}

async fn a_child_draws_on_its_parent_past_its_own_credits(app: &TestApp) {
    let mut client = app.client.clone();
    let parent = prepaid(&app.client).await;
    let child = prepaid(&app.client).await;
    grant(&app.client, &parent, "100", pb::GrantKind::Paid).await;
    grant(&app.client, &child, "5", pb::GrantKind::Paid).await;
    let budget = client.set_budget(set(&child, &parent, "30", pb::BudgetPeriod::Day)).await.unwrap().into_inner();
    let budget = budget.budget.unwrap();
    assert_eq!((budget.limit.as_str(), budget.spent.as_str(), budget.remaining.as_str()), ("30.00", "0.00", "30.00"));
    let account = client.get_account(pb::GetAccountRequest { account_id: child.id.clone() }).await.unwrap();
    assert_eq!(account.into_inner().account.unwrap().parent_account_id, parent.id);

    // 12: 5 of its own, 7 of the parent's, on both ledgers; sent again, the same answer.
    let request = debit_request(&child, "12");
    let answer = client.debit(request.clone()).await.unwrap().into_inner();
    let kinds: Vec<(i32, &str)> = answer.entries.iter().map(|entry| (entry.kind, entry.amount.as_str())).collect();
    assert_eq!(kinds, vec![(pb::EntryKind::Debit.into(), "-5.00"), (pb::EntryKind::ParentDraw.into(), "-7.00")]);
    assert_eq!(client.debit(request).await.unwrap().into_inner(), answer, "replayed, nothing drawn twice");
    assert_eq!((available(&app.client, &child).await, available(&app.client, &parent).await), (d("0"), d("93")));
    let parent_entries = ledger(&app.client, &parent).await;
    let last = parent_entries.last().unwrap();
    assert_eq!((last.kind, last.amount.as_str()), (pb::EntryKind::Debit.into(), "-7.00"));
    assert_eq!(last.metadata.get("child_account_id"), Some(&child.id));

    // The rest of the day's 30, by a batch and a usage line (each amount in
    // order, as alone); past it, refused.
    let batch = pb::BatchDebitRequest { debits: vec![debit_request(&child, "10"), debit_request(&child, "10")] };
    let results = client.batch_debit(batch).await.unwrap().into_inner().results;
    assert!(results.iter().all(|result| matches!(result.outcome, Some(pb::batch_debit_result::Outcome::Ok(_)))));
    let line = pb::UsageLine {
        account_id: child.id.clone(),
        meter_code: "tokens".into(),
        amounts: vec!["2".into(), "2".into(), "1".into()],
        idempotency_key: key(),
        reference: "batch-1".into(),
    };
    let drawn = client.draw_usage(pb::DrawUsageRequest { lines: vec![line] }).await.unwrap().into_inner();
    let Some(pb::usage_line_result::Outcome::Drawn(drawn)) = &drawn.results[0].outcome else {
        panic!("the line was drawn: {drawn:?}");
    };
    let charged: Vec<(bool, &str)> =
        drawn.amounts.iter().map(|amount| (amount.charged, amount.reason.as_str())).collect();
    // 27 drawn so far: 2 fits, the next 2 would pass 30, the last 1 fits.
    assert_eq!(charged, vec![(true, ""), (false, "BUDGET_EXCEEDED"), (true, "")]);
    assert_refused(debit(&app.client, &child, "0.01").await, Code::FailedPrecondition, "BUDGET_EXCEEDED");
    assert_eq!(available(&app.client, &parent).await, d("70"));

    // GetSpend: the child's budget, and the parent's children.
    let child_spend = spend(&app.client, &child).await;
    let budget = child_spend.budget.unwrap();
    assert_eq!((budget.spent.as_str(), budget.remaining.as_str()), ("30.00", "0.00"));
    assert_eq!(child_spend.spend.unwrap().spent, "35.00", "the child's spend counts all it drew");
    let parent_spend = spend(&app.client, &parent).await;
    assert_eq!(parent_spend.children.len(), 1);
    assert_eq!(parent_spend.children[0].account_id, child.id);
    assert_eq!(parent_spend.spend.unwrap().spent, "30.00");
    let child_entries = ledger(&app.client, &child).await;
    assert_eq!(sum_of(&child_entries, pb::EntryKind::ParentDraw), d("-30"));
    assert_eq!(sum_of(&ledger(&app.client, &parent).await, pb::EntryKind::Debit), d("-30"));
    for account in [&child, &parent] {
        assert_books_balance(&app.client, account).await;
        let verify = pb::VerifyLedgerRequest { account_id: account.id.clone(), ..Default::default() };
        assert!(client.verify_ledger(verify).await.unwrap().into_inner().intact);
    }

    // A higher limit lets it draw again; cleared, it spends its own only.
    client.set_budget(set(&child, &parent, "40", pb::BudgetPeriod::Day)).await.unwrap();
    debit(&app.client, &child, "10").await.unwrap();
    assert_eq!(spend(&app.client, &child).await.budget.unwrap().spent, "40.00");
    // Another period starts counting afresh.
    let monthly = client.set_budget(set(&child, &parent, "40", pb::BudgetPeriod::Month)).await.unwrap();
    assert_eq!(monthly.into_inner().budget.unwrap().spent, "0.00");
    client.clear_budget(pb::ClearBudgetRequest { account_id: child.id.clone() }).await.unwrap();
    assert_refused(debit(&app.client, &child, "1").await, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");
    assert!(spend(&app.client, &parent).await.children.is_empty());
    assert_eq!(available(&app.client, &parent).await, d("60"));
    assert_refused(
        client.clear_budget(pb::ClearBudgetRequest { account_id: child.id.clone() }).await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

async fn fifty_children_at_once_never_pass_a_limit_nor_the_parents_funds(app: &TestApp) {
    let parent = prepaid(&app.client).await;
    grant(&app.client, &parent, "1000", pb::GrantKind::Paid).await;
    let mut children = Vec::new();
    for _ in 0..50 {
        let child = prepaid(&app.client).await;
        app.client.clone().set_budget(set(&child, &parent, "30", pb::BudgetPeriod::Month)).await.unwrap();
        children.push(child);
    }
    // Each child asks for 10 × 5 (50, over its 30); together they ask 2,500 of 1,000.
    let attempts = children.iter().flat_map(|child| (0..10).map(move |_| child.clone())).map(|child| {
        let client = app.client.clone();
        async move { (child.id.clone(), debit(&client, &child, "5").await) }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let mut succeeded = std::collections::BTreeMap::<String, u32>::new();
    for (child, outcome) in &outcomes {
        match outcome {
            Ok(_) => *succeeded.entry(child.clone()).or_default() += 1,
            Err(status) => {
                let reason = reservoir_common::status::reason_of(status);
                assert!(matches!(reason.as_deref(), Some("BUDGET_EXCEEDED" | "INSUFFICIENT_FUNDS")), "{status:?}");
            }
        }
    }
    let total: u32 = succeeded.values().sum();
    assert_eq!(total, 200, "the parent's 1,000 spent to the last credit, and no more");
    assert!(succeeded.values().all(|count| *count <= 6), "no child past its 30: {succeeded:?}");
    assert_eq!(available(&app.client, &parent).await, d("0"));
    let parent_debits = sum_of(&ledger(&app.client, &parent).await, pb::EntryKind::Debit);
    assert_eq!(parent_debits, d("-1000"));
    let mut drawn = Decimal::ZERO;
    for child in &children {
        let entries = ledger(&app.client, child).await;
        let child_drawn = -sum_of(&entries, pb::EntryKind::ParentDraw);
        let count = succeeded.get(&child.id).copied().unwrap_or(0);
        assert_eq!(child_drawn, Decimal::from(count * 5), "each success drawn once on the child's ledger");
        let budget = spend(&app.client, child).await.budget.unwrap();
        assert_eq!(d(&budget.spent), child_drawn, "the budget counts what was drawn");
        drawn += child_drawn;
    }
    assert_eq!(drawn, d("1000"), "the children's draws are the parent's debits");
    assert_books_balance(&app.client, &parent).await;
}

async fn a_bad_budget_is_refused_naming_its_field_and_changes_nothing(app: &TestApp) {
    let mut client = app.client.clone();
    let parent = prepaid(&app.client).await;
    let child = prepaid(&app.client).await;
    let other = prepaid(&app.client).await;
    assert_invalid(client.set_budget(set(&child, &child, "1", pb::BudgetPeriod::Day)).await, "parent_account_id");
    assert_invalid(client.set_budget(set(&child, &parent, "1", pb::BudgetPeriod::Unspecified)).await, "period");
    for limit in ["0", "-1", "1.234", "abc"] {
        assert_invalid(client.set_budget(set(&child, &parent, limit, pb::BudgetPeriod::Day)).await, "limit");
    }
    let mut unknown = set(&child, &parent, "1", pb::BudgetPeriod::Day);
    unknown.parent_account_id = uuid::Uuid::now_v7().to_string();
    assert_refused(client.set_budget(unknown).await, Code::NotFound, "NOT_FOUND");
    let euros = open_account_with(&app.client, |request| {
        request.unit = Some(pb::Unit { code: "EUR".into(), ..Default::default() });
    })
    .await;
    assert_refused(
        client.set_budget(set(&child, &euros, "1", pb::BudgetPeriod::Day)).await,
        Code::FailedPrecondition,
        "UNIT_MISMATCH",
    );
    client.set_budget(set(&child, &parent, "", pb::BudgetPeriod::Month)).await.unwrap();
    // One level: a child is no parent, a parent no child.
    assert_refused(
        client.set_budget(set(&other, &child, "1", pb::BudgetPeriod::Day)).await,
        Code::FailedPrecondition,
        "BUDGET_NESTED",
    );
    assert_refused(
        client.set_budget(set(&parent, &other, "1", pb::BudgetPeriod::Day)).await,
        Code::FailedPrecondition,
        "BUDGET_NESTED",
    );
    let budget = spend(&app.client, &child).await.budget.unwrap();
    assert_eq!((budget.parent_account_id.as_str(), budget.limit.as_str()), (parent.id.as_str(), ""));
    assert!(spend(&app.client, &other).await.budget.is_none());
}

crate::on_both_backends!(
    a_child_draws_on_its_parent_past_its_own_credits,
    fifty_children_at_once_never_pass_a_limit_nor_the_parents_funds,
    a_bad_budget_is_refused_naming_its_field_and_changes_nothing,
);
