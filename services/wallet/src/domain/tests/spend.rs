//! Spend control and balance alerts: the monthly cap and its alerts, the
//! month turning, the projection, and the low-balance alerts.

use chrono::Duration;

use super::*;

#[test]
fn balance_low_is_sent_once_per_downward_crossing() {
    let mut books = Books::with_threshold(Overdraft::None, Some("5"));
    books.grant("10", GrantKind::Paid);
    books.debit("4").unwrap();
    books.debit("2").unwrap();
    books.debit("1").unwrap();
    let lows = |books: &Books| books.events.iter().filter(|event| event.event_type == EventType::BalanceLow).count();
    assert_eq!(lows(&books), 1, "below the threshold twice, alerted once");
    books.grant("10", GrantKind::Paid);
    books.debit("9").unwrap();
    assert_eq!(lows(&books), 2, "rising above re-arms the alert");
    books.debit("4").unwrap();
    let depleted = books.events.iter().filter(|event| event.event_type == EventType::BalanceDepleted).count();
    assert_eq!(depleted, 1);
}

#[test]
fn the_spending_cap_alerts_at_50_80_and_100_percent_once_each_and_then_refuses() {
    let mut books = Books::new(Overdraft::Unlimited);
    set(&mut books, AccountUpdate { monthly_cap: Some(Some(d("100"))), ..AccountUpdate::default() });
    books.debit("49.99").unwrap();
    assert!(events_of(&books, EventType::SpendingCapAlert).is_empty());
    books.debit("0.01").unwrap();
    books.debit("10").unwrap();
    books.debit("20").unwrap();
    let percents: Vec<Option<u32>> =
        events_of(&books, EventType::SpendingCapAlert).iter().map(|event| event.cap_percent).collect();
    assert_eq!(percents, vec![Some(50), Some(80)]);
    // A debit that would pass the cap is refused whole and changes nothing.
    assert_eq!(books.debit("20.01"), Err(DomainError::SpendingCapReached));
    books.debit("20").unwrap();
    let alerts = events_of(&books, EventType::SpendingCapAlert);
    assert_eq!(alerts.last().unwrap().cap_percent, Some(100));
    assert_eq!(alerts.last().unwrap().amount, Some(d("100")));
    assert_eq!(books.debit("0.01"), Err(DomainError::SpendingCapReached));
    // Holds count as spend to come.
    assert_eq!(
        books.run(|wallet| wallet.reserve(&ctx(t0()), d("1"), Duration::minutes(5), None)).unwrap_err(),
        DomainError::SpendingCapReached
    );
    // Raising the cap lets debits through; the alerts already passed are not sent again.
    set(&mut books, AccountUpdate { monthly_cap: Some(Some(d("1000"))), ..AccountUpdate::default() });
    books.debit("5").unwrap();
    assert_eq!(events_of(&books, EventType::SpendingCapAlert).len(), 3);
    // Crossing 50% of the new cap alerts again.
    books.debit("395").unwrap();
    assert_eq!(events_of(&books, EventType::SpendingCapAlert).last().unwrap().cap_percent, Some(50));
    books.check_invariants();
}

#[test]
fn the_month_turning_starts_the_spend_and_the_alerts_afresh() {
    let mut books = Books::new(Overdraft::Unlimited);
    set(&mut books, AccountUpdate { monthly_cap: Some(Some(d("100"))), ..AccountUpdate::default() });
    books.debit("100").unwrap();
    assert_eq!(books.debit("1"), Err(DomainError::SpendingCapReached));
    let next_month = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
    assert_eq!(books.wallet.spend_view(next_month).spent, Decimal::ZERO);
    books.debit_at("60", None, next_month).unwrap();
    let alerts = events_of(&books, EventType::SpendingCapAlert);
    assert_eq!(alerts.iter().map(|event| event.cap_percent.unwrap()).collect::<Vec<_>>(), vec![50, 80, 100, 50]);
    assert_eq!(books.wallet.spend_view(next_month).spent, d("60"));
}

#[test]
fn a_refund_gives_room_back_under_the_cap_and_re_arms_its_alerts() {
    let mut books = Books::new(Overdraft::Unlimited);
    set(&mut books, AccountUpdate { monthly_cap: Some(Some(d("100"))), ..AccountUpdate::default() });
    let debit = books.debit("90").unwrap();
    assert_eq!(books.debit("20"), Err(DomainError::SpendingCapReached));
    let original = debit.clone();
    books.run(|wallet| wallet.refund(&ctx(t0()), &original, &[], d("50"))).unwrap();
    assert_eq!(books.wallet.spend_view(t0()).spent, d("40"));
    books.debit("20").unwrap();
    let percents: Vec<u32> =
        events_of(&books, EventType::SpendingCapAlert).iter().map(|event| event.cap_percent.unwrap()).collect();
    assert_eq!(percents, vec![50, 80, 50]);
}

#[test]
fn the_projection_of_a_constant_daily_spend_is_that_rate_times_the_month() {
    let mut books = Books::new(Overdraft::Unlimited);
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    for day in 0..10 {
        books.debit_at("10", None, start + Duration::days(day) + Duration::hours(12)).unwrap();
    }
    // Ten days gone, 100 spent: 10 a day over January's 31 days.
    let view = books.wallet.spend_view(start + Duration::days(10));
    assert_eq!((view.spent, view.projected), (d("100"), d("310")));
    assert_eq!((view.period_start, view.period_end), (start, Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap()));
    assert_eq!(view.cap, None);
    assert_eq!(view.remaining, None);
}

#[test]
fn the_low_balance_warning_is_sent_once_per_fall_and_again_after_recovery() {
    let mut books = Books::new(Overdraft::None);
    books.grant("100", GrantKind::Paid);
    set(&mut books, AccountUpdate { low_balance_warning: Some(Some(d("30"))), ..AccountUpdate::default() });
    books.debit("71").unwrap();
    books.debit("10").unwrap();
    assert_eq!(events_of(&books, EventType::BalanceWarning).len(), 1);
    assert_eq!(events_of(&books, EventType::BalanceWarning)[0].threshold, Some(d("30")));
    books.grant("50", GrantKind::Paid);
    books.debit("40").unwrap();
    assert_eq!(events_of(&books, EventType::BalanceWarning).len(), 2);
    books.debit("29").unwrap();
    assert_eq!(events_of(&books, EventType::BalanceDepleted).len(), 1);
    assert_eq!(events_of(&books, EventType::BalanceWarning).len(), 2);
}

#[test]
fn an_operation_timed_before_the_month_turned_counts_in_the_new_month() {
    let mut books = Books::new(Overdraft::Unlimited);
    set(&mut books, AccountUpdate { monthly_cap: Some(Some(d("100"))), ..AccountUpdate::default() });
    let february = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
    books.debit_at("100", None, february).unwrap();
    // A debit stamped a moment before midnight that reaches the wallet
    // after February's first: it must not wipe February's spend.
    let late = february - Duration::milliseconds(10);
    assert_eq!(books.debit_at("1", None, late), Err(DomainError::SpendingCapReached));
    assert_eq!(books.wallet.spend_view(february).spent, d("100"));
    assert_eq!(books.debit_at("1", None, february), Err(DomainError::SpendingCapReached));
    let alerts = events_of(&books, EventType::SpendingCapAlert);
    assert_eq!(alerts.iter().filter(|event| event.cap_percent == Some(100)).count(), 1, "the 100% alert once");
}
