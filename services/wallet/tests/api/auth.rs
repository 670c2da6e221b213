use chrono::Utc;
use reservoir_proto::wallet as pb;
use reservoir_proto::wallet::wallet_service_client::WalletServiceClient;
use tonic::Code;

use crate::helpers::*;

async fn another_tenants_account_is_not_found(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let (_, mut other) = app.other_tenant().await;
    let get = other.get_account(pb::GetAccountRequest { account_id: account.id.clone() }).await;
    assert_refused(get, Code::NotFound, "NOT_FOUND");
    assert_refused(other.debit(debit_request(&account, "1")).await, Code::NotFound, "NOT_FOUND");
    let balance_read = other.get_balance(pb::GetBalanceRequest { account_id: account.id.clone() }).await;
    assert_refused(balance_read, Code::NotFound, "NOT_FOUND");
    let entries = ledger(&app.client, &account).await;
    let refund = pb::RefundRequest {
        entry_id: entries[0].id.clone(),
        amount: "1".into(),
        idempotency_key: key(),
        reason: String::new(),
    };
    assert_refused(other.refund(refund).await, Code::NotFound, "NOT_FOUND");
    let same_external_id = pb::CreateAccountRequest {
        external_id: account.external_id.clone(),
        unit: usd(),
        idempotency_key: key(),
        ..Default::default()
    };
    other.create_account(same_external_id).await.expect("external ids are per tenant");
    assert_eq!(available(&app.client, &account).await, d("10"));
}

async fn a_call_without_a_valid_key_is_unauthenticated(app: &TestApp) {
    let mut anonymous = WalletServiceClient::new(channel(app.address).await);
    let status = anonymous.get_account(pb::GetAccountRequest { account_id: key() }).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut wrong = client(app.address, "rsv_not-a-key").await;
    let status = wrong.get_account(pb::GetAccountRequest { account_id: key() }).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

async fn a_revoked_key_stops_working(app: &TestApp) {
    let issued = app.store.issue_key(app.tenant, PEPPER, Utc::now()).await.unwrap();
    let mut client = client(app.address, &issued.key).await;
    let account = prepaid(&client).await;
    assert!(app.store.revoke_key(issued.id, Utc::now()).await.unwrap());
    let status = client.get_account(pb::GetAccountRequest { account_id: account.id.clone() }).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

async fn a_service_key_acts_for_the_tenant_each_call_names(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let service_key = app.store.issue_service_key(PEPPER, Utc::now()).await.unwrap().key;
    let mut service = WalletServiceClient::new(channel(app.address).await);
    let request = reservoir_common::auth::service_request(
        pb::GetAccountRequest { account_id: account.id.clone() },
        &service_key,
        app.tenant,
    )
    .unwrap();
    let read = service.get_account(request).await.unwrap().into_inner();
    assert_eq!(read.account.unwrap().id, account.id);
    let mut anonymous_tenant = tonic::Request::new(pb::GetAccountRequest { account_id: account.id.clone() });
    anonymous_tenant.metadata_mut().insert("authorization", format!("Bearer {service_key}").parse().unwrap());
    let status = service.get_account(anonymous_tenant).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut who = tonic::Request::new(pb::GetCallerRequest {});
    who.metadata_mut().insert("authorization", format!("Bearer {service_key}").parse().unwrap());
    let caller = service.get_caller(who).await.unwrap().into_inner();
    assert_eq!(caller.kind, i32::from(pb::CallerKind::Service));
    let tenant_caller = app.client.clone().get_caller(pb::GetCallerRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (tenant_caller.kind, tenant_caller.tenant_id),
        (i32::from(pb::CallerKind::Tenant), app.tenant.to_string())
    );
}

async fn a_service_key_naming_no_tenant_is_unauthenticated_and_writes_nothing(app: &TestApp) {
    let service_key = app.store.issue_service_key(PEPPER, Utc::now()).await.unwrap().key;
    let mut service = WalletServiceClient::new(channel(app.address).await);
    let nobody = reservoir_common::auth::TenantId(uuid::Uuid::now_v7());
    let open = pb::CreateAccountRequest {
        external_id: "cust-1".into(),
        unit: usd(),
        idempotency_key: key(),
        ..Default::default()
    };
    let request = reservoir_common::auth::service_request(open, &service_key, nobody).unwrap();
    let status = service.create_account(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("x-reservoir-tenant"), "{}", status.message());
    let request = reservoir_common::auth::service_request(pb::GetCallerRequest {}, &service_key, nobody).unwrap();
    assert_eq!(service.get_caller(request).await.unwrap_err().code(), Code::Unauthenticated);
    assert!(app.store.accounts_page(nobody, None, 10).await.unwrap().is_empty(), "nothing was written for it");
}

crate::on_both_backends!(
    a_service_key_naming_no_tenant_is_unauthenticated_and_writes_nothing,
    a_service_key_acts_for_the_tenant_each_call_names,
    another_tenants_account_is_not_found,
    a_call_without_a_valid_key_is_unauthenticated,
    a_revoked_key_stops_working,
);
