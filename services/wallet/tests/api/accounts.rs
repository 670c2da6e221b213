use reservoir_proto::wallet as pb;
use tonic::Code;

use crate::helpers::*;

async fn an_account_reads_back_as_it_was_opened(app: &TestApp) {
    let account = open_account(&app.client, pb::OverdraftPolicy::CreditLimit, "50").await;
    let read = app
        .client
        .clone()
        .get_account(pb::GetAccountRequest { account_id: account.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let read = read.account.unwrap();
    assert_eq!(read.id, account.id);
    assert_eq!(read.credit_limit, "50.00");
    assert_eq!(read.overdraft_policy, i32::from(pb::OverdraftPolicy::CreditLimit));
    assert_eq!(read.status, i32::from(pb::AccountStatus::Active));
    assert_eq!(read.unit.unwrap().scale, Some(2));
    let balance = balance(&app.client, &account).await;
    assert_eq!((balance.available.as_str(), balance.spendable.as_str()), ("0.00", "50.00"));
}

async fn a_second_account_with_the_same_external_id_is_refused(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let again = app
        .client
        .clone()
        .create_account(pb::CreateAccountRequest {
            external_id: account.external_id.clone(),
            unit: usd(),
            idempotency_key: key(),
            ..Default::default()
        })
        .await;
    let refused = again.unwrap_err();
    assert_eq!(
        (refused.code(), reservoir_common::status::reason_of(&refused).as_deref()),
        (Code::AlreadyExists, Some("ACCOUNT_EXISTS"))
    );
    // The ErrorInfo names the account in the way.
    let metadata = reservoir_common::status::metadata_of(&refused);
    assert_eq!(metadata.get("account_id"), Some(&account.id), "{metadata:?}");
}

/// Opened at once under one external id by different requests: one opens
/// it, and every other is refused naming that account, whether it lost
/// before inserting or at the insert.
async fn racing_opens_under_one_external_id_open_one_account_and_name_it(app: &TestApp) {
    let external_id = format!("race-{}", key());
    let calls = (0..12).map(|_| {
        let mut client = app.client.clone();
        let request = pb::CreateAccountRequest {
            external_id: external_id.clone(),
            unit: usd(),
            idempotency_key: key(),
            ..Default::default()
        };
        async move { client.create_account(request).await }
    });
    let results = futures::future::join_all(calls).await;
    let opened: Vec<_> = results
        .iter()
        .filter_map(|result| result.as_ref().ok())
        .map(|answer| answer.get_ref().account.clone().unwrap().id)
        .collect();
    assert_eq!(opened.len(), 1, "{results:?}");
    for refused in results.iter().filter_map(|result| result.as_ref().err()) {
        assert_eq!(
            (refused.code(), reservoir_common::status::reason_of(refused).as_deref()),
            (Code::AlreadyExists, Some("ACCOUNT_EXISTS"))
        );
        let metadata = reservoir_common::status::metadata_of(refused);
        assert_eq!(metadata.get("account_id"), Some(&opened[0]), "{metadata:?}");
    }
}

async fn account_settings_are_checked_field_by_field(app: &TestApp) {
    let mut client = app.client.clone();
    let base = pb::CreateAccountRequest {
        external_id: "x".into(),
        unit: usd(),
        overdraft_policy: pb::OverdraftPolicy::None.into(),
        idempotency_key: key(),
        ..Default::default()
    };
    let unlimited_with_limit = pb::CreateAccountRequest {
        overdraft_policy: pb::OverdraftPolicy::Unlimited.into(),
        credit_limit: "10".into(),
        ..base.clone()
    };
    assert_invalid(client.create_account(unlimited_with_limit).await, "credit_limit");
    let limit_missing =
        pb::CreateAccountRequest { overdraft_policy: pb::OverdraftPolicy::CreditLimit.into(), ..base.clone() };
    assert_invalid(client.create_account(limit_missing).await, "credit_limit");
    let no_unit = pb::CreateAccountRequest { unit: None, ..base.clone() };
    assert_invalid(client.create_account(no_unit).await, "unit");
    let bad_currency =
        pb::CreateAccountRequest { unit: Some(pb::Unit { code: "ZZZ".into(), ..Default::default() }), ..base.clone() };
    assert_invalid(client.create_account(bad_currency).await, "unit");
    let no_key = pb::CreateAccountRequest { idempotency_key: String::new(), ..base.clone() };
    assert_invalid(client.create_account(no_key).await, "idempotency_key");
    let too_much_metadata = pb::CreateAccountRequest {
        metadata: (0..33).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
        ..base.clone()
    };
    assert_invalid(client.create_account(too_much_metadata).await, "metadata");
    let long_id = pb::CreateAccountRequest { external_id: "x".repeat(129), ..base };
    assert_invalid(client.create_account(long_id).await, "external_id");
}

async fn unknown_and_malformed_ids_are_told_apart(app: &TestApp) {
    let mut client = app.client.clone();
    assert_invalid(client.get_account(pb::GetAccountRequest { account_id: "nope".into() }).await, "account_id");
    assert_refused(
        client.get_account(pb::GetAccountRequest { account_id: uuid::Uuid::now_v7().to_string() }).await,
        Code::NotFound,
        "NOT_FOUND",
    );
}

async fn a_suspended_account_refuses_debits_until_reactivated(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let mut client = app.client.clone();
    let update = |status: pb::AccountStatus| pb::UpdateAccountRequest {
        account_id: account.id.clone(),
        status: Some(status.into()),
        idempotency_key: key(),
        ..Default::default()
    };
    client.update_account(update(pb::AccountStatus::Suspended)).await.unwrap();
    assert_refused(debit(&app.client, &account, "1").await, Code::FailedPrecondition, "ACCOUNT_SUSPENDED");
    grant(&app.client, &account, "1", pb::GrantKind::Courtesy).await;
    client.update_account(update(pb::AccountStatus::Active)).await.unwrap();
    debit(&app.client, &account, "1").await.unwrap();
    client.update_account(update(pb::AccountStatus::Closed)).await.unwrap();
    assert_refused(debit(&app.client, &account, "1").await, Code::FailedPrecondition, "ACCOUNT_CLOSED");
    assert_refused(
        client.update_account(update(pb::AccountStatus::Active)).await,
        Code::FailedPrecondition,
        "ACCOUNT_CLOSED",
    );
    assert_eq!(available(&app.client, &account).await, d("10"));
    assert_books_balance(&app.client, &account).await;
}

async fn a_twenty_digit_amount_round_trips_exactly(app: &TestApp) {
    let account = open_account_with(&app.client, |request| {
        request.unit = Some(pb::Unit {
            code: "TOKENS".into(),
            scale: Some(8),
            price_per_credit: "0.00002".into(),
            billing_currency: "USD".into(),
        });
    })
    .await;
    let amount = "123456789012.12345678";
    let granted = grant(&app.client, &account, amount, pb::GrantKind::Paid).await;
    assert_eq!(granted.grant.unwrap().original_amount, amount);
    debit(&app.client, &account, "0.00000001").await.unwrap();
    assert_eq!(balance(&app.client, &account).await.available, "123456789012.12345677");
    let entries = ledger(&app.client, &account).await;
    assert_eq!(entries[0].amount, amount);
    assert_eq!(entries[1].balance_after, "123456789012.12345677");
    let grants = app
        .client
        .clone()
        .list_grants(pb::ListGrantsRequest { account_id: account.id.clone(), include_inactive: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grants.grants[0].remaining_amount, "123456789012.12345677");
    let read = app
        .client
        .clone()
        .get_account(pb::GetAccountRequest { account_id: account.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.account.unwrap().unit.unwrap().price_per_credit, "0.00002");
}

/// GetUnit finds a unit by its code among the tenant's own accounts only.
async fn a_unit_is_found_only_where_the_tenant_keeps_accounts_in_it(app: &TestApp) {
    let credits = pb::Unit {
        code: "TOKENS".into(),
        scale: Some(3),
        price_per_credit: "0.002".into(),
        billing_currency: "EUR".into(),
    };
    open_account_with(&app.client, |request| request.unit = Some(credits.clone())).await;
    prepaid(&app.client).await;
    let get = |code: &str| {
        let mut client = app.client.clone();
        let request = pb::GetUnitRequest { unit_code: code.into() };
        async move { client.get_unit(request).await }
    };
    assert_eq!(get("TOKENS").await.unwrap().into_inner().unit, Some(credits));
    let usd = get("USD").await.unwrap().into_inner().unit.unwrap();
    assert_eq!((usd.code.as_str(), usd.scale), ("USD", Some(2)));
    assert_refused(get("EUR").await, Code::NotFound, "NOT_FOUND");
    assert_invalid(get("").await, "unit_code");
    assert_invalid(get("TOK ENS").await, "unit_code");
    let (_, other) = app.other_tenant().await;
    let theirs = other.clone().get_unit(pb::GetUnitRequest { unit_code: "TOKENS".into() }).await;
    assert_refused(theirs, Code::NotFound, "NOT_FOUND");
}

/// An account is found by the tenant's own id for it, and only the tenant's.
async fn an_account_is_found_by_its_external_id(app: &TestApp) {
    let account = prepaid(&app.client).await;
    prepaid(&app.client).await;
    let list = |external_id: &str| pb::ListAccountsRequest { external_id: external_id.into(), ..Default::default() };
    let found = app.client.clone().list_accounts(list(&account.external_id)).await.unwrap().into_inner();
    let ids: Vec<&str> = found.accounts.iter().map(|found| found.id.as_str()).collect();
    assert_eq!(ids, vec![account.id.as_str()]);
    assert_eq!(found.next_page_token, "");
    let none = app.client.clone().list_accounts(list("nobody-has-this")).await.unwrap().into_inner();
    assert!(none.accounts.is_empty());
    let (_, other) = app.other_tenant().await;
    let theirs = other.clone().list_accounts(list(&account.external_id)).await.unwrap().into_inner();
    assert!(theirs.accounts.is_empty(), "another tenant's id finds nothing");
    assert_invalid(app.client.clone().list_accounts(list(&"x".repeat(129))).await, "external_id");
    let all = app.client.clone().list_accounts(list("")).await.unwrap().into_inner();
    assert_eq!(all.accounts.len(), 2, "without it, every account");
}

crate::on_both_backends!(
    an_account_is_found_by_its_external_id,
    a_unit_is_found_only_where_the_tenant_keeps_accounts_in_it,
    an_account_reads_back_as_it_was_opened,
    a_second_account_with_the_same_external_id_is_refused,
    racing_opens_under_one_external_id_open_one_account_and_name_it,
    account_settings_are_checked_field_by_field,
    unknown_and_malformed_ids_are_told_apart,
    a_suspended_account_refuses_debits_until_reactivated,
    a_twenty_digit_amount_round_trips_exactly,
);
