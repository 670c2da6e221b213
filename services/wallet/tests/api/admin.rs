//! AdminService: an operator makes tenants and keys with a service key; a
//! tenant's ADMIN key manages its own tenant's keys and nothing beyond.

use chrono::{DateTime, Utc};
use reservoir_proto::wallet as pb;
use reservoir_proto::wallet::admin_service_client::AdminServiceClient;
use reservoir_testing::BearerKey;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::helpers::*;

type Admin = AdminServiceClient<InterceptedService<Channel, BearerKey>>;

async fn admin(app: &TestApp, key: &str) -> Admin {
    AdminServiceClient::with_interceptor(channel(app.address).await, BearerKey::new(key))
}

/// An operator's client: a service key, issued where the database is.
async fn operator(app: &TestApp) -> Admin {
    let service = app.store.issue_service_key(PEPPER, Utc::now()).await.unwrap();
    admin(app, &service.key).await
}

/// The admin key the test app's client presents, as a client of AdminService.
async fn tenant_admin(app: &TestApp) -> Admin {
    let issued = app.store.issue_key(app.tenant, PEPPER, Utc::now()).await.unwrap();
    admin(app, &issued.key).await
}

fn issue(tenant_id: &str, role: pb::KeyRole) -> pb::IssueApiKeyRequest {
    pb::IssueApiKeyRequest { tenant_id: tenant_id.to_owned(), role: role.into() }
}

async fn caller(app: &TestApp, key: &str) -> Result<pb::GetCallerResponse, tonic::Status> {
    client(app.address, key).await.get_caller(pb::GetCallerRequest {}).await.map(|response| response.into_inner())
}

fn instant(timestamp: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    let timestamp = timestamp.expect("a time");
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).unwrap()).unwrap()
}

async fn an_operator_creates_a_tenant_and_issues_its_keys(app: &TestApp) {
    let mut operator = operator(app).await;
    let create = |name: &str, key: &str| pb::CreateTenantRequest { name: name.into(), idempotency_key: key.into() };
    let idempotency_key = key();
    let tenant = operator.create_tenant(create("Acme", &idempotency_key)).await.unwrap().into_inner().tenant.unwrap();
    assert_eq!((tenant.name.as_str(), tenant.active_keys), ("Acme", 0));
    // Sent again, the same tenant; the same key for another name is refused.
    let again = operator.create_tenant(create("Acme", &idempotency_key)).await.unwrap().into_inner().tenant.unwrap();
    assert_eq!(again.id, tenant.id);
    assert_refused(
        operator.create_tenant(create("Other", &idempotency_key)).await,
        Code::AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
    );
    assert_invalid(operator.create_tenant(create("", &key())).await, "name");
    assert_invalid(operator.create_tenant(create(&"x".repeat(65), &key())).await, "name");
    assert_invalid(operator.create_tenant(create("Acme", "")).await, "idempotency_key");
    let tenants = operator.list_tenants(pb::ListTenantsRequest {}).await.unwrap().into_inner().tenants;
    assert_eq!(tenants.iter().filter(|listed| listed.id == tenant.id).count(), 1, "created once: {tenants:?}");

    let issued = operator.issue_api_key(issue(&tenant.id, pb::KeyRole::ReadOnly)).await.unwrap().into_inner();
    let key_shown = issued.key.clone().unwrap();
    assert_eq!((key_shown.tenant_id.as_str(), key_shown.role()), (tenant.id.as_str(), pb::KeyRole::ReadOnly));
    assert!(issued.api_key.starts_with(&key_shown.display_prefix), "{issued:?}");
    let who = caller(app, &issued.api_key).await.unwrap();
    assert_eq!(
        (who.tenant_id.as_str(), who.role(), who.key_id.as_str()),
        (tenant.id.as_str(), pb::KeyRole::ReadOnly, key_shown.id.as_str())
    );
    let listed = operator
        .list_api_keys(pb::ListApiKeysRequest { tenant_id: tenant.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, key_shown.id);
    assert!(!format!("{listed:?}").contains(&issued.api_key), "a key is never listed in full");
    let counted = operator.list_tenants(pb::ListTenantsRequest {}).await.unwrap().into_inner().tenants;
    assert_eq!(counted.iter().find(|listed| listed.id == tenant.id).unwrap().active_keys, 1);

    assert_invalid(operator.issue_api_key(issue(&tenant.id, pb::KeyRole::Unspecified)).await, "role");
    assert_invalid(operator.issue_api_key(issue("", pb::KeyRole::Write)).await, "tenant_id");
    assert_invalid(operator.issue_api_key(issue("not-a-tenant", pb::KeyRole::Write)).await, "tenant_id");
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_refused(operator.issue_api_key(issue(&unknown, pb::KeyRole::Write)).await, Code::NotFound, "NOT_FOUND");
    assert_refused(
        operator.list_api_keys(pb::ListApiKeysRequest { tenant_id: unknown }).await,
        Code::NotFound,
        "NOT_FOUND",
    );

    let service = operator.issue_service_key(pb::IssueServiceKeyRequest {}).await.unwrap().into_inner();
    assert_eq!(service.key.unwrap().kind(), pb::CallerKind::Service);
    assert_eq!(caller(app, &service.api_key).await.unwrap().kind(), pb::CallerKind::Service);
}

async fn a_tenant_admin_manages_its_own_keys_and_nothing_more(app: &TestApp) {
    let mut own = tenant_admin(app).await;
    let refused = |result, reason| assert_refused(result, Code::PermissionDenied, reason);
    refused(
        own.create_tenant(pb::CreateTenantRequest { name: "Mine".into(), idempotency_key: key() }).await.map(|_| ()),
        "SERVICE_KEY_REQUIRED",
    );
    refused(own.list_tenants(pb::ListTenantsRequest {}).await.map(|_| ()), "SERVICE_KEY_REQUIRED");
    refused(own.issue_service_key(pb::IssueServiceKeyRequest {}).await.map(|_| ()), "SERVICE_KEY_REQUIRED");

    // Its own tenant, named or not.
    let writer = own.issue_api_key(issue("", pb::KeyRole::Write)).await.unwrap().into_inner();
    assert_eq!(writer.key.as_ref().unwrap().tenant_id, app.tenant.to_string());
    let named = own.issue_api_key(issue(&app.tenant.to_string(), pb::KeyRole::ReadOnly)).await.unwrap().into_inner();
    assert_eq!(caller(app, &named.api_key).await.unwrap().tenant_id, app.tenant.to_string());

    // Another tenant's keys read as not there, and stay as they are.
    let (other, other_client) = app.other_tenant().await;
    let other_key = app.store.issue_key(other, PEPPER, Utc::now()).await.unwrap();
    assert_refused(own.issue_api_key(issue(&other.to_string(), pb::KeyRole::Admin)).await, Code::NotFound, "NOT_FOUND");
    assert_refused(
        own.list_api_keys(pb::ListApiKeysRequest { tenant_id: other.to_string() }).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_refused(
        own.revoke_api_key(pb::RevokeApiKeyRequest { key_id: other_key.id.to_string() }).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_refused(
        own.rotate_api_key(pb::RotateApiKeyRequest { key_id: other_key.id.to_string(), overlap_seconds: 0 }).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert!(caller(app, &other_key.key).await.is_ok(), "the other tenant's key still works");
    other_client.clone().get_caller(pb::GetCallerRequest {}).await.unwrap();

    // A write key may not manage keys, listing them included.
    let mut as_writer = admin(app, &writer.api_key).await;
    assert_refused(
        as_writer.list_api_keys(pb::ListApiKeysRequest::default()).await,
        Code::PermissionDenied,
        "KEY_ROLE",
    );
    assert_refused(as_writer.issue_api_key(issue("", pb::KeyRole::Admin)).await, Code::PermissionDenied, "KEY_ROLE");

    // Revoked at once (this server caches no keys), and revoking again
    // answers the key as it is.
    let writer_id = writer.key.unwrap().id;
    let revoked = own.revoke_api_key(pb::RevokeApiKeyRequest { key_id: writer_id.clone() }).await.unwrap().into_inner();
    let revoked_at = revoked.key.unwrap().revoked_at;
    assert!(revoked_at.is_some());
    assert_eq!(caller(app, &writer.api_key).await.unwrap_err().code(), Code::Unauthenticated);
    let again = own.revoke_api_key(pb::RevokeApiKeyRequest { key_id: writer_id.clone() }).await.unwrap().into_inner();
    assert_eq!(again.key.unwrap().revoked_at, revoked_at);
    let keys = own.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap().into_inner().keys;
    let listed = keys.iter().find(|key| key.id == writer_id).expect("revoked keys are listed");
    assert_eq!(listed.revoked_at, revoked_at);
    assert_invalid(own.revoke_api_key(pb::RevokeApiKeyRequest { key_id: "nope".into() }).await, "key_id");
}

async fn a_rotated_key_works_beside_its_successor_for_the_overlap(app: &TestApp) {
    let mut own = tenant_admin(app).await;
    let old = own.issue_api_key(issue("", pb::KeyRole::Write)).await.unwrap().into_inner();
    let old_id = old.key.unwrap().id;
    let rotate = |overlap_seconds| pb::RotateApiKeyRequest { key_id: old_id.clone(), overlap_seconds };
    assert_invalid(own.rotate_api_key(rotate(30 * 24 * 3_600 + 1)).await, "overlap_seconds");
    let before = Utc::now();
    let rotated = own.rotate_api_key(rotate(3_600)).await.unwrap().into_inner();
    let successor = rotated.key.unwrap();
    assert_ne!(successor.id, old_id);
    assert_eq!(successor.role(), pb::KeyRole::Write, "the successor keeps the role");
    let ends = instant(rotated.replaced.unwrap().revoked_at.as_ref());
    assert!(ends >= before + chrono::Duration::seconds(3_599) && ends <= Utc::now() + chrono::Duration::seconds(3_601));
    for key in [&old.api_key, &rotated.api_key] {
        assert_eq!(caller(app, key).await.unwrap().role(), pb::KeyRole::Write);
    }
    // Ended now; a key no longer active cannot be rotated again.
    own.revoke_api_key(pb::RevokeApiKeyRequest { key_id: old_id.clone() }).await.unwrap();
    assert_eq!(caller(app, &old.api_key).await.unwrap_err().code(), Code::Unauthenticated);
    assert_refused(own.rotate_api_key(rotate(0)).await, Code::NotFound, "NOT_FOUND");
    assert!(caller(app, &rotated.api_key).await.is_ok(), "the successor keeps working");
}

crate::on_both_backends!(
    an_operator_creates_a_tenant_and_issues_its_keys,
    a_tenant_admin_manages_its_own_keys_and_nothing_more,
    a_rotated_key_works_beside_its_successor_for_the_overlap,
);
