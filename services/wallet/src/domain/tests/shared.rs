//! Shared budgets: a child drawing on its parent's credits past its own,
//! within a limit per period, by the parent's rules, on both ledgers.

use chrono::Duration;

use super::*;

fn family(limit: Option<&str>, period: BudgetPeriod) -> (Books, Books, Budget) {
    let child = Books::new(Overdraft::None);
    let parent = Books::new(Overdraft::None);
    let budget = Budget {
        account_id: child.wallet.account.id,
        parent_id: parent.wallet.account.id,
        limit: limit.map(d),
        period,
        period_key: period.key(t0()),
        spent: Decimal::ZERO,
    };
    (child, parent, budget)
}

/// Runs a shared debit as the store would: both wallets and the budget
/// kept if it succeeds, all three as they were if it fails.
fn debit(
    child: &mut Books,
    parent: &mut Books,
    budget: &mut Budget,
    amount: &str,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let before = (child.wallet.clone(), parent.wallet.clone(), budget.clone());
    match child.wallet.debit_shared(&mut parent.wallet, budget, &ctx(now), d(amount), None) {
        Ok(()) => {
            child.commit();
            parent.commit();
            Ok(())
        }
        Err(error) => {
            (child.wallet, parent.wallet, *budget) = before;
            Err(error)
        }
    }
}

#[test]
fn a_child_spends_its_own_credits_first_then_its_parents_within_its_limit() {
    let (mut child, mut parent, mut budget) = family(Some("30"), BudgetPeriod::Day);
    child.grant("5", GrantKind::Paid);
    parent.grant("100", GrantKind::Paid);
    debit(&mut child, &mut parent, &mut budget, "12", t0()).unwrap();
    assert_eq!((child.available(), parent.available(), budget.spent), (d("0"), d("93"), d("7")));
    let child_kinds: Vec<(EntryKind, Decimal)> =
        child.ledger.iter().skip(1).map(|entry| (entry.kind, entry.amount)).collect();
    assert_eq!(child_kinds, vec![(EntryKind::Debit, d("-5")), (EntryKind::ParentDraw, d("-7"))]);
    let parent_debit = parent.ledger.last().unwrap();
    assert_eq!((parent_debit.kind, parent_debit.amount), (EntryKind::Debit, d("-7")));
    assert_eq!(parent_debit.metadata.get(CHILD_ACCOUNT_KEY), Some(&child.wallet.account.id.to_string()));
    assert_eq!(child.wallet.spend_view(t0()).spent, d("12"), "the child's spend counts all it drew");
    assert_eq!(parent.wallet.spend_view(t0()).spent, d("7"), "the parent's counts what it paid");
    // 23 of the 30 left today: 24 is refused and changes nothing.
    assert_eq!(debit(&mut child, &mut parent, &mut budget, "24", t0()), Err(DomainError::BudgetExceeded));
    assert_eq!((parent.available(), budget.spent), (d("93"), d("7")));
    debit(&mut child, &mut parent, &mut budget, "23", t0()).unwrap();
    assert_eq!(budget.remaining_at(t0()), Some(d("0")));
    // The next day the limit starts again.
    let tomorrow = t0() + Duration::days(1);
    assert_eq!(budget.spent_at(tomorrow), d("0"));
    debit(&mut child, &mut parent, &mut budget, "30", tomorrow).unwrap();
    assert_eq!((parent.available(), budget.spent, budget.period_key.as_str()), (d("40"), d("30"), "2026-01-02"));
    child.check_invariants();
    parent.check_invariants();
}

#[test]
fn the_parents_own_rules_decide_its_part() {
    let (mut child, mut parent, mut budget) = family(None, BudgetPeriod::Month);
    parent.grant("10", GrantKind::Paid);
    assert_eq!(debit(&mut child, &mut parent, &mut budget, "11", t0()), Err(DomainError::InsufficientFunds));
    let cap = |cap: Option<&str>| AccountUpdate { monthly_cap: Some(cap.map(d)), ..AccountUpdate::default() };
    parent.run(|wallet| wallet.update(&ctx(t0()), cap(Some("8")))).unwrap();
    assert_eq!(debit(&mut child, &mut parent, &mut budget, "9", t0()), Err(DomainError::SpendingCapReached));
    debit(&mut child, &mut parent, &mut budget, "8", t0()).unwrap();
    assert_eq!((parent.available(), budget.spent), (d("2"), d("8")));
    // The parent's holds keep what they guarantee.
    parent.run(|wallet| wallet.update(&ctx(t0()), cap(None))).unwrap();
    parent.run(|wallet| wallet.reserve(&ctx(t0()), d("2"), Duration::hours(1), None)).unwrap();
    assert_eq!(debit(&mut child, &mut parent, &mut budget, "1", t0()), Err(DomainError::InsufficientFunds));
    child.check_invariants();
    parent.check_invariants();
}

#[test]
fn usage_is_shared_amount_by_amount() {
    let (mut child, mut parent, mut budget) = family(Some("6"), BudgetPeriod::Month);
    child.grant("2", GrantKind::Paid);
    parent.grant("100", GrantKind::Paid);
    let amounts: Vec<Decimal> = ["1", "3", "4", "2", "1"].into_iter().map(d).collect();
    let drawn =
        child.wallet.draw_usage_shared(&mut parent.wallet, &mut budget, &ctx(t0()), "tokens", &amounts).unwrap();
    child.commit();
    parent.commit();
    // 1 own; 3 = 1 own + 2 parent; 4 parent (6 of 6); 2 and 1 past the limit.
    let refused: Vec<Option<DomainError>> = drawn.outcomes.clone();
    assert_eq!(refused, vec![None, None, None, Some(DomainError::BudgetExceeded), Some(DomainError::BudgetExceeded)]);
    assert_eq!((drawn.charged, budget.spent, parent.available(), child.available()), (d("8"), d("6"), d("94"), d("0")));
    let draws: Decimal =
        child.ledger.iter().filter(|entry| entry.kind == EntryKind::ParentDraw).map(|entry| entry.amount).sum();
    let parent_debits: Decimal =
        parent.ledger.iter().filter(|entry| entry.kind == EntryKind::Debit).map(|entry| entry.amount).sum();
    assert_eq!((draws, parent_debits), (d("-6"), d("-6")), "both ledgers record the parent's part");
    child.check_invariants();
    parent.check_invariants();
}

#[test]
fn a_one_wallet_command_on_a_child_is_sent_the_shared_way() {
    let (mut child, parent, _) = family(None, BudgetPeriod::Month);
    child.wallet.account.parent = Some(parent.wallet.account.id);
    let command = Command::Debit { amount: d("1"), meter_code: None };
    assert_eq!(command.apply(&mut child.wallet, &ctx(t0())).err(), Some(DomainError::DrawsOnParent));
    let reserve = Command::Reserve { amount: d("1"), ttl: Duration::hours(1), meter_code: None };
    assert_eq!(
        reserve.apply(&mut child.wallet, &ctx(t0())).err(),
        Some(DomainError::InsufficientFunds),
        "own credits only"
    );
}
