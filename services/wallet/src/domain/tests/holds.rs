//! Holds: funds set aside, captured, released or expired, and the
//! guarantee a hold keeps.

use chrono::Duration;

use super::*;

#[test]
fn a_hold_sets_funds_aside_and_a_capture_debits_up_to_it() {
    let mut books = Books::new(Overdraft::None);
    books.grant("10", GrantKind::Paid);
    let hold = books.run(|wallet| wallet.reserve(&ctx(t0()), d("6"), Duration::minutes(5), None)).unwrap();
    assert_eq!(books.available(), d("4"));
    assert_eq!(books.wallet.balance(t0()).held, d("6"));
    assert_eq!(books.debit("5"), Err(DomainError::InsufficientFunds));
    assert_eq!(
        books.run(|wallet| wallet.capture(&ctx(t0()), hold, d("6.01"))),
        Err(DomainError::CaptureExceedsHold),
        "a capture above the held amount is refused"
    );
    books.run(|wallet| wallet.capture(&ctx(t0()), hold, d("4"))).unwrap();
    assert_eq!(books.available(), d("6"), "the uncaptured 2 is released");
    assert_eq!(books.wallet.balance(t0()).held, Decimal::ZERO);
    let kinds: Vec<EntryKind> = books.ledger.iter().map(|entry| entry.kind).collect();
    assert_eq!(kinds, vec![EntryKind::Grant, EntryKind::Hold, EntryKind::Capture, EntryKind::Release]);
    assert_eq!(
        books.run(|wallet| wallet.capture(&ctx(t0()), hold, d("1"))),
        Err(DomainError::HoldNotActive("captured"))
    );
    books.check_invariants();
}

#[test]
fn a_hold_expiring_between_reserve_and_capture_cannot_be_captured() {
    let mut books = Books::new(Overdraft::None);
    books.grant("10", GrantKind::Paid);
    let hold = books.run(|wallet| wallet.reserve(&ctx(t0()), d("6"), Duration::seconds(30), None)).unwrap();
    let later = t0() + Duration::seconds(30);
    assert_eq!(books.wallet.balance(later).available, d("10"), "an expired hold frees its funds at once");
    assert_eq!(books.run(|wallet| wallet.capture(&ctx(later), hold, d("6"))), Err(DomainError::HoldExpired));
    books
        .run(|wallet| {
            wallet.expire(&ctx(later));
            Ok(())
        })
        .unwrap();
    assert_eq!(books.ledger.last().unwrap().kind, EntryKind::Release);
    assert!(books.events.iter().any(|event| event.event_type == EventType::HoldExpired));
    books.check_invariants();
}

#[test]
fn a_released_hold_frees_everything() {
    let mut books = Books::new(Overdraft::None);
    books.grant("10", GrantKind::Paid);
    let hold = books.run(|wallet| wallet.reserve(&ctx(t0()), d("10"), Duration::seconds(30), None)).unwrap();
    books.run(|wallet| wallet.release(&ctx(t0()), hold)).unwrap();
    assert_eq!(books.available(), d("10"));
    assert_eq!(books.run(|wallet| wallet.release(&ctx(t0()), hold)), Err(DomainError::HoldNotActive("released")));
    books.check_invariants();
}

#[test]
fn a_hold_keeps_its_guarantee_when_other_credits_are_restricted() {
    let mut books = Books::new(Overdraft::None);
    books.grant_with("100", GrantKind::Promotional, |g| g.meter_codes = vec!["x".into()]);
    books.grant("100", GrantKind::Paid);
    let hold = books.run(|wallet| wallet.reserve(&ctx(t0()), d("100"), Duration::minutes(5), Some("y"))).unwrap();
    assert_eq!(
        books.debit_at("100", Some("y"), t0()),
        Err(DomainError::InsufficientFunds),
        "the only credits meter y can use are held"
    );
    books.run(|wallet| wallet.capture(&ctx(t0()), hold, d("100"))).unwrap();
    books.check_invariants();
}
