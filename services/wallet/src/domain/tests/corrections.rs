//! Refunds, voided grants, adjustments, and the range a balance keeps to.

use chrono::Duration;

use super::*;

#[test]
fn a_refund_returns_credits_to_the_grants_drawn_and_never_more_than_was_debited() {
    let mut books = Books::new(Overdraft::None);
    let promo = books.grant("3", GrantKind::Promotional);
    let paid = books.grant("10", GrantKind::Paid);
    let debit = books.debit("5").unwrap();
    books.run(|wallet| wallet.refund(&ctx(t0()), &debit, &[], d("4"))).unwrap();
    assert_eq!(books.remaining(paid), d("10"), "the last grant drawn is refunded first");
    assert_eq!(books.remaining(promo), d("2"));
    let prior: Vec<Entry> = books.ledger.iter().filter(|entry| entry.kind == EntryKind::Refund).cloned().collect();
    assert_eq!(
        books.run(|wallet| wallet.refund(&ctx(t0()), &debit, &prior, d("1.01"))),
        Err(DomainError::RefundExceedsDebit),
        "a refund above what is left of the debit is refused"
    );
    books.run(|wallet| wallet.refund(&ctx(t0()), &debit, &prior, d("1"))).unwrap();
    assert_eq!(books.available(), d("13"));
    books.check_invariants();
}

#[test]
fn a_refund_to_an_expired_grant_is_written_off_again() {
    let mut books = Books::new(Overdraft::None);
    let expires = t0() + Duration::hours(1);
    books.grant_with("10", GrantKind::Paid, |g| g.expires_at = Some(expires));
    let debit = books.debit("4").unwrap();
    books.run(|wallet| wallet.refund(&ctx(expires), &debit, &[], d("4"))).unwrap();
    assert_eq!(books.wallet.balance(expires).available, Decimal::ZERO);
    let kinds: Vec<EntryKind> = books.ledger.iter().rev().take(2).map(|entry| entry.kind).collect();
    assert_eq!(kinds, vec![EntryKind::Expiry, EntryKind::Refund]);
    books.check_invariants();
}

#[test]
fn voiding_a_grant_writes_off_what_remains() {
    let mut books = Books::new(Overdraft::None);
    let grant = books.grant("10", GrantKind::Promotional);
    books.debit("3").unwrap();
    books.run(|wallet| wallet.void_grant(&ctx(t0()), grant)).unwrap();
    assert_eq!(books.available(), Decimal::ZERO);
    assert_eq!(books.ledger.last().unwrap().amount, d("-7"));
    assert_eq!(books.run(|wallet| wallet.void_grant(&ctx(t0()), grant)), Err(DomainError::GrantNotActive("voided")));
    books.check_invariants();
}

#[test]
fn a_clawback_takes_at_most_what_is_left_and_leaves_the_grant_active() {
    let mut books = Books::new(Overdraft::None);
    let paid = books.grant("100", GrantKind::Paid);
    let bonus = books.grant_with("10", GrantKind::Promotional, |g| g.priority = Some(1));
    books.debit("4").unwrap();
    assert_eq!(books.run(|wallet| wallet.claw_back(&ctx(t0()), bonus, d("5"))), Ok(d("5")));
    assert_eq!(books.remaining(bonus), d("1"));
    assert_eq!(books.wallet.grant_by_id(bonus).map(|grant| grant.status), Some(GrantStatus::Active));
    assert_eq!(books.ledger.last().map(|entry| (entry.kind, entry.amount)), Some((EntryKind::Void, d("-5"))));
    assert_eq!(books.run(|wallet| wallet.claw_back(&ctx(t0()), bonus, d("5"))), Ok(d("1")), "only what is left");
    let entries = books.ledger.len();
    assert_eq!(books.run(|wallet| wallet.claw_back(&ctx(t0()), bonus, d("5"))), Ok(Decimal::ZERO));
    assert_eq!(books.ledger.len(), entries, "nothing taken, nothing written");
    assert_eq!(books.remaining(paid), d("100"), "other grants are not touched");
    books.run(|wallet| wallet.void_grant(&ctx(t0()), paid)).unwrap();
    assert_eq!(books.run(|wallet| wallet.claw_back(&ctx(t0()), paid, d("1"))), Ok(Decimal::ZERO), "a voided grant");
    books.check_invariants();
}

#[test]
fn a_negative_adjustment_draws_any_grant_within_the_floor() {
    let mut books = Books::new(Overdraft::None);
    books.grant_with("5", GrantKind::Promotional, |g| g.meter_codes = vec!["gpu".into()]);
    books.run(|wallet| wallet.adjust(&ctx(t0()), d("-5"))).unwrap();
    assert_eq!(books.available(), Decimal::ZERO);
    assert_eq!(books.run(|wallet| wallet.adjust(&ctx(t0()), d("-1"))), Err(DomainError::InsufficientFunds));
    let grant = books.run(|wallet| wallet.adjust(&ctx(t0()), d("2"))).unwrap();
    assert!(grant.is_some());
    assert_eq!(books.available(), d("2"));
    books.check_invariants();
}

#[test]
fn a_balance_beyond_the_range_is_refused() {
    let mut books = Books::new(Overdraft::None);
    books.grant("999999999999999999", GrantKind::Paid);
    let mut refused = None;
    for _ in 0..200 {
        let new = NewGrant {
            amount: d("999999999999999999"),
            kind: GrantKind::Paid,
            priority: None,
            effective_at: None,
            expires_at: None,
            meter_codes: Vec::new(),
            source: GrantSource::Admin,
            source_reference: String::new(),
            metadata: BTreeMap::new(),
        };
        if let Err(error) = books.run(|wallet| wallet.grant(&ctx(t0()), new)) {
            refused = Some(error);
            break;
        }
    }
    assert_eq!(refused, Some(DomainError::BalanceOutOfRange));
    books.check_invariants();
}

#[test]
fn a_negative_adjustment_is_announced_with_its_sign() {
    let mut books = Books::new(Overdraft::None);
    books.grant("5", GrantKind::Paid);
    books.run(|wallet| wallet.adjust(&ctx(t0()), d("-2"))).unwrap();
    let adjusted = books.events.iter().rev().find(|event| event.event_type == EventType::Adjusted).unwrap();
    assert_eq!(adjusted.amount, Some(d("-2")));
}
