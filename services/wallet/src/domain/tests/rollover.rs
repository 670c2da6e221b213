//! A new period's credits with the previous period's rolled over: capped,
//! all, none, and a previous grant already gone.

use chrono::Duration;

use super::*;

fn period_grant() -> NewGrant {
    NewGrant {
        amount: d("10"),
        kind: GrantKind::Promotional,
        priority: Some(20),
        effective_at: None,
        expires_at: Some(t0() + Duration::days(30)),
        meter_codes: vec!["gpu".into()],
        source: GrantSource::Admin,
        source_reference: "plan".into(),
        metadata: BTreeMap::new(),
    }
}

/// A first period of 10 with 3 used, then the second period granted with `max`
/// carried at most. Returns the books, the entries of the turn and the grants.
fn second_period(max: RolloverMax) -> (Books, Vec<Entry>, GrantId, Option<GrantId>) {
    let mut books = Books::new(Overdraft::None);
    let first = books.run(|wallet| wallet.grant(&ctx(t0()), period_grant())).unwrap();
    books.debit_at("3", Some("gpu"), t0()).unwrap();
    let turn = t0() + Duration::days(30) - Duration::seconds(1);
    let rollover = Rollover { from: first, max, expires_at: Some(turn + Duration::days(60)) };
    let before = books.ledger.len();
    let mut new = period_grant();
    new.expires_at = Some(turn + Duration::days(30));
    let (_, rolled) = books.run(|wallet| wallet.grant_rolling_over(&ctx(turn), new, &rollover)).unwrap();
    books.check_invariants();
    let entries = books.ledger[before..].to_vec();
    (books, entries, first, rolled)
}

fn available_at_turn(books: &Books) -> Decimal {
    books.wallet.balance(t0() + Duration::days(30)).available
}

fn kinds_and_amounts(entries: &[Entry]) -> Vec<(EntryKind, Decimal)> {
    entries.iter().map(|entry| (entry.kind, entry.amount)).collect()
}

#[test]
fn a_capped_rollover_carries_up_to_its_cap_into_a_grant_of_its_own_and_expires_the_rest() {
    let (books, entries, first, rolled) = second_period(RolloverMax::Amount(d("5")));
    assert_eq!(
        kinds_and_amounts(&entries),
        vec![
            (EntryKind::Rollover, d("-5")),
            (EntryKind::Rollover, d("5")),
            (EntryKind::Expiry, d("-2")),
            (EntryKind::Grant, d("10")),
        ]
    );
    let old = books.wallet.grant_by_id(first).unwrap();
    assert_eq!((old.remaining, old.status), (Decimal::ZERO, GrantStatus::Expired));
    let carried = books.wallet.grant_by_id(rolled.unwrap()).unwrap();
    assert_eq!(carried.remaining, d("5"));
    assert_eq!((carried.kind, carried.priority, carried.source), (GrantKind::Promotional, 20, GrantSource::Rollover));
    assert_eq!(carried.meter_codes, vec!["gpu".to_owned()], "still for the same meters");
    assert_eq!(carried.source_reference, first.to_string());
    assert_eq!(carried.expires_at, Some(t0() + Duration::days(30) - Duration::seconds(1) + Duration::days(60)));
    assert_eq!(entries[1].grant_id, rolled);
    assert_eq!(available_at_turn(&books), d("15"));
}

#[test]
fn an_uncapped_rollover_carries_all_that_is_left() {
    let (books, entries, _, rolled) = second_period(RolloverMax::All);
    assert_eq!(
        kinds_and_amounts(&entries),
        vec![(EntryKind::Rollover, d("-7")), (EntryKind::Rollover, d("7")), (EntryKind::Grant, d("10"))]
    );
    assert_eq!(books.wallet.grant_by_id(rolled.unwrap()).unwrap().remaining, d("7"));
    assert_eq!(available_at_turn(&books), d("17"));
}

#[test]
fn a_share_of_the_period_is_carried_rounded_down() {
    // 33% of 10 is 3.30; 7 is left.
    let (books, entries, _, rolled) = second_period(RolloverMax::Percent(33));
    assert_eq!(entries[1].amount, d("3.3"));
    assert_eq!(books.wallet.grant_by_id(rolled.unwrap()).unwrap().remaining, d("3.3"));
    assert_eq!(entries[2].amount, d("-3.7"), "the rest expires");
    let (_, entries, _, _) = second_period(RolloverMax::Percent(100));
    assert_eq!(entries[1].amount, d("7"), "never more than is left");
}

#[test]
fn credits_that_would_expire_on_arrival_are_not_carried() {
    let mut books = Books::new(Overdraft::None);
    let first = books.run(|wallet| wallet.grant(&ctx(t0()), period_grant())).unwrap();
    let turn = t0() + Duration::days(10);
    let lapsed = Rollover { from: first, max: RolloverMax::All, expires_at: Some(turn - Duration::days(1)) };
    let before = books.ledger.len();
    let (_, rolled) = books.run(|wallet| wallet.grant_rolling_over(&ctx(turn), period_grant(), &lapsed)).unwrap();
    assert_eq!(rolled, None);
    assert_eq!(
        kinds_and_amounts(&books.ledger[before..]),
        vec![(EntryKind::Expiry, d("-10")), (EntryKind::Grant, d("10"))]
    );
    books.check_invariants();
}

#[test]
fn a_rollover_of_nothing_expires_what_is_left_at_the_turn() {
    let (books, entries, _, rolled) = second_period(RolloverMax::Amount(Decimal::ZERO));
    assert_eq!(rolled, None);
    assert_eq!(kinds_and_amounts(&entries), vec![(EntryKind::Expiry, d("-7")), (EntryKind::Grant, d("10"))]);
    assert_eq!(available_at_turn(&books), d("10"));
}

#[test]
fn a_grant_already_gone_carries_nothing() {
    let mut books = Books::new(Overdraft::None);
    let first = books.run(|wallet| wallet.grant(&ctx(t0()), period_grant())).unwrap();
    let after_expiry = t0() + Duration::days(31);
    let rollover = Rollover { from: first, max: RolloverMax::All, expires_at: None };
    let before = books.ledger.len();
    let (_, rolled) =
        books.run(|wallet| wallet.grant_rolling_over(&ctx(after_expiry), period_grant(), &rollover)).unwrap();
    assert_eq!(rolled, None);
    let kinds: Vec<EntryKind> = books.ledger[before..].iter().map(|entry| entry.kind).collect();
    assert_eq!(kinds, vec![EntryKind::Expiry, EntryKind::Grant], "expired at its own time, then the new credits");
    let unknown = Rollover { from: GrantId::generate(), max: RolloverMax::All, expires_at: None };
    let (_, rolled) =
        books.run(|wallet| wallet.grant_rolling_over(&ctx(after_expiry), period_grant(), &unknown)).unwrap();
    assert_eq!(rolled, None);
    books.check_invariants();
}
