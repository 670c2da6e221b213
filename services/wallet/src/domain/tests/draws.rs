//! Debits: what they draw and in what order, expiring and future credits,
//! the overdraft, and what an account's status lets through.

use chrono::Duration;

use super::*;

#[test]
fn a_debit_exactly_equal_to_the_available_balance_succeeds_and_leaves_zero() {
    let mut books = Books::new(Overdraft::None);
    books.grant("10.00", GrantKind::Paid);
    books.debit("10.00").unwrap();
    assert_eq!(books.available(), Decimal::ZERO);
    assert_eq!(books.debit("0.01"), Err(DomainError::InsufficientFunds));
    books.check_invariants();
}

#[test]
fn a_refused_debit_changes_nothing() {
    let mut books = Books::new(Overdraft::None);
    books.grant("5", GrantKind::Paid);
    let ledger_length = books.ledger.len();
    assert_eq!(books.debit("5.01"), Err(DomainError::InsufficientFunds));
    assert_eq!(books.ledger.len(), ledger_length);
    assert_eq!(books.available(), d("5"));
}

#[test]
fn free_credits_are_drawn_before_paid_ones_and_each_grant_gets_its_own_entry() {
    let mut books = Books::new(Overdraft::None);
    let paid = books.grant("10", GrantKind::Paid);
    let promo = books.grant("3", GrantKind::Promotional);
    let entries = books.debit("5").unwrap();
    let money: Vec<(Option<GrantId>, Decimal)> = entries
        .iter()
        .filter(|entry| entry.kind == EntryKind::Debit)
        .map(|entry| (entry.grant_id, entry.amount))
        .collect();
    assert_eq!(money, vec![(Some(promo), d("-3")), (Some(paid), d("-2"))]);
    assert_eq!(books.remaining(promo), Decimal::ZERO);
    assert_eq!(books.remaining(paid), d("8"));
    books.check_invariants();
}

#[test]
fn drawdown_prefers_meter_grants_then_priority_then_expiry_then_age() {
    let mut books = Books::new(Overdraft::None);
    let old = books.grant_with("1", GrantKind::Paid, |g| g.priority = Some(5));
    let young = books.grant_with("1", GrantKind::Paid, |g| g.priority = Some(5));
    let expiring = books.grant_with("1", GrantKind::Paid, |g| {
        g.priority = Some(5);
        g.expires_at = Some(t0() + Duration::days(1));
    });
    let urgent = books.grant_with("1", GrantKind::Paid, |g| g.priority = Some(1));
    let for_meter = books.grant_with("1", GrantKind::Paid, |g| {
        g.priority = Some(50);
        g.meter_codes = vec!["gpu".into()];
    });
    let for_other = books.grant_with("1", GrantKind::Paid, |g| g.meter_codes = vec!["cpu".into()]);
    let entries = books.debit_at("5", Some("gpu"), t0()).unwrap();
    let order: Vec<GrantId> = entries.iter().filter_map(|entry| entry.grant_id).collect();
    assert_eq!(order, vec![for_meter, urgent, expiring, old, young]);
    assert_eq!(books.remaining(for_other), d("1"), "a grant for another meter is never drawn");
    assert_eq!(books.debit_at("0.01", Some("gpu"), t0()), Err(DomainError::InsufficientFunds));
    books.check_invariants();
}

#[test]
fn a_debit_without_a_meter_cannot_draw_restricted_credits() {
    let mut books = Books::new(Overdraft::None);
    books.grant_with("10", GrantKind::Promotional, |g| g.meter_codes = vec!["gpu".into()]);
    assert_eq!(books.debit("1"), Err(DomainError::InsufficientFunds));
    assert!(books.debit_at("1", Some("gpu"), t0()).is_ok());
}

#[test]
fn a_grant_expiring_at_the_debits_instant_no_longer_counts() {
    let mut books = Books::new(Overdraft::None);
    let expires = t0() + Duration::hours(1);
    let grant = books.grant_with("10", GrantKind::Paid, |g| g.expires_at = Some(expires));
    assert_eq!(books.wallet.balance(expires - Duration::microseconds(1)).available, d("10"));
    assert_eq!(
        books.wallet.balance(expires).available,
        Decimal::ZERO,
        "stops counting at the instant, before any sweep"
    );
    assert_eq!(books.debit_at("1", None, expires), Err(DomainError::InsufficientFunds));
    books
        .run(|wallet| {
            wallet.expire(&ctx(expires));
            Ok(())
        })
        .unwrap();
    let last = books.ledger.last().unwrap();
    assert_eq!((last.kind, last.amount, last.grant_id), (EntryKind::Expiry, d("-10"), Some(grant)));
    assert!(books.events.iter().any(|event| event.event_type == EventType::GrantExpired));
    books.check_invariants();
}

#[test]
fn a_debit_just_before_expiry_draws_the_expiring_grant() {
    let mut books = Books::new(Overdraft::None);
    let expires = t0() + Duration::hours(1);
    books.grant_with("10", GrantKind::Paid, |g| g.expires_at = Some(expires));
    assert!(books.debit_at("10", None, expires - Duration::microseconds(1)).is_ok());
}

#[test]
fn future_credits_are_pending_until_effective() {
    let mut books = Books::new(Overdraft::None);
    let from = t0() + Duration::days(1);
    books.grant_with("10", GrantKind::Paid, |g| g.effective_at = Some(from));
    assert_eq!(books.wallet.balance(t0()).pending, d("10"));
    assert_eq!(books.debit("1"), Err(DomainError::InsufficientFunds));
    assert!(books.debit_at("1", None, from).is_ok());
}

#[test]
fn credit_limit_lets_the_balance_go_down_to_minus_the_limit() {
    let mut books = Books::new(Overdraft::CreditLimit(d("50")));
    books.grant("10", GrantKind::Paid);
    let entries = books.debit("60").unwrap();
    assert_eq!(entries.len(), 2, "one entry for the grant, one for the overdraft part");
    assert_eq!(entries[1].grant_id, None);
    assert_eq!(entries[1].amount, d("-50"));
    assert_eq!(books.available(), d("-50"));
    assert_eq!(books.debit("0.01"), Err(DomainError::InsufficientFunds));
    books.check_invariants();
}

#[test]
fn a_blocked_credit_limit_refuses_what_only_the_overdraft_would_cover() {
    let mut books = Books::new(Overdraft::CreditLimit(d("50")));
    books.grant("10", GrantKind::Paid);
    let block = AccountUpdate { credit_blocked: Some(true), ..AccountUpdate::default() };
    books.run(|wallet| wallet.update(&ctx(t0()), block)).unwrap();
    assert_eq!(books.debit("10.01"), Err(DomainError::CreditBlocked));
    books.debit("10").unwrap();
    let unblock = AccountUpdate { credit_blocked: Some(false), ..AccountUpdate::default() };
    books.run(|wallet| wallet.update(&ctx(t0()), unblock)).unwrap();
    books.debit("20").unwrap();
    assert_eq!(books.available(), d("-20"));
    books.check_invariants();
}

#[test]
fn unlimited_overdraft_takes_any_debit() {
    let mut books = Books::new(Overdraft::Unlimited);
    books.debit("123456.78").unwrap();
    assert_eq!(books.available(), d("-123456.78"));
    assert_eq!(books.wallet.balance(t0()).spendable, None);
    books.check_invariants();
}

#[test]
fn credits_added_later_repay_the_overdraft_first() {
    let mut books = Books::new(Overdraft::CreditLimit(d("100")));
    books.debit("30").unwrap();
    let grant = books.grant("50", GrantKind::Paid);
    assert_eq!(books.remaining(grant), d("20"));
    assert_eq!(books.wallet.account.overdraft_used, Decimal::ZERO);
    assert_eq!(books.available(), d("20"));
    books.check_invariants();
}

#[test]
fn a_suspended_account_takes_no_debits_but_a_closed_one_takes_nothing() {
    let mut books = Books::new(Overdraft::None);
    books.grant("10", GrantKind::Paid);
    let suspend = AccountUpdate { status: Some(AccountStatus::Suspended), ..AccountUpdate::default() };
    books.run(|wallet| wallet.update(&ctx(t0()), suspend)).unwrap();
    assert_eq!(books.debit("1"), Err(DomainError::AccountSuspended));
    books.grant("1", GrantKind::Paid);
    let close = AccountUpdate { status: Some(AccountStatus::Closed), ..AccountUpdate::default() };
    books.run(|wallet| wallet.update(&ctx(t0()), close)).unwrap();
    assert_eq!(books.debit("1"), Err(DomainError::AccountClosed));
    let reopen = AccountUpdate { status: Some(AccountStatus::Active), ..AccountUpdate::default() };
    assert_eq!(books.run(|wallet| wallet.update(&ctx(t0()), reopen)), Err(DomainError::AccountClosed));
}

#[test]
fn credits_that_become_effective_repay_the_overdraft_before_they_are_spent() {
    let mut books = Books::new(Overdraft::CreditLimit(d("100")));
    books.debit("50").unwrap();
    let later = t0() + Duration::hours(1);
    let future = books.grant_with("100", GrantKind::Paid, |g| g.effective_at = Some(later));
    assert_eq!(books.wallet.account.overdraft_used, d("50"), "not yet effective, so not yet repaying");
    books.debit_at("30", None, later).unwrap();
    assert_eq!(books.wallet.account.overdraft_used, Decimal::ZERO);
    assert_eq!(books.remaining(future), d("20"));
    assert_eq!(books.wallet.balance(later).available, d("20"));
    books.check_invariants();
}
