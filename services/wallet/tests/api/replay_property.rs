//! Random sequences of calls against the running service, each replayed with
//! its key right after: the replay returns the same answer and changes nothing,
//! and the books balance after every step.

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use reservoir_proto::wallet as pb;

use crate::helpers::*;

#[derive(Debug, Clone)]
enum Step {
    Grant(i64, u8),
    Debit(i64),
    Reserve(i64),
    Capture(usize, i64),
    Release(usize),
    Refund(usize, i64),
    Void(usize),
    ClawBack(usize, i64),
    Adjust(i64),
}

fn step() -> impl Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        (1..3_000i64, 0..3u8).prop_map(|(cents, kind)| Step::Grant(cents, kind)),
        (1..2_000i64).prop_map(Step::Debit),
        (1..2_000i64).prop_map(Step::Reserve),
        (any::<usize>(), 1..2_000i64).prop_map(|(pick, cents)| Step::Capture(pick, cents)),
        any::<usize>().prop_map(Step::Release),
        (any::<usize>(), 1..2_000i64).prop_map(|(pick, cents)| Step::Refund(pick, cents)),
        any::<usize>().prop_map(Step::Void),
        (any::<usize>(), 1..2_000i64).prop_map(|(pick, cents)| Step::ClawBack(pick, cents)),
        (-1_000..1_000i64).prop_filter("non-zero", |cents| *cents != 0).prop_map(Step::Adjust),
    ]
}

fn cents(value: i64) -> String {
    rust_decimal::Decimal::new(value, 2).to_string()
}

/// Sends a call twice with the same key; both answers must be equal.
macro_rules! twice {
    ($client:expr, $method:ident, $request:expr) => {{
        let request = $request;
        let first = $client.clone().$method(request.clone()).await.map(|response| response.into_inner());
        if let Ok(first) = &first {
            let again = $client.clone().$method(request).await.expect("a replay succeeds").into_inner();
            assert_eq!(&again, first, "a replay returns the original result");
        }
        first
    }};
}

async fn random_calls_replayed_with_their_keys_change_nothing(app: &TestApp) {
    let mut runner = TestRunner::deterministic();
    let steps = proptest::collection::vec(step(), 10..30);
    for _ in 0..4 {
        let sequence = steps.new_tree(&mut runner).unwrap().current();
        let account = open_account(&app.client, pb::OverdraftPolicy::CreditLimit, "10").await;
        let client = app.client.clone();
        let mut holds: Vec<String> = Vec::new();
        let mut grants: Vec<String> = Vec::new();
        let mut debits: Vec<String> = Vec::new();
        for step in sequence {
            match step {
                Step::Grant(amount, kind) => {
                    let kind =
                        [pb::GrantKind::Paid, pb::GrantKind::Promotional, pb::GrantKind::Courtesy][usize::from(kind)];
                    if let Ok(response) = twice!(client, grant_credits, grant_request(&account, &cents(amount), kind)) {
                        grants.push(response.grant.unwrap().id);
                    }
                }
                Step::Debit(amount) => {
                    if let Ok(response) = twice!(client, debit, debit_request(&account, &cents(amount))) {
                        debits.push(response.entries[0].id.clone());
                    }
                }
                Step::Reserve(amount) => {
                    let request = pb::ReserveRequest {
                        account_id: account.id.clone(),
                        amount: cents(amount),
                        ttl_seconds: 3_600,
                        idempotency_key: key(),
                        ..Default::default()
                    };
                    if let Ok(response) = twice!(client, reserve, request) {
                        holds.push(response.hold.unwrap().id);
                    }
                }
                Step::Capture(pick, amount) if !holds.is_empty() => {
                    let request = pb::CaptureHoldRequest {
                        hold_id: holds[pick % holds.len()].clone(),
                        amount: cents(amount),
                        idempotency_key: key(),
                        ..Default::default()
                    };
                    let captured = twice!(client, capture_hold, request);
                    if let Some(entry) = captured
                        .as_ref()
                        .ok()
                        .and_then(|response| response.entries.first())
                        .filter(|entry| entry.kind == i32::from(pb::EntryKind::Capture))
                    {
                        debits.push(entry.id.clone());
                    }
                }
                Step::Release(pick) if !holds.is_empty() => {
                    let request =
                        pb::ReleaseHoldRequest { hold_id: holds[pick % holds.len()].clone(), idempotency_key: key() };
                    let _ = twice!(client, release_hold, request);
                }
                Step::Refund(pick, amount) if !debits.is_empty() => {
                    let request = pb::RefundRequest {
                        entry_id: debits[pick % debits.len()].clone(),
                        amount: cents(amount),
                        idempotency_key: key(),
                        reason: String::new(),
                    };
                    let _ = twice!(client, refund, request);
                }
                Step::Void(pick) if !grants.is_empty() => {
                    let request = pb::VoidGrantRequest {
                        grant_id: grants[pick % grants.len()].clone(),
                        idempotency_key: key(),
                        ..Default::default()
                    };
                    let _ = twice!(client, void_grant, request);
                }
                Step::ClawBack(pick, amount) if !grants.is_empty() => {
                    let request = pb::VoidGrantRequest {
                        grant_id: grants[pick % grants.len()].clone(),
                        idempotency_key: key(),
                        amount: cents(amount),
                        ..Default::default()
                    };
                    let _ = twice!(client, void_grant, request);
                }
                Step::Adjust(amount) => {
                    let request = pb::AdjustRequest {
                        account_id: account.id.clone(),
                        amount: cents(amount),
                        reason: "property".into(),
                        idempotency_key: key(),
                        ..Default::default()
                    };
                    let _ = twice!(client, adjust, request);
                }
                Step::Capture(..) | Step::Release(_) | Step::Refund(..) | Step::Void(_) | Step::ClawBack(..) => {}
            }
            assert_books_balance(&app.client, &account).await;
        }
    }
}

crate::on_both_backends!(random_calls_replayed_with_their_keys_change_nothing);
