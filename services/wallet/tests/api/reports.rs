use std::collections::HashMap;
use std::time::Duration;

use reservoir_proto::wallet as pb;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::helpers::*;

fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    reservoir_common::time::to_timestamp(at)
}

/// The CSV of a streamed export as rows of named fields.
pub(crate) async fn rows<T>(chunks: tonic::Streaming<T>, csv_of: impl Fn(T) -> String) -> Vec<HashMap<String, String>> {
    let text: String = chunks.map(|chunk| csv_of(chunk.unwrap())).collect::<Vec<_>>().await.concat();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|record| headers.iter().zip(record.unwrap().iter()).map(|(h, v)| (h.to_owned(), v.to_owned())).collect())
        .collect()
}

pub(crate) async fn statement(
    client: &Client,
    account: &pb::Account,
    start: chrono::DateTime<chrono::Utc>,
    end: chrono::DateTime<chrono::Utc>,
) -> Vec<HashMap<String, String>> {
    let request = pb::ExportStatementRequest {
        account_id: account.id.clone(),
        start_time: Some(timestamp(start)),
        end_time: Some(timestamp(end)),
    };
    let chunks = client.clone().export_statement(request).await.unwrap().into_inner();
    rows(chunks, |chunk| chunk.csv).await
}

pub(crate) fn section<'a>(rows: &'a [HashMap<String, String>], name: &str) -> Vec<&'a HashMap<String, String>> {
    rows.iter().filter(|row| row["section"] == name).collect()
}

async fn a_statement_closes_at_its_opening_balance_plus_its_entries(app: &TestApp) {
    let account = open_funded_account(&app.client, "50").await;
    let first_start = chrono::Utc::now() - chrono::Duration::hours(1);
    let start = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    grant(&app.client, &account, "100", pb::GrantKind::Paid).await;
    let mut promo = grant_request(&account, "40", pb::GrantKind::Promotional);
    promo.expires_at = Some(timestamp(chrono::Utc::now() + chrono::Duration::milliseconds(600)));
    app.client.clone().grant_credits(promo).await.unwrap();
    debit(&app.client, &account, "30").await.unwrap();
    // A hold moves no money and is no line of the statement.
    let hold = pb::ReserveRequest {
        account_id: account.id.clone(),
        amount: "5".into(),
        ttl_seconds: 60,
        idempotency_key: key(),
        ..Default::default()
    };
    app.client.clone().reserve(hold).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let end = chrono::Utc::now();
    debit(&app.client, &account, "1").await.unwrap();

    let rows = statement(&app.client, &account, start, end).await;
    let opening = d(&section(&rows, "OPENING")[0]["balance_after"]);
    let closing = d(&section(&rows, "CLOSING")[0]["balance_after"]);
    let entries: rust_decimal::Decimal = section(&rows, "ENTRY").iter().map(|row| d(&row["amount"])).sum();
    assert_eq!(opening, d("50"), "the balance before the period");
    assert_eq!(closing, opening + entries, "closing = opening + entries");
    // 50 + 100 + 40, − 30 drawn from the promotional credits first, − the 10 of them that expired.
    assert_eq!(closing, d("150"));
    let kinds: Vec<&str> = section(&rows, "ENTRY").iter().map(|row| row["kind"].as_str()).collect();
    assert_eq!(kinds, vec!["GRANT", "GRANT", "DEBIT", "EXPIRY"]);
    assert_eq!(section(&rows, "EXPIRED")[0]["amount"], "10.00");
    let grants = section(&rows, "GRANT");
    let figures: Vec<(&str, &str, &str, &str, &str, &str)> = grants
        .iter()
        .map(|row| {
            (
                row["grant_kind"].as_str(),
                row["opening"].as_str(),
                row["added"].as_str(),
                row["used"].as_str(),
                row["expired"].as_str(),
                row["closing"].as_str(),
            )
        })
        .collect();
    assert!(figures.contains(&("PAID", "50.00", "0.00", "0.00", "0.00", "50.00")), "{figures:?}");
    assert!(figures.contains(&("PAID", "0.00", "100.00", "0.00", "0.00", "100.00")), "{figures:?}");
    assert!(figures.contains(&("PROMOTIONAL", "0.00", "40.00", "30.00", "10.00", "0.00")), "{figures:?}");
    assert_eq!(figures.len(), 3);
    let grant_closing: rust_decimal::Decimal = grants.iter().map(|row| d(&row["closing"])).sum();
    assert_eq!(grant_closing, closing, "the grants hold the closing balance");

    // The period before ends where this one starts.
    let before = statement(&app.client, &account, first_start, start).await;
    assert_eq!(d(&section(&before, "CLOSING")[0]["balance_after"]), opening);
    assert_eq!(section(&before, "ENTRY").len(), 1, "the funding grant");
}

async fn the_refill_history_lists_what_added_credits_with_the_balance_after(app: &TestApp) {
    let account = open_account(&app.client, pb::OverdraftPolicy::Unlimited, "").await;
    debit(&app.client, &account, "10").await.unwrap();
    grant(&app.client, &account, "25", pb::GrantKind::Paid).await;
    let adjust = pb::AdjustRequest {
        account_id: account.id.clone(),
        amount: "5".into(),
        reason: "service credit".into(),
        idempotency_key: key(),
        ..Default::default()
    };
    app.client.clone().adjust(adjust).await.unwrap();
    let sender = open_funded_account(&app.client, "40").await;
    let transfer = pb::TransferRequest {
        from_account_id: sender.id.clone(),
        to_account_id: account.id.clone(),
        amount: "7".into(),
        idempotency_key: key(),
        ..Default::default()
    };
    app.client.clone().transfer(transfer).await.unwrap();
    debit(&app.client, &account, "3").await.unwrap();
    let request = pb::ExportRefillHistoryRequest { account_id: account.id.clone(), ..Default::default() };
    let chunks = app.client.clone().export_refill_history(request).await.unwrap().into_inner();
    let rows = rows(chunks, |chunk| chunk.csv).await;
    let seen: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .map(|row| {
            (row["type"].as_str(), row["amount"].as_str(), row["balance_after"].as_str(), row["source"].as_str())
        })
        .collect();
    // The first grant repaid the overdraft of 10 on its way in: 25 added, 15 after.
    assert_eq!(
        seen,
        vec![
            ("GRANT", "25.00", "15.00", "ADMIN"),
            ("ADJUSTMENT", "5.00", "20.00", "ADJUSTMENT"),
            ("TRANSFER_IN", "7.00", "27.00", "TRANSFER")
        ]
    );
    assert!(rows.iter().all(|row| !row["date"].is_empty()));
}

async fn reports_refuse_bad_periods_and_other_tenants_accounts(app: &TestApp) {
    let account = open_funded_account(&app.client, "1").await;
    let missing = pb::ExportStatementRequest { account_id: account.id.clone(), ..Default::default() };
    assert_invalid(app.client.clone().export_statement(missing).await, "start_time");
    let now = chrono::Utc::now();
    let backwards = pb::ExportStatementRequest {
        account_id: account.id.clone(),
        start_time: Some(timestamp(now)),
        end_time: Some(timestamp(now - chrono::Duration::days(1))),
    };
    assert_invalid(app.client.clone().export_statement(backwards).await, "end_time");
    let (_, other) = app.other_tenant().await;
    let theirs = pb::ExportRefillHistoryRequest { account_id: account.id.clone(), ..Default::default() };
    assert_refused(other.clone().export_refill_history(theirs).await, Code::NotFound, "NOT_FOUND");
}

/// A description that a spreadsheet would run as a formula reaches the
/// statement as text, while amounts stay numbers.
async fn a_statement_opens_in_a_spreadsheet_without_running_formulas(app: &TestApp) {
    let account = open_funded_account(&app.client, "50").await;
    let start = chrono::Utc::now() - chrono::Duration::seconds(1);
    for description in ["=HYPERLINK(\"http://evil.example\",\"x\")", "@SUM(A1)", "+1", "-2+3"] {
        let request = pb::DebitRequest { description: description.into(), ..debit_request(&account, "2") };
        app.client.clone().debit(request).await.unwrap();
    }
    let rows = statement(&app.client, &account, start, chrono::Utc::now() + chrono::Duration::seconds(1)).await;
    let debits: Vec<(&str, &str)> = section(&rows, "ENTRY")
        .iter()
        .filter(|row| row["kind"] == "DEBIT")
        .map(|row| (row["amount"].as_str(), row["description"].as_str()))
        .collect();
    assert_eq!(
        debits,
        vec![
            ("-2.00", "'=HYPERLINK(\"http://evil.example\",\"x\")"),
            ("-2.00", "'@SUM(A1)"),
            ("-2.00", "'+1"),
            ("-2.00", "'-2+3"),
        ]
    );
}

crate::on_both_backends!(
    a_statement_opens_in_a_spreadsheet_without_running_formulas,
    a_statement_closes_at_its_opening_balance_plus_its_entries,
    the_refill_history_lists_what_added_credits_with_the_balance_after,
    reports_refuse_bad_periods_and_other_tenants_accounts,
);
