//! Random operations, with the books checked after every step.

use chrono::Duration;
use proptest::prelude::*;

use super::*;

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
