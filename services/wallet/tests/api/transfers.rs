use reservoir_proto::wallet as pb;
use tonic::Code;

use crate::helpers::*;

pub fn transfer_request(from: &pb::Account, to: &pb::Account, amount: &str) -> pb::TransferRequest {
    pb::TransferRequest {
        from_account_id: from.id.clone(),
        to_account_id: to.id.clone(),
        amount: amount.into(),
        idempotency_key: key(),
        ..Default::default()
    }
}

async fn set_limits(client: &Client, account: &pb::Account, max: &str, daily: &str) {
    client
        .clone()
        .update_account(pb::UpdateAccountRequest {
            account_id: account.id.clone(),
            transfer_max_amount: Some(max.into()),
            transfer_daily_limit: Some(daily.into()),
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn kinds(entries: &[pb::LedgerEntry]) -> Vec<pb::EntryKind> {
    entries.iter().map(|entry| pb::EntryKind::try_from(entry.kind).unwrap()).collect()
}

async fn a_transfer_moves_credits_as_one_pair_of_entries_and_replays_on_retry(app: &TestApp) {
    let from = prepaid(&app.client).await;
    let to = prepaid(&app.client).await;
    let expires_at = prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + 86_400 * 30, nanos: 0 };
    let mut request = grant_request(&from, "100", pb::GrantKind::Paid);
    request.expires_at = Some(expires_at);
    app.client.clone().grant_credits(request).await.unwrap();
    let mut request = transfer_request(&from, &to, "30");
    request.description = "sharing with the team".into();
    let response = app.client.clone().transfer(request.clone()).await.unwrap().into_inner();
    assert_eq!(kinds(&response.out_entries), vec![pb::EntryKind::TransferOut]);
    assert_eq!(kinds(&response.in_entries), vec![pb::EntryKind::TransferIn]);
    assert_eq!((response.out_entries[0].amount.as_str(), response.in_entries[0].amount.as_str()), ("-30.00", "30.00"));
    assert_eq!(response.in_entries[0].description, "sharing with the team");
    let received = &response.grants[0];
    assert_eq!(received.expires_at, Some(expires_at), "the received credits keep the sender's expiry");
    assert_eq!(pb::GrantSource::try_from(received.source), Ok(pb::GrantSource::Transfer));
    assert_eq!((available(&app.client, &from).await, available(&app.client, &to).await), (d("70"), d("30")));

    // The same key replays the answer and moves nothing more.
    let replayed = app.client.clone().transfer(request.clone()).await.unwrap().into_inner();
    assert_eq!(replayed, response);
    assert_eq!((available(&app.client, &from).await, available(&app.client, &to).await), (d("70"), d("30")));
    request.amount = "31".into();
    assert_refused(app.client.clone().transfer(request).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(kinds(&ledger(&app.client, &from).await), vec![pb::EntryKind::Grant, pb::EntryKind::TransferOut]);
    assert_eq!(kinds(&ledger(&app.client, &to).await), vec![pb::EntryKind::TransferIn]);
    assert_books_balance(&app.client, &from).await;
    assert_books_balance(&app.client, &to).await;
}

async fn transfers_past_their_limits_are_refused_with_nothing_moved(app: &TestApp) {
    let from = open_funded_account(&app.client, "500").await;
    let to = prepaid(&app.client).await;
    set_limits(&app.client, &from, "50", "80").await;
    let refused = app.client.clone().transfer(transfer_request(&from, &to, "50.01")).await;
    assert_refused(refused, Code::FailedPrecondition, "TRANSFER_LIMIT_EXCEEDED");
    app.client.clone().transfer(transfer_request(&from, &to, "50")).await.unwrap();
    let refused = app.client.clone().transfer(transfer_request(&from, &to, "30.01")).await;
    assert_refused(refused, Code::FailedPrecondition, "TRANSFER_LIMIT_EXCEEDED");
    app.client.clone().transfer(transfer_request(&from, &to, "30")).await.unwrap();
    let refused = app.client.clone().transfer(transfer_request(&from, &to, "0.01")).await;
    assert_refused(refused, Code::FailedPrecondition, "TRANSFER_LIMIT_EXCEEDED");
    // More than the sender has, once the daily limit is lifted.
    set_limits(&app.client, &from, "", "").await;
    let refused = app.client.clone().transfer(transfer_request(&from, &to, "420.01")).await;
    assert_refused(refused, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");
    assert_eq!((available(&app.client, &from).await, available(&app.client, &to).await), (d("420"), d("80")));
    assert_eq!(ledger(&app.client, &from).await.len(), 3, "the grant and two transfers, nothing from the refusals");
    assert_eq!(ledger(&app.client, &to).await.len(), 2);
}

async fn promotional_credits_move_only_when_the_tenant_allows_it(app: &TestApp) {
    let from = prepaid(&app.client).await;
    let to = prepaid(&app.client).await;
    grant(&app.client, &from, "40", pb::GrantKind::Promotional).await;
    let refused = app.client.clone().transfer(transfer_request(&from, &to, "10")).await;
    assert_refused(refused, Code::FailedPrecondition, "INSUFFICIENT_FUNDS");
    let settings = app
        .client
        .clone()
        .update_tenant_settings(pb::UpdateTenantSettingsRequest {
            allow_promotional_transfers: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .settings
        .unwrap();
    assert!(settings.allow_promotional_transfers);
    let response = app.client.clone().transfer(transfer_request(&from, &to, "10")).await.unwrap().into_inner();
    assert_eq!(pb::GrantKind::try_from(response.grants[0].kind), Ok(pb::GrantKind::Promotional));
    assert_eq!(balance(&app.client, &to).await.promotional, "10.00");
    // Another tenant's setting is its own.
    let (_, other) = app.other_tenant().await;
    let theirs = other.clone().get_tenant_settings(pb::GetTenantSettingsRequest {}).await.unwrap().into_inner();
    assert!(!theirs.settings.unwrap().allow_promotional_transfers);
}

async fn a_transfer_needs_two_accounts_of_the_tenant_with_one_unit(app: &TestApp) {
    let from = open_funded_account(&app.client, "10").await;
    let euro = open_account_with(&app.client, |request| {
        request.unit = Some(pb::Unit { code: "EUR".into(), ..Default::default() });
    })
    .await;
    assert_refused(
        app.client.clone().transfer(transfer_request(&from, &euro, "1")).await,
        Code::FailedPrecondition,
        "UNIT_MISMATCH",
    );
    assert_invalid(app.client.clone().transfer(transfer_request(&from, &from, "1")).await, "to_account_id");
    let to = prepaid(&app.client).await;
    assert_invalid(app.client.clone().transfer(transfer_request(&from, &to, "-1")).await, "amount");
    assert_invalid(app.client.clone().transfer(transfer_request(&from, &to, "1.001")).await, "amount");
    let mut request = transfer_request(&from, &to, "1");
    request.idempotency_key.clear();
    assert_invalid(app.client.clone().transfer(request).await, "idempotency_key");
    let (_, other) = app.other_tenant().await;
    let theirs = open_funded_account(&other, "10").await;
    assert_refused(
        app.client.clone().transfer(transfer_request(&from, &theirs, "1")).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_refused(other.clone().transfer(transfer_request(&theirs, &from, "1")).await, Code::NotFound, "NOT_FOUND");
    assert_eq!(available(&app.client, &from).await, d("10"));
    assert_eq!(available(&other, &theirs).await, d("10"));
}

async fn transfers_both_ways_at_once_neither_deadlock_nor_lose_credits(app: &TestApp) {
    let a = open_funded_account(&app.client, "100").await;
    let b = open_funded_account(&app.client, "100").await;
    let mut calls = Vec::new();
    for index in 0..40 {
        let client = app.client.clone();
        let request = if index % 2 == 0 { transfer_request(&a, &b, "1") } else { transfer_request(&b, &a, "2") };
        calls.push(tokio::spawn(async move {
            // A conflict is retried with the same key, as a client would.
            loop {
                match client.clone().transfer(request.clone()).await {
                    Ok(_) => break,
                    Err(status) if status.code() == Code::Aborted => continue,
                    Err(status) => panic!("{status:?}"),
                }
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    // Twenty of 1 one way, twenty of 2 the other.
    assert_eq!((available(&app.client, &a).await, available(&app.client, &b).await), (d("120"), d("80")));
    assert_books_balance(&app.client, &a).await;
    assert_books_balance(&app.client, &b).await;
}

crate::on_both_backends!(
    a_transfer_moves_credits_as_one_pair_of_entries_and_replays_on_retry,
    transfers_past_their_limits_are_refused_with_nothing_moved,
    promotional_credits_move_only_when_the_tenant_allows_it,
    a_transfer_needs_two_accounts_of_the_tenant_with_one_unit,
    transfers_both_ways_at_once_neither_deadlock_nor_lose_credits,
);
