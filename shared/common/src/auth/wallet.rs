//! Resolving keys by asking the wallet, which keeps them.

use futures::future::BoxFuture;
use uuid::Uuid;

use super::{Caller, Identity, KeyId, KeyResolver, KeyRole, TenantId, service_request};

/// Resolves keys by asking the wallet, which keeps them: how every other
/// service authenticates its callers without reading the wallet's tables.
pub struct WalletKeyResolver {
    channel: crate::channel::ServiceChannel,
}

impl WalletKeyResolver {
    pub fn new(channel: crate::channel::ServiceChannel) -> Self {
        Self { channel }
    }
}

impl KeyResolver for WalletKeyResolver {
    fn resolve(&self, key: String) -> BoxFuture<'static, Result<Option<Identity>, String>> {
        use reservoir_proto::wallet::{GetCallerRequest, wallet_service_client::WalletServiceClient};
        let channel = self.channel.clone();
        Box::pin(async move {
            let mut request = tonic::Request::new(GetCallerRequest {});
            let Ok(value) = format!("Bearer {key}").parse() else { return Ok(None) };
            request.metadata_mut().insert("authorization", value);
            match WalletServiceClient::new(channel).get_caller(request).await {
                Ok(response) => identity_from(response.into_inner()).map(Some),
                Err(status) if status.code() == tonic::Code::Unauthenticated => Ok(None),
                Err(status) => Err(format!("asking the wallet who holds a key: {status}")),
            }
        })
    }

    /// Asks GetCaller with the key and the tenant named: the wallet's own
    /// auth layer refuses a tenant it does not have.
    fn tenant_exists(&self, key: String, tenant: TenantId) -> BoxFuture<'static, Result<bool, String>> {
        use reservoir_proto::wallet::{GetCallerRequest, wallet_service_client::WalletServiceClient};
        let channel = self.channel.clone();
        Box::pin(async move {
            let Ok(request) = service_request(GetCallerRequest {}, &key, tenant) else { return Ok(false) };
            match WalletServiceClient::new(channel).get_caller(request).await {
                Ok(_) => Ok(true),
                Err(status) if status.code() == tonic::Code::Unauthenticated => Ok(false),
                Err(status) => Err(format!("asking the wallet whether a tenant exists: {status}")),
            }
        })
    }
}

/// Who GetCaller says holds a key.
fn identity_from(response: reservoir_proto::wallet::GetCallerResponse) -> Result<Identity, String> {
    use reservoir_proto::wallet::CallerKind;
    let Some(role) = KeyRole::from_wire(response.role) else {
        return Err("the wallet answered an unknown key role".to_owned());
    };
    // A wallet from before key ids names none.
    let key = match response.key_id.as_str() {
        "" => None,
        id => Some(
            Uuid::parse_str(id).map(KeyId).map_err(|error| format!("the wallet named a malformed key id: {error}"))?,
        ),
    };
    let caller = match CallerKind::try_from(response.kind) {
        Ok(CallerKind::Tenant) => Uuid::parse_str(&response.tenant_id)
            .map(|id| Caller::Tenant(TenantId(id), role))
            .map_err(|error| format!("the wallet named a malformed tenant: {error}"))?,
        Ok(CallerKind::Service) => Caller::Service,
        _ => return Err("the wallet answered an unknown caller kind".to_owned()),
    };
    Ok(Identity { caller, key })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_wallet_from_before_key_ids_still_answers_who_holds_a_key() {
        use reservoir_proto::wallet::{CallerKind, GetCallerResponse, KeyRole as Wire};
        let tenant = Uuid::now_v7();
        let older = GetCallerResponse {
            kind: CallerKind::Tenant.into(),
            tenant_id: tenant.to_string(),
            role: Wire::Write.into(),
            key_id: String::new(),
        };
        let identity = identity_from(older.clone()).unwrap();
        assert_eq!(identity, Identity { caller: Caller::Tenant(TenantId(tenant), KeyRole::Write), key: None });
        let key = Uuid::now_v7();
        let current = GetCallerResponse { key_id: key.to_string(), ..older.clone() };
        assert_eq!(identity_from(current).unwrap().key, Some(KeyId(key)));
        assert!(identity_from(GetCallerResponse { key_id: "k".into(), ..older }).is_err());
    }
}
