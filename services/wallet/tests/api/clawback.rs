//! A bonus grant clawed back in part (VoidGrant with an amount): at most
//! what is left is taken, once however often the call is sent, with a VOID
//! entry in the ledger and its chain; bad amounts change nothing.

use chrono::{Duration, Utc};
use reservoir_common::time::to_timestamp;
use reservoir_proto::wallet as pb;

use crate::helpers::*;

fn claw(grant: &pb::Grant, amount: &str, idempotency_key: &str) -> pb::VoidGrantRequest {
    pb::VoidGrantRequest {
        grant_id: grant.id.clone(),
        idempotency_key: idempotency_key.into(),
        reason: "purchase refunded".into(),
        amount: amount.into(),
    }
}

async fn a_clawback_takes_at_most_what_is_left_of_the_grant(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let paid = grant(&app.client, &account, "100", pb::GrantKind::Paid).await.grant.unwrap();
    let bonus = pb::GrantCreditsRequest {
        source: pb::GrantSource::Bonus.into(),
        source_reference: paid.id.clone(),
        priority: Some(1),
        ..grant_request(&account, "10", pb::GrantKind::Promotional)
    };
    let bonus = app.client.clone().grant_credits(bonus).await.unwrap().into_inner().grant.unwrap();
    assert_eq!((bonus.source, bonus.source_reference.as_str()), (pb::GrantSource::Bonus.into(), paid.id.as_str()));
    // Priority 1 is drawn first: 4 of the bonus is spent.
    debit(&app.client, &account, "4").await.unwrap();

    let first = claw(&bonus, "3", &key());
    let answer = app.client.clone().void_grant(first.clone()).await.unwrap().into_inner();
    assert_eq!(answer.voided, "3.00");
    let entries: Vec<(i32, &str)> = answer.entries.iter().map(|entry| (entry.kind, entry.amount.as_str())).collect();
    assert_eq!(entries, vec![(pb::EntryKind::Void.into(), "-3.00")]);
    let grant = answer.grant.clone().unwrap();
    assert_eq!((grant.status, grant.remaining_amount.as_str()), (pb::GrantStatus::Active.into(), "3.00"));
    assert_eq!(available(&app.client, &account).await, d("103"));
    // Sent again: the same answer, nothing taken twice.
    assert_eq!(app.client.clone().void_grant(first).await.unwrap().into_inner(), answer);
    assert_eq!(available(&app.client, &account).await, d("103"));

    // More than is left: what is left is taken, and the answer says how much.
    let rest = app.client.clone().void_grant(claw(&bonus, "5", &key())).await.unwrap().into_inner();
    assert_eq!(rest.voided, "3.00");
    assert_eq!(rest.grant.unwrap().remaining_amount, "0.00");
    // Nothing left: nothing taken, no entry, no error.
    let nothing = app.client.clone().void_grant(claw(&bonus, "1", &key())).await.unwrap().into_inner();
    assert_eq!((nothing.voided.as_str(), nothing.entries.len()), ("0.00", 0));
    assert_eq!(available(&app.client, &account).await, d("100"));
    assert_books_balance(&app.client, &account).await;
    let verify = pb::VerifyLedgerRequest { account_id: account.id.clone(), ..Default::default() };
    assert!(app.client.clone().verify_ledger(verify).await.unwrap().into_inner().intact);
    let kinds: Vec<(i32, String)> =
        ledger(&app.client, &account).await.into_iter().map(|entry| (entry.kind, entry.amount)).collect();
    assert_eq!(
        kinds,
        vec![
            (pb::EntryKind::Grant.into(), "100.00".to_owned()),
            (pb::EntryKind::Grant.into(), "10.00".to_owned()),
            (pb::EntryKind::Debit.into(), "-4.00".to_owned()),
            (pb::EntryKind::Void.into(), "-3.00".to_owned()),
            (pb::EntryKind::Void.into(), "-3.00".to_owned()),
        ]
    );
}

async fn an_expired_or_voided_grant_gives_nothing_back(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let soon = pb::GrantCreditsRequest {
        expires_at: Some(to_timestamp(Utc::now() + Duration::milliseconds(300))),
        ..grant_request(&account, "10", pb::GrantKind::Promotional)
    };
    let soon = app.client.clone().grant_credits(soon).await.unwrap().into_inner().grant.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let expired = app.client.clone().void_grant(claw(&soon, "5", &key())).await.unwrap().into_inner();
    assert_eq!(expired.voided, "0.00");
    assert!(expired.entries.is_empty(), "the expiry is written off, nothing is clawed back");
    let other = grant(&app.client, &account, "10", pb::GrantKind::Promotional).await.grant.unwrap();
    let whole = pb::VoidGrantRequest { amount: String::new(), ..claw(&other, "", &key()) };
    let voided = app.client.clone().void_grant(whole).await.unwrap().into_inner();
    assert_eq!((voided.voided.as_str(), voided.grant.unwrap().status), ("10.00", pb::GrantStatus::Voided.into()));
    let after = app.client.clone().void_grant(claw(&other, "5", &key())).await.unwrap().into_inner();
    assert_eq!(after.voided, "0.00");
    assert_eq!(available(&app.client, &account).await, d("0"));
    assert_books_balance(&app.client, &account).await;
}

async fn a_bad_clawback_is_refused_naming_its_field_and_changes_nothing(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let bonus = grant(&app.client, &account, "10", pb::GrantKind::Promotional).await.grant.unwrap();
    let mut client = app.client.clone();
    for amount in ["1.234", "-1", "0", "abc", "1e3"] {
        assert_invalid(client.void_grant(claw(&bonus, amount, &key())).await, "amount");
    }
    assert_eq!(available(&app.client, &account).await, d("10"), "nothing taken");
    assert_eq!(ledger(&app.client, &account).await.len(), 1);
}

crate::on_both_backends!(
    a_clawback_takes_at_most_what_is_left_of_the_grant,
    an_expired_or_voided_grant_gives_nothing_back,
    a_bad_clawback_is_refused_naming_its_field_and_changes_nothing,
);
