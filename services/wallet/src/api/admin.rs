//! AdminService: tenants and their API keys, for operators (service keys)
//! and for a tenant's ADMIN keys within their own tenant. The auth layer
//! lets only those callers in (see `reservoir_common::auth`); here each call
//! is kept to the tenant its caller may manage.

use chrono::Duration;
use reservoir_common::auth::{Caller, KeyRole, TenantId, caller_of};
use reservoir_common::time::to_timestamp;
use reservoir_proto::wallet as pb;
use reservoir_proto::wallet::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::validate::{Violations, now};
use crate::error::WalletError;
use crate::store::{IssuedKey, KeyListed, Store, TenantRow};

/// Tenant names: a company's name with room to spare.
const TENANT_NAME_LENGTH_MAX: usize = 64;
/// The longest a rotated key keeps working beside its successor.
const OVERLAP_SECONDS_MAX: u32 = 30 * 24 * 3_600;

#[derive(Clone)]
pub struct AdminApi {
    store: Store,
    /// Issued keys are stored as their hash under this pepper.
    pepper: String,
}

impl AdminApi {
    pub fn new(store: Store, pepper: String) -> Self {
        Self { store, pepper }
    }

    /// The tenant a call manages: the one a service key names in the
    /// request, or the tenant of an ADMIN key (which may name only itself;
    /// another tenant reads as not found).
    fn managed_tenant(caller: Caller, tenant_id: &str) -> Result<TenantId, WalletError> {
        let mut violations = Violations::default();
        let named = if tenant_id.is_empty() { None } else { violations.id("tenant_id", tenant_id, TenantId) };
        match caller {
            Caller::Service => {
                if tenant_id.is_empty() {
                    violations.add("tenant_id", "is required with a service key");
                }
                violations.finish()?;
                named.ok_or(WalletError::NotFound("tenant"))
            }
            Caller::Tenant(own, _) => {
                violations.finish()?;
                match named {
                    Some(named) if named != own => Err(WalletError::NotFound("tenant")),
                    _ => Ok(own),
                }
            }
        }
    }

    /// A key the caller may manage: any with a service key, its own tenant's
    /// with an ADMIN key (another tenant's reads as not found).
    async fn managed_key(&self, caller: Caller, key_id: &str) -> Result<KeyListed, WalletError> {
        let mut violations = Violations::default();
        let id = violations.id("key_id", key_id, |id| id);
        violations.finish()?;
        let key = self.store.key(id.unwrap_or_default()).await?.ok_or(WalletError::NotFound("key"))?;
        match caller {
            Caller::Tenant(own, _) if key.tenant_id != own => Err(WalletError::NotFound("key")),
            _ => Ok(key),
        }
    }

    async fn issued(&self, issued: IssuedKey) -> Result<(pb::ApiKey, String), WalletError> {
        let key =
            self.store.key(issued.id).await?.ok_or_else(|| WalletError::internal("an issued key went missing"))?;
        Ok((key_to_pb(&key), issued.key))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::default();
        violations.required_text("name", &request.name, TENANT_NAME_LENGTH_MAX);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        violations.finish().map_err(WalletError::from)?;
        let tenant = self.store.create_tenant_once(&request.name, &request.idempotency_key, now()).await?;
        Ok(Response::new(pb::CreateTenantResponse { tenant: Some(tenant_to_pb(&tenant)) }))
    }

    async fn list_tenants(
        &self,
        _request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let tenants = self.store.list_tenants().await?;
        Ok(Response::new(pb::ListTenantsResponse { tenants: tenants.iter().map(tenant_to_pb).collect() }))
    }

    async fn issue_api_key(
        &self,
        request: Request<pb::IssueApiKeyRequest>,
    ) -> Result<Response<pb::IssueApiKeyResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let role = match pb::KeyRole::try_from(request.role) {
            Ok(pb::KeyRole::Admin) => Some(KeyRole::Admin),
            Ok(pb::KeyRole::Write) => Some(KeyRole::Write),
            Ok(pb::KeyRole::ReadOnly) => Some(KeyRole::ReadOnly),
            Ok(pb::KeyRole::Unspecified) | Err(_) => None,
        };
        let tenant = Self::managed_tenant(caller, &request.tenant_id);
        let role = role.ok_or_else(|| WalletError::field("role", "must be ADMIN, WRITE or READ_ONLY"))?;
        let issued = self.store.issue_key_with_role(tenant?, role, &self.pepper, now()).await?;
        let (key, api_key) = self.issued(issued).await?;
        Ok(Response::new(pb::IssueApiKeyResponse { key: Some(key), api_key }))
    }

    async fn issue_service_key(
        &self,
        _request: Request<pb::IssueServiceKeyRequest>,
    ) -> Result<Response<pb::IssueServiceKeyResponse>, Status> {
        let issued = self.store.issue_service_key(&self.pepper, now()).await?;
        let (key, api_key) = self.issued(issued).await?;
        Ok(Response::new(pb::IssueServiceKeyResponse { key: Some(key), api_key }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let tenant = Self::managed_tenant(caller_of(&request)?, &request.get_ref().tenant_id)?;
        if !self.store.tenant_exists(tenant).await? {
            return Err(WalletError::NotFound("tenant").into());
        }
        let keys = self.store.keys(tenant).await?;
        Ok(Response::new(pb::ListApiKeysResponse { keys: keys.iter().map(key_to_pb).collect() }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let key = self.managed_key(caller_of(&request)?, &request.get_ref().key_id).await?;
        // Already revoked: answered as it is.
        self.store.revoke_key(key.id, now()).await?;
        let key = self.store.key(key.id).await?.ok_or(WalletError::NotFound("key"))?;
        Ok(Response::new(pb::RevokeApiKeyResponse { key: Some(key_to_pb(&key)) }))
    }

    async fn rotate_api_key(
        &self,
        request: Request<pb::RotateApiKeyRequest>,
    ) -> Result<Response<pb::RotateApiKeyResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        if request.overlap_seconds > OVERLAP_SECONDS_MAX {
            return Err(WalletError::field("overlap_seconds", format!("must be 0 to {OVERLAP_SECONDS_MAX}")).into());
        }
        let old = self.managed_key(caller, &request.key_id).await?;
        let overlap = Duration::seconds(i64::from(request.overlap_seconds));
        let issued =
            self.store.rotate_key(old.id, overlap, &self.pepper, now()).await?.ok_or(WalletError::NotFound("key"))?;
        let (key, api_key) = self.issued(issued).await?;
        let replaced = self.store.key(old.id).await?.ok_or(WalletError::NotFound("key"))?;
        Ok(Response::new(pb::RotateApiKeyResponse { key: Some(key), api_key, replaced: Some(key_to_pb(&replaced)) }))
    }
}

fn tenant_to_pb(tenant: &TenantRow) -> pb::Tenant {
    pb::Tenant {
        id: tenant.id.to_string(),
        name: tenant.name.clone(),
        created_at: Some(to_timestamp(tenant.created_at)),
        active_keys: u32::try_from(tenant.active_keys).unwrap_or(u32::MAX),
    }
}

fn key_to_pb(key: &KeyListed) -> pb::ApiKey {
    pb::ApiKey {
        id: key.id.to_string(),
        tenant_id: key.tenant_id.to_string(),
        display_prefix: key.display_prefix.clone(),
        kind: if key.service { pb::CallerKind::Service } else { pb::CallerKind::Tenant }.into(),
        role: key.role.to_wire().into(),
        created_at: Some(to_timestamp(key.created_at)),
        revoked_at: key.revoked_at.map(to_timestamp),
    }
}
