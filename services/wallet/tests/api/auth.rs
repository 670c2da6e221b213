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

async fn a_rotated_key_works_beside_its_successor_until_the_overlap_ends(app: &TestApp) {
    use reservoir_common::auth::KeyRole;
    let account = prepaid(&app.client).await;
    let get = || pb::GetAccountRequest { account_id: account.id.clone() };
    let old = app.store.issue_key_with_role(app.tenant, KeyRole::Write, PEPPER, Utc::now()).await.unwrap();
    let new = app.store.rotate_key(old.id, chrono::Duration::hours(1), PEPPER, Utc::now()).await.unwrap().unwrap();
    assert_ne!(new.key, old.key);
    assert_eq!(new.tenant_id, app.tenant);
    let (old_client, new_client) = (client(app.address, &old.key).await, client(app.address, &new.key).await);
    old_client.clone().get_account(get()).await.expect("the old key works during the overlap");
    new_client.clone().get_account(get()).await.expect("the new key works at once");
    let role = new_client.clone().get_caller(pb::GetCallerRequest {}).await.unwrap().into_inner().role();
    assert_eq!(role, pb::KeyRole::Write, "the new key keeps the old one's role");
    // Revoking the old key ends its overlap at once.
    assert!(app.store.revoke_key(old.id, Utc::now()).await.unwrap());
    assert_eq!(old_client.clone().get_account(get()).await.unwrap_err().code(), Code::Unauthenticated);
    new_client.clone().get_account(get()).await.unwrap();
    // Without an overlap the old key stops now; a revoked key is not rotated.
    let newer = app.store.rotate_key(new.id, chrono::Duration::zero(), PEPPER, Utc::now()).await.unwrap().unwrap();
    assert_eq!(new_client.clone().get_account(get()).await.unwrap_err().code(), Code::Unauthenticated);
    client(app.address, &newer.key).await.get_account(get()).await.unwrap();
    assert!(app.store.rotate_key(old.id, chrono::Duration::hours(1), PEPPER, Utc::now()).await.unwrap().is_none());
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

/// Every method of the wallet, by path, and whether it only reads.
fn wallet_methods() -> Vec<(String, bool)> {
    let set = <prost_types::FileDescriptorSet as prost::Message>::decode(reservoir_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut methods = Vec::new();
    for file in set.file.into_iter().filter(|file| file.package() == "reservoir.wallet.v1") {
        for service in file.service {
            let service_name = service.name().to_owned();
            for method in service.method {
                let name = method.name().to_owned();
                let reads =
                    ["Get", "List", "Watch", "Export", "Quote", "Verify"].iter().any(|verb| name.starts_with(verb));
                methods.push((format!("/reservoir.wallet.v1.{service_name}/{name}"), reads));
            }
        }
    }
    methods
}

/// A call to `path` with an empty body under `key`: its status.
async fn raw_call(app: &TestApp, key: &str, path: &str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel(app.address).await);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(());
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    let codec: tonic_prost::ProstCodec<(), ()> = tonic_prost::ProstCodec::default();
    match grpc.unary(request, path.parse().unwrap(), codec).await {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

async fn a_read_only_key_reads_and_is_refused_every_change(app: &TestApp) {
    use reservoir_common::auth::KeyRole;
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let before = ledger(&app.client, &account).await.len();
    let issued = app.store.issue_key_with_role(app.tenant, KeyRole::ReadOnly, PEPPER, Utc::now()).await.unwrap();
    let reader = client(app.address, &issued.key).await;
    let caller = reader.clone().get_caller(pb::GetCallerRequest {}).await.unwrap().into_inner();
    assert_eq!(caller.role(), pb::KeyRole::ReadOnly);
    assert_eq!(available(&reader, &account).await, d("10"), "reads go through");
    assert_eq!(ledger(&reader, &account).await.len(), before);
    let mut events = reader
        .clone()
        .watch_events(pb::WatchEventsRequest { after_sequence: 0, consumer: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(tokio_stream::StreamExt::next(&mut events).await.unwrap().is_ok(), "events stream to a reader");
    let verify = pb::VerifyLedgerRequest { account_id: account.id.clone(), ..Default::default() };
    assert!(reader.clone().verify_ledger(verify).await.unwrap().into_inner().intact, "a reader checks the chain");
    // Every method that changes something is refused before it runs.
    let methods = wallet_methods();
    assert!(methods.iter().filter(|(_, reads)| !reads).count() >= 14, "{methods:?}");
    for (path, reads) in &methods {
        // A stream (WatchEvents, the exports) would not end as a single call: its reads are tried above.
        if *reads && (path.contains("/Watch") || path.contains("/Export")) {
            continue;
        }
        let status = raw_call(app, &issued.key, path).await;
        // Tenants and service keys are an operator's, whatever the verb;
        // a tenant's keys are its admins', listing them included.
        let operators = ["CreateTenant", "ListTenants", "IssueServiceKey"];
        let admins = ["IssueApiKey", "ListApiKeys", "RevokeApiKey", "RotateApiKey"];
        let method = path.rsplit('/').next().unwrap_or_default();
        if path.contains("/reservoir.wallet.v1.AdminService/") && operators.contains(&method) {
            assert_refused(Err::<(), _>(status), Code::PermissionDenied, "SERVICE_KEY_REQUIRED");
        } else if path.contains("/reservoir.wallet.v1.AdminService/") {
            assert!(admins.contains(&method), "{path}: a method this test does not know");
            assert_refused(Err::<(), _>(status), Code::PermissionDenied, "KEY_ROLE");
        } else if *reads {
            assert_ne!(status.code(), Code::PermissionDenied, "{path} reads: {status:?}");
        } else {
            assert_refused(Err::<(), _>(status), Code::PermissionDenied, "KEY_ROLE");
        }
    }
    assert_refused(reader.clone().debit(debit_request(&account, "1")).await, Code::PermissionDenied, "KEY_ROLE");
    assert_eq!(available(&app.client, &account).await, d("10"), "nothing changed");
    assert_eq!(ledger(&app.client, &account).await.len(), before);
}

async fn a_write_key_changes_balances_but_not_the_tenants_settings(app: &TestApp) {
    use reservoir_common::auth::KeyRole;
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let issued = app.store.issue_key_with_role(app.tenant, KeyRole::Write, PEPPER, Utc::now()).await.unwrap();
    let writer = client(app.address, &issued.key).await;
    let caller = writer.clone().get_caller(pb::GetCallerRequest {}).await.unwrap().into_inner();
    assert_eq!(caller.role(), pb::KeyRole::Write);
    debit(&writer, &account, "4").await.unwrap();
    assert_eq!(available(&app.client, &account).await, d("6"));
    let settings =
        |allow| pb::UpdateTenantSettingsRequest { allow_promotional_transfers: Some(allow), ..Default::default() };
    let before = app.client.clone().get_tenant_settings(pb::GetTenantSettingsRequest {}).await.unwrap().into_inner();
    let allow = !before.settings.unwrap().allow_promotional_transfers;
    assert_refused(writer.clone().update_tenant_settings(settings(allow)).await, Code::PermissionDenied, "KEY_ROLE");
    let unchanged = writer.clone().get_tenant_settings(pb::GetTenantSettingsRequest {}).await.unwrap().into_inner();
    assert_eq!(unchanged.settings.unwrap().allow_promotional_transfers, !allow);
    // Budgets and reviews of held transfers are an admin's too.
    let child = prepaid(&app.client).await;
    let budget = pb::SetBudgetRequest {
        account_id: child.id.clone(),
        parent_account_id: account.id.clone(),
        period: pb::BudgetPeriod::Day.into(),
        ..Default::default()
    };
    assert_refused(writer.clone().set_budget(budget).await, Code::PermissionDenied, "KEY_ROLE");
    let review = pb::ReviewTransferRequest { review_id: uuid::Uuid::now_v7().to_string(), ..Default::default() };
    assert_refused(writer.clone().review_transfer(review).await, Code::PermissionDenied, "KEY_ROLE");
    assert!(
        writer
            .clone()
            .get_spend(pb::GetSpendRequest { account_id: child.id.clone() })
            .await
            .unwrap()
            .into_inner()
            .budget
            .is_none()
    );
    // The tenant's first key is an admin's, as every key issued before roles.
    let admin = app.client.clone().get_caller(pb::GetCallerRequest {}).await.unwrap().into_inner();
    assert_eq!(admin.role(), pb::KeyRole::Admin);
    let changed = app.client.clone().update_tenant_settings(settings(allow)).await.unwrap().into_inner();
    assert_eq!(changed.settings.unwrap().allow_promotional_transfers, allow);
}

/// Every entry names the key whose call wrote it: a tenant's key for its own
/// calls, a service's key for what a service did for the tenant, and never
/// the key itself.
async fn every_entry_records_the_key_that_wrote_it(app: &TestApp) {
    use reservoir_common::auth::KeyRole;
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    let admin = app.client.clone().get_caller(pb::GetCallerRequest {}).await.unwrap().into_inner();
    let issued = app.store.issue_key_with_role(app.tenant, KeyRole::Write, PEPPER, Utc::now()).await.unwrap();
    let writer = client(app.address, &issued.key).await;
    let caller = writer.clone().get_caller(pb::GetCallerRequest {}).await.unwrap().into_inner();
    assert_eq!(caller.key_id, issued.id.to_string(), "GetCaller names the key's id");
    assert_ne!(caller.key_id, admin.key_id);
    debit(&writer, &account, "1").await.unwrap();
    writer
        .clone()
        .batch_debit(pb::BatchDebitRequest { debits: vec![debit_request(&account, "2"), debit_request(&account, "3")] })
        .await
        .unwrap();
    let service = app.store.issue_service_key(PEPPER, Utc::now()).await.unwrap();
    let request =
        reservoir_common::auth::service_request(debit_request(&account, "0.5"), &service.key, app.tenant).unwrap();
    WalletServiceClient::new(channel(app.address).await).debit(request).await.unwrap();
    let entries = ledger(&app.client, &account).await;
    let made_by: Vec<(pb::EntryKind, String)> =
        entries.iter().map(|entry| (entry.kind(), entry.key_id.clone())).collect();
    assert_eq!(
        made_by,
        vec![
            (pb::EntryKind::Grant, admin.key_id.clone()),
            (pb::EntryKind::Debit, issued.id.to_string()),
            (pb::EntryKind::Debit, issued.id.to_string()),
            (pb::EntryKind::Debit, issued.id.to_string()),
            (pb::EntryKind::Debit, service.id.to_string()),
        ]
    );
    assert!(entries.iter().all(|entry| !entry.key_id.contains(&issued.key) && !entry.key_id.contains(&service.key)));
}

crate::on_both_backends!(
    every_entry_records_the_key_that_wrote_it,
    a_read_only_key_reads_and_is_refused_every_change,
    a_write_key_changes_balances_but_not_the_tenants_settings,
    a_rotated_key_works_beside_its_successor_until_the_overlap_ends,
    a_service_key_naming_no_tenant_is_unauthenticated_and_writes_nothing,
    a_service_key_acts_for_the_tenant_each_call_names,
    another_tenants_account_is_not_found,
    a_call_without_a_valid_key_is_unauthenticated,
    a_revoked_key_stops_working,
);
