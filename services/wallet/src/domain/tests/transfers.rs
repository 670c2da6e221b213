//! Transfers between two wallets: what moves, promotional credits, the
//! limits, and who may send and receive.

use chrono::Duration;

use super::*;

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
