//! Usage drawn in aggregate, against one debit per amount.

use proptest::prelude::*;

use super::*;

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
