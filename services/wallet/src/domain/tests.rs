#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use reservoir_common::auth::TenantId;
use reservoir_common::money::Unit;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
}

fn d(text: &str) -> Decimal {
    text.parse().unwrap()
}

fn ctx(now: DateTime<Utc>) -> OperationContext {
    OperationContext::new(now, Uuid::new_v4().to_string())
}

/// A wallet plus every entry it ever wrote, as the ledger table would hold them.
struct Books {
    wallet: Wallet,
    ledger: Vec<Entry>,
    events: Vec<Event>,
}

impl Books {
    fn new(overdraft: Overdraft) -> Self {
        Self::with_threshold(overdraft, None)
    }

    fn with_threshold(overdraft: Overdraft, threshold: Option<&str>) -> Self {
        let new = NewAccount {
            tenant_id: TenantId(Uuid::nil()),
            external_id: "customer-1".into(),
            unit: Unit::currency("USD", None).unwrap(),
            overdraft,
            low_balance_threshold: threshold.map(d),
            metadata: BTreeMap::new(),
        };
        let mut wallet = Wallet::open(new, &ctx(t0()));
        let changes = wallet.take_changes();
        Self { wallet, ledger: changes.entries, events: changes.events }
    }

    fn commit(&mut self) {
        let changes = self.wallet.take_changes();
        self.ledger.extend(changes.entries);
        self.events.extend(changes.events);
    }

    /// Runs an operation as the store would: keep its changes if it succeeds,
    /// go back to the state before it if it fails.
    fn run<T>(&mut self, op: impl FnOnce(&mut Wallet) -> DomainResult<T>) -> DomainResult<T> {
        let before = self.wallet.clone();
        match op(&mut self.wallet) {
            Ok(value) => {
                self.commit();
                Ok(value)
            }
            Err(error) => {
                self.wallet = before;
                Err(error)
            }
        }
    }

    fn grant(&mut self, amount: &str, kind: GrantKind) -> GrantId {
        self.grant_with(amount, kind, |_| {})
    }

    fn grant_with(&mut self, amount: &str, kind: GrantKind, edit: impl FnOnce(&mut NewGrant)) -> GrantId {
        let mut new = NewGrant {
            amount: d(amount),
            kind,
            priority: None,
            effective_at: None,
            expires_at: None,
            meter_codes: Vec::new(),
            source: GrantSource::Admin,
            source_reference: String::new(),
            metadata: BTreeMap::new(),
        };
        edit(&mut new);
        self.run(|wallet| wallet.grant(&ctx(t0()), new)).unwrap()
    }

    fn debit_at(&mut self, amount: &str, meter: Option<&str>, now: DateTime<Utc>) -> DomainResult<Vec<Entry>> {
        let before = self.ledger.len();
        self.run(|wallet| wallet.debit(&ctx(now), d(amount), meter))?;
        Ok(self.ledger[before..].to_vec())
    }

    fn debit(&mut self, amount: &str) -> DomainResult<Vec<Entry>> {
        self.debit_at(amount, None, t0())
    }

    fn available(&self) -> Decimal {
        self.wallet.balance(t0()).available
    }

    fn remaining(&self, id: GrantId) -> Decimal {
        self.wallet.grant_by_id(id).unwrap().remaining
    }

    /// The invariants DESIGN.md names, checked against the full ledger.
    fn check_invariants(&self) {
        let money: Decimal =
            self.ledger.iter().filter(|entry| entry.kind.moves_money()).map(|entry| entry.amount).sum();
        assert_eq!(money, self.wallet.ledger_balance(), "ledger balance = sum of money-moving entries");
        let mut running = Decimal::ZERO;
        for entry in self.ledger.iter().filter(|entry| entry.kind.moves_money()) {
            running += entry.amount;
            assert_eq!(entry.balance_after, running, "every balance_after is the running sum");
        }
        for grant in &self.wallet.grants {
            let entries: Decimal = self
                .ledger
                .iter()
                .filter(|entry| entry.grant_id == Some(grant.id) && entry.kind.moves_money())
                .map(|entry| entry.amount)
                .sum();
            assert_eq!(grant.remaining, entries, "grant remaining = sum of its entries");
            assert!(grant.remaining >= Decimal::ZERO);
        }
        let sequences: Vec<u64> = self.ledger.iter().map(|entry| entry.sequence).collect();
        let expected: Vec<u64> = (1..=self.ledger.len() as u64).collect();
        assert_eq!(sequences, expected, "sequences run from 1 without gaps");
        let floor = match self.wallet.account.overdraft {
            Overdraft::None => Some(Decimal::ZERO),
            Overdraft::CreditLimit(limit) => Some(-limit),
            Overdraft::Unlimited => None,
        };
        if let Some(floor) = floor {
            assert!(self.wallet.ledger_balance() >= floor, "balance never below the floor");
        }
        let held: Decimal =
            self.wallet.holds.iter().filter(|hold| hold.status == HoldStatus::Active).map(|hold| hold.amount).sum();
        assert_eq!(self.wallet.account.held, held, "held = sum of active holds");
    }
}

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

#[test]
fn a_negative_adjustment_is_announced_with_its_sign() {
    let mut books = Books::new(Overdraft::None);
    books.grant("5", GrantKind::Paid);
    books.run(|wallet| wallet.adjust(&ctx(t0()), d("-2"))).unwrap();
    let adjusted = books.events.iter().rev().find(|event| event.event_type == EventType::Adjusted).unwrap();
    assert_eq!(adjusted.amount, Some(d("-2")));
}

// ---- property test --------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Grant { cents: i64, kind: u8, expires_in_s: Option<i64>, meter: bool },
    Debit { cents: i64, meter: bool },
    Reserve { cents: i64, ttl_s: i64 },
    Capture { pick: usize, cents: i64 },
    Release { pick: usize },
    Refund { pick: usize, cents: i64 },
    Void { pick: usize },
    Advance { seconds: i64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1..5_000i64, 0..3u8, proptest::option::of(1..600i64), any::<bool>())
            .prop_map(|(cents, kind, expires_in_s, meter)| Step::Grant { cents, kind, expires_in_s, meter }),
        (1..3_000i64, any::<bool>()).prop_map(|(cents, meter)| Step::Debit { cents, meter }),
        (1..3_000i64, 1..300i64).prop_map(|(cents, ttl_s)| Step::Reserve { cents, ttl_s }),
        (any::<usize>(), 1..3_000i64).prop_map(|(pick, cents)| Step::Capture { pick, cents }),
        any::<usize>().prop_map(|pick| Step::Release { pick }),
        (any::<usize>(), 1..3_000i64).prop_map(|(pick, cents)| Step::Refund { pick, cents }),
        any::<usize>().prop_map(|pick| Step::Void { pick }),
        (1..400i64).prop_map(|seconds| Step::Advance { seconds }),
    ]
}

fn run_steps(overdraft: Overdraft, steps: Vec<Step>) {
    let mut books = Books::new(overdraft);
    let mut now = t0();
    let cents = |value: i64| Decimal::new(value, 2);
    for step in steps {
        let context = ctx(now);
        let before = books.wallet.clone();
        let result: DomainResult<()> = match step.clone() {
            Step::Grant { cents: amount, kind, expires_in_s, meter } => {
                let new = NewGrant {
                    amount: cents(amount),
                    kind: [GrantKind::Paid, GrantKind::Promotional, GrantKind::Courtesy][usize::from(kind)],
                    priority: None,
                    effective_at: None,
                    expires_at: expires_in_s.map(|s| now + Duration::seconds(s)),
                    meter_codes: if meter { vec!["m".into()] } else { Vec::new() },
                    source: GrantSource::Admin,
                    source_reference: String::new(),
                    metadata: BTreeMap::new(),
                };
                books.wallet.grant(&context, new).map(|_| ())
            }
            Step::Debit { cents: amount, meter } => {
                books.wallet.debit(&context, cents(amount), if meter { Some("m") } else { None })
            }
            Step::Reserve { cents: amount, ttl_s } => {
                books.wallet.reserve(&context, cents(amount), Duration::seconds(ttl_s), None).map(|_| ())
            }
            Step::Capture { pick, cents: amount } if !books.wallet.holds.is_empty() => {
                let hold = books.wallet.holds[pick % books.wallet.holds.len()].id;
                books.wallet.capture(&context, hold, cents(amount))
            }
            Step::Release { pick } if !books.wallet.holds.is_empty() => {
                let hold = books.wallet.holds[pick % books.wallet.holds.len()].id;
                books.wallet.release(&context, hold)
            }
            Step::Refund { pick, cents: amount } => {
                let debits: Vec<&Entry> = books
                    .ledger
                    .iter()
                    .filter(|entry| matches!(entry.kind, EntryKind::Debit | EntryKind::Capture))
                    .collect();
                if debits.is_empty() {
                    Ok(())
                } else {
                    let target = debits[pick % debits.len()].operation_id;
                    let original: Vec<Entry> =
                        books.ledger.iter().filter(|entry| entry.operation_id == target).cloned().collect();
                    let prior: Vec<Entry> =
                        books.ledger.iter().filter(|entry| entry.kind == EntryKind::Refund).cloned().collect();
                    books.wallet.refund(&context, &original, &prior, cents(amount))
                }
            }
            Step::Void { pick } if !books.wallet.grants.is_empty() => {
                let grant = books.wallet.grants[pick % books.wallet.grants.len()].id;
                books.wallet.void_grant(&context, grant)
            }
            Step::Advance { seconds } => {
                now += Duration::seconds(seconds);
                books.wallet.expire(&ctx(now));
                Ok(())
            }
            Step::Capture { .. } | Step::Release { .. } | Step::Void { .. } => Ok(()),
        };
        match result {
            Ok(()) => {
                let is_draw = matches!(step, Step::Debit { .. } | Step::Reserve { .. });
                books.commit();
                if is_draw {
                    let floor = match overdraft {
                        Overdraft::None => Some(Decimal::ZERO),
                        Overdraft::CreditLimit(limit) => Some(-limit),
                        Overdraft::Unlimited => None,
                    };
                    if let Some(floor) = floor {
                        assert!(
                            books.wallet.balance(now).available >= floor,
                            "a draw never takes available below the floor"
                        );
                    }
                }
            }
            Err(DomainError::Inconsistent(why)) => panic!("inconsistent: {why}"),
            Err(_) => {
                books.wallet = before;
            }
        }
        books.check_invariants();
        // After a sweep at this instant, the client's balance is the ledger's.
        let mut swept = books.wallet.clone();
        swept.expire(&ctx(now));
        let view = swept.balance(now);
        let money: Decimal = books
            .ledger
            .iter()
            .chain(swept.changes().entries.iter())
            .filter(|entry| entry.kind.moves_money())
            .map(|entry| entry.amount)
            .sum();
        assert_eq!(view.available + view.held, money, "available + held = sum of money-moving entries");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_operations_keep_the_books_balanced_without_overdraft(steps in proptest::collection::vec(step(), 1..60)) {
        run_steps(Overdraft::None, steps);
    }

    #[test]
    fn random_operations_keep_the_books_balanced_with_a_credit_limit(steps in proptest::collection::vec(step(), 1..60)) {
        run_steps(Overdraft::CreditLimit(Decimal::new(2_000, 2)), steps);
    }

    #[test]
    fn random_operations_keep_the_books_balanced_when_unlimited(steps in proptest::collection::vec(step(), 1..60)) {
        run_steps(Overdraft::Unlimited, steps);
    }
}

// ---- spend control ----------------------------------------------------------

fn events_of(books: &Books, event_type: EventType) -> Vec<&Event> {
    books.events.iter().filter(|event| event.event_type == event_type).collect()
}

fn set(books: &mut Books, update: AccountUpdate) {
    books.run(|wallet| wallet.update(&ctx(t0()), update)).unwrap();
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

fn transfer(
    from: &mut Books,
    to: &mut Books,
    amount: &str,
    allow_promotional: bool,
    now: DateTime<Utc>,
) -> DomainResult<()> {
    let (from_before, to_before) = (from.wallet.clone(), to.wallet.clone());
    match from.wallet.transfer_to(&mut to.wallet, &ctx(now), d(amount), allow_promotional) {
        Ok(()) => {
            from.commit();
            to.commit();
            Ok(())
        }
        Err(error) => {
            (from.wallet, to.wallet) = (from_before, to_before);
            Err(error)
        }
    }
}

#[test]
fn a_transfer_moves_credits_with_their_expiry_and_repays_the_receivers_overdraft() {
    let mut from = Books::new(Overdraft::None);
    let mut to = Books::new(Overdraft::Unlimited);
    let expiry = t0() + Duration::days(30);
    from.grant_with("40", GrantKind::Paid, |new| new.expires_at = Some(expiry));
    from.grant("100", GrantKind::Paid);
    to.debit("15").unwrap();
    transfer(&mut from, &mut to, "50", false, t0()).unwrap();
    assert_eq!(from.available(), d("90"));
    assert_eq!(to.available(), d("35"));
    let out: Vec<Decimal> =
        from.ledger.iter().filter(|entry| entry.kind == EntryKind::TransferOut).map(|entry| entry.amount).collect();
    assert_eq!(out, vec![d("-40"), d("-10")]);
    let received: Vec<(Decimal, Option<DateTime<Utc>>, GrantSource)> =
        to.wallet.grants.iter().map(|grant| (grant.original, grant.expires_at, grant.source)).collect();
    assert_eq!(received, vec![(d("40"), Some(expiry), GrantSource::Transfer), (d("10"), None, GrantSource::Transfer)]);
    let transfer_in: Decimal =
        to.ledger.iter().filter(|entry| entry.kind == EntryKind::TransferIn).map(|entry| entry.amount).sum();
    assert_eq!(transfer_in, d("50"));
    assert_eq!(to.wallet.account.overdraft_used, Decimal::ZERO);
    assert_eq!(events_of(&from, EventType::TransferredOut)[0].counterparty, Some(to.wallet.account.id));
    assert_eq!(events_of(&to, EventType::TransferredIn)[0].counterparty, Some(from.wallet.account.id));
    from.check_invariants();
    to.check_invariants();
}

#[test]
fn promotional_credits_stay_unless_the_tenant_allows_them_to_move() {
    let mut from = Books::new(Overdraft::None);
    let mut to = Books::new(Overdraft::None);
    from.grant("30", GrantKind::Promotional);
    from.grant("20", GrantKind::Paid);
    assert_eq!(transfer(&mut from, &mut to, "21", false, t0()), Err(DomainError::InsufficientFunds));
    assert_eq!((from.available(), to.available()), (d("50"), d("0")));
    transfer(&mut from, &mut to, "20", false, t0()).unwrap();
    assert_eq!(to.wallet.grants[0].kind, GrantKind::Paid);
    transfer(&mut from, &mut to, "30", true, t0()).unwrap();
    assert_eq!(to.wallet.balance(t0()).promotional, d("30"));
    assert_eq!(from.available(), d("0"));
}

#[test]
fn transfers_are_bounded_per_transfer_and_per_day_and_never_draw_on_holds_or_overdraft() {
    let mut from = Books::new(Overdraft::Unlimited);
    let mut to = Books::new(Overdraft::None);
    from.grant("1000", GrantKind::Paid);
    set(
        &mut from,
        AccountUpdate {
            transfer_max: Some(Some(d("100"))),
            transfer_daily_limit: Some(Some(d("150"))),
            ..AccountUpdate::default()
        },
    );
    assert_eq!(
        transfer(&mut from, &mut to, "100.01", false, t0()),
        Err(DomainError::TransferLimitExceeded("per-transfer"))
    );
    transfer(&mut from, &mut to, "100", false, t0()).unwrap();
    assert_eq!(transfer(&mut from, &mut to, "51", false, t0()), Err(DomainError::TransferLimitExceeded("daily")));
    transfer(&mut from, &mut to, "50", false, t0()).unwrap();
    let tomorrow = t0() + Duration::days(1);
    transfer(&mut from, &mut to, "100", false, tomorrow).unwrap();
    assert_eq!(to.wallet.balance(tomorrow).available, d("250"));
    // What holds keep cannot leave, and the overdraft is never drawn on.
    from.run(|wallet| wallet.reserve(&ctx(tomorrow), d("700"), Duration::hours(1), None)).unwrap();
    set(&mut from, AccountUpdate { transfer_daily_limit: Some(None), ..AccountUpdate::default() });
    assert_eq!(transfer(&mut from, &mut to, "51", false, tomorrow), Err(DomainError::InsufficientFunds));
    transfer(&mut from, &mut to, "50", false, tomorrow).unwrap();
    assert_eq!(from.wallet.balance(tomorrow).available, d("0"));
    from.check_invariants();
    to.check_invariants();
}

#[test]
fn a_transfer_needs_the_same_unit_an_active_sender_and_an_open_receiver() {
    let mut from = Books::new(Overdraft::None);
    let mut to = Books::new(Overdraft::None);
    from.grant("10", GrantKind::Paid);
    to.wallet.account.unit = Unit::currency("EUR", None).unwrap();
    assert_eq!(transfer(&mut from, &mut to, "1", false, t0()), Err(DomainError::UnitMismatch));
    to.wallet.account.unit = from.wallet.account.unit.clone();
    set(&mut to, AccountUpdate { status: Some(AccountStatus::Closed), ..AccountUpdate::default() });
    assert_eq!(transfer(&mut from, &mut to, "1", false, t0()), Err(DomainError::AccountClosed));
    let mut other = Books::new(Overdraft::None);
    set(&mut from, AccountUpdate { status: Some(AccountStatus::Suspended), ..AccountUpdate::default() });
    assert_eq!(transfer(&mut from, &mut other, "1", false, t0()), Err(DomainError::AccountSuspended));
    assert_eq!(from.available(), d("10"));
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

// ---- usage drawn in aggregate -------------------------------------------------

/// The same wallet set up twice: credits restricted to "gpu", promotional and
/// paid credits, and the overdraft the case asks for.
fn usage_books(overdraft: Overdraft, cap: Option<&str>) -> Books {
    let mut books = Books::new(overdraft);
    books.grant_with("3", GrantKind::Promotional, |new| new.meter_codes = vec!["gpu".into()]);
    books.grant("2", GrantKind::Promotional);
    books.grant("4", GrantKind::Paid);
    if let Some(cap) = cap {
        set(&mut books, AccountUpdate { monthly_cap: Some(Some(d(cap))), ..AccountUpdate::default() });
    }
    books
}

fn cents_list(amounts: &[i64]) -> Vec<Decimal> {
    amounts.iter().map(|cents| Decimal::new(*cents, 2)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Drawing a line of amounts at once answers each amount as debiting it
    /// alone would, and leaves every grant, the overdraft and the month's
    /// spend where those debits leave them, with one entry per grant.
    #[test]
    fn a_usage_draw_answers_and_draws_what_one_debit_per_amount_would(
        amounts in proptest::collection::vec(1_i64..400, 1..25),
        overdraft in prop_oneof![Just(Overdraft::None), Just(Overdraft::CreditLimit(Decimal::new(500, 2))), Just(Overdraft::Unlimited)],
        cap in prop_oneof![Just(None), Just(Some("12"))],
        meter in prop_oneof![Just("gpu"), Just("cpu")],
    ) {
        let amounts = cents_list(&amounts);
        let mut one_by_one = usage_books(overdraft, cap);
        let answers: Vec<Option<DomainError>> = amounts
            .iter()
            .map(|amount| one_by_one.run(|wallet| wallet.debit(&ctx(t0()), *amount, Some(meter))).err())
            .collect();
        let mut at_once = usage_books(overdraft, cap);
        let before = at_once.ledger.len();
        let drawn = at_once.run(|wallet| wallet.draw_usage(&ctx(t0()), meter, &amounts)).unwrap();
        prop_assert_eq!(&drawn.outcomes, &answers);
        let charged: Decimal = amounts.iter().zip(&answers).filter(|(_, answer)| answer.is_none()).map(|(amount, _)| *amount).sum();
        prop_assert_eq!(drawn.charged, charged);
        prop_assert_eq!(at_once.available(), one_by_one.available());
        prop_assert_eq!(at_once.wallet.account.overdraft_used, one_by_one.wallet.account.overdraft_used);
        prop_assert_eq!(at_once.wallet.account.spend.month_spend, one_by_one.wallet.account.spend.month_spend);
        for grant in &one_by_one.wallet.grants {
            let other = at_once.wallet.grants.iter().find(|other| other.created_sequence == grant.created_sequence).unwrap();
            prop_assert_eq!(other.remaining, grant.remaining);
        }
        let debits: Vec<&Entry> = at_once.ledger[before..].iter().filter(|entry| entry.kind == EntryKind::Debit).collect();
        let grants: std::collections::BTreeSet<Option<GrantId>> = debits.iter().map(|entry| entry.grant_id).collect();
        prop_assert_eq!(grants.len(), debits.len(), "one entry per grant touched");
        at_once.check_invariants();
    }
}

#[test]
fn a_usage_draw_of_a_suspended_account_refuses_the_whole_line() {
    let mut books = usage_books(Overdraft::None, None);
    set(&mut books, AccountUpdate { status: Some(AccountStatus::Suspended), ..AccountUpdate::default() });
    let refused = books.run(|wallet| wallet.draw_usage(&ctx(t0()), "cpu", &[d("1")]));
    assert_eq!(refused, Err(DomainError::AccountSuspended));
}
