//! A new period's credits granted with the previous period's rolled over:
//! what moves and what expires, once however often it is sent, in the
//! ledger, its chain and the refill history; bad requests change nothing.

use chrono::{Duration, Utc};
use reservoir_common::time::to_timestamp;
use reservoir_proto::wallet as pb;

use crate::helpers::*;

fn period(account: &pb::Account, idempotency_key: &str) -> pb::GrantCreditsRequest {
    pb::GrantCreditsRequest {
        expires_at: Some(to_timestamp(Utc::now() + Duration::days(30))),
        idempotency_key: idempotency_key.into(),
        ..grant_request(account, "10", pb::GrantKind::Promotional)
    }
}

async fn the_previous_period_is_carried_up_to_its_cap_once(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let first = app.client.clone().grant_credits(period(&account, &key())).await.unwrap().into_inner();
    let first = first.grant.unwrap();
    debit(&app.client, &account, "3").await.unwrap();
    let carried_until = Utc::now() + Duration::days(60);
    let second = pb::GrantCreditsRequest {
        rollover: Some(pb::Rollover {
            from_grant_id: first.id.clone(),
            max_amount: "5".into(),
            expires_at: Some(to_timestamp(carried_until)),
            max_percent: 0,
        }),
        ..period(&account, &key())
    };
    let answer = app.client.clone().grant_credits(second.clone()).await.unwrap().into_inner();
    let moves: Vec<(i32, &str)> = answer.entries.iter().map(|entry| (entry.kind, entry.amount.as_str())).collect();
    assert_eq!(
        moves,
        vec![
            (pb::EntryKind::Rollover.into(), "-5.00"),
            (pb::EntryKind::Rollover.into(), "5.00"),
            (pb::EntryKind::Expiry.into(), "-2.00"),
            (pb::EntryKind::Grant.into(), "10.00"),
        ]
    );
    let rolled = answer.rolled_over.clone().expect("the grant carried into");
    assert_eq!((rolled.remaining_amount.as_str(), rolled.source), ("5.00", pb::GrantSource::Rollover.into()));
    assert_eq!(rolled.expires_at.map(|at| at.seconds), Some(carried_until.timestamp()));
    assert_eq!(answer.grant.as_ref().unwrap().remaining_amount, "10.00");
    assert_eq!(available(&app.client, &account).await, d("15"));
    // Sent again: the same answer, nothing carried twice.
    let again = app.client.clone().grant_credits(second).await.unwrap().into_inner();
    assert_eq!(again, answer);
    assert_eq!(available(&app.client, &account).await, d("15"));
    assert_books_balance(&app.client, &account).await;
    let verify = pb::VerifyLedgerRequest { account_id: account.id.clone(), ..Default::default() };
    assert!(app.client.clone().verify_ledger(verify).await.unwrap().into_inner().intact);
    // The statement lists the turn's entries, and still closes at its opening plus its entries.
    let rows = crate::reports::statement(&app.client, &account, Utc::now() - Duration::hours(1), Utc::now()).await;
    let kinds: Vec<&str> = crate::reports::section(&rows, "ENTRY").iter().map(|row| row["kind"].as_str()).collect();
    assert_eq!(kinds, vec!["GRANT", "DEBIT", "ROLLOVER", "ROLLOVER", "EXPIRY", "GRANT"]);
    let closing = d(&crate::reports::section(&rows, "CLOSING")[0]["balance_after"]);
    assert_eq!(closing, d("15"));
    // The refill history shows the credits carried in.
    let request = pb::ExportRefillHistoryRequest { account_id: account.id.clone(), ..Default::default() };
    let chunks = app.client.clone().export_refill_history(request).await.unwrap().into_inner();
    let refills: Vec<(String, String)> = crate::reports::rows(chunks, |chunk| chunk.csv)
        .await
        .into_iter()
        .map(|row| (row["type"].clone(), row["amount"].clone()))
        .collect();
    assert_eq!(
        refills,
        vec![
            ("GRANT".to_owned(), "10.00".to_owned()),
            ("ROLLOVER".to_owned(), "5.00".to_owned()),
            ("GRANT".to_owned(), "10.00".to_owned())
        ]
    );
}

async fn a_bad_rollover_is_refused_naming_its_field_and_changes_nothing(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let first = app.client.clone().grant_credits(period(&account, &key())).await.unwrap().into_inner();
    let first = first.grant.unwrap();
    let with = |from: &str, max: &str, expires_in: Option<Duration>| pb::GrantCreditsRequest {
        rollover: Some(pb::Rollover {
            from_grant_id: from.into(),
            max_amount: max.into(),
            expires_at: expires_in.map(|span| to_timestamp(Utc::now() + span)),
            max_percent: 0,
        }),
        ..period(&account, &key())
    };
    let mut client = app.client.clone();
    assert_invalid(client.grant_credits(with("not-an-id", "", None)).await, "rollover.from_grant_id");
    assert_invalid(client.grant_credits(with(&first.id, "1.234", None)).await, "rollover.max_amount");
    assert_invalid(client.grant_credits(with(&first.id, "-1", None)).await, "rollover.max_amount");
    let both = pb::GrantCreditsRequest {
        rollover: Some(pb::Rollover {
            from_grant_id: first.id.clone(),
            max_amount: "1".into(),
            max_percent: 50,
            expires_at: None,
        }),
        ..period(&account, &key())
    };
    assert_invalid(client.grant_credits(both).await, "rollover.max_percent");
    let over = pb::GrantCreditsRequest {
        rollover: Some(pb::Rollover { from_grant_id: first.id.clone(), max_percent: 101, ..Default::default() }),
        ..period(&account, &key())
    };
    assert_invalid(client.grant_credits(over).await, "rollover.max_percent");
    let forged = pb::GrantCreditsRequest { source: pb::GrantSource::Rollover.into(), ..period(&account, &key()) };
    assert_invalid(client.grant_credits(forged).await, "source");
    assert_eq!(available(&app.client, &account).await, d("10"), "nothing granted, nothing carried");
    assert_eq!(ledger(&app.client, &account).await.len(), 1);
}

crate::on_both_backends!(
    the_previous_period_is_carried_up_to_its_cap_once,
    a_bad_rollover_is_refused_naming_its_field_and_changes_nothing,
);
