//! Bearer API keys. Each key belongs to one tenant; the server keeps only a
//! peppered hash of it. A tower layer checks the `authorization` metadata of
//! every call and puts the caller's [`TenantId`] into the request extensions,
//! where handlers take it from.

mod authenticator;
mod keys;
mod layer;
mod policy;
mod wallet;

pub use self::authenticator::{Authenticator, KeyResolver};
pub use self::keys::{KEY_PREFIX, generate_key, hash_key, key_display_prefix};
pub use self::layer::{AuthLayer, AuthService, caller_of, key_of, tenant_of};
pub use self::policy::refusal;
pub use self::wallet::WalletKeyResolver;
pub use crate::ids::{KeyId, TenantId};

use tonic::Status;

/// Who presented a key, and which key it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub caller: Caller,
    /// `None` only from a wallet older than key ids, while a rolling upgrade
    /// runs both: calls then go on, unattributed.
    pub key: Option<KeyId>,
}

/// Services call each other with a service key and name the tenant they act
/// for in this metadata entry; a tenant's own key ignores it.
pub const TENANT_HEADER: &str = "x-reservoir-tenant";

/// Who a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A tenant's key, with what it may do: every call acts for that tenant.
    Tenant(TenantId, KeyRole),
    /// A Reservoir service's key: each call names its tenant in [`TENANT_HEADER`].
    Service,
}

/// What a tenant's key may do. Reads are open to every role; changes need
/// [`KeyRole::Write`]; the tenant's configuration needs [`KeyRole::Admin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRole {
    Admin,
    Write,
    ReadOnly,
}

impl KeyRole {
    /// As stored and shown: ADMIN, WRITE, READ_ONLY.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "ADMIN",
            Self::Write => "WRITE",
            Self::ReadOnly => "READ_ONLY",
        }
    }

    /// As GetCaller carries it; a wallet from before roles sends none, and
    /// its keys all act as admins.
    pub fn from_wire(role: i32) -> Option<Self> {
        use reservoir_proto::wallet::KeyRole as Wire;
        match Wire::try_from(role).ok()? {
            Wire::Admin | Wire::Unspecified => Some(Self::Admin),
            Wire::Write => Some(Self::Write),
            Wire::ReadOnly => Some(Self::ReadOnly),
        }
    }

    pub fn to_wire(self) -> reservoir_proto::wallet::KeyRole {
        use reservoir_proto::wallet::KeyRole as Wire;
        match self {
            Self::Admin => Wire::Admin,
            Self::Write => Wire::Write,
            Self::ReadOnly => Wire::ReadOnly,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ADMIN" => Some(Self::Admin),
            "WRITE" => Some(Self::Write),
            "READ_ONLY" => Some(Self::ReadOnly),
            _ => None,
        }
    }
}

/// Builds a call a service makes for a tenant: its own key, and the tenant it acts for.
pub fn service_request<T>(message: T, service_key: &str, tenant: TenantId) -> Result<tonic::Request<T>, Status> {
    let mut request = tonic::Request::new(message);
    let authorization =
        format!("Bearer {service_key}").parse().map_err(|_| Status::internal("the service key is not valid ASCII"))?;
    let tenant_value = tenant.to_string().parse().map_err(|_| Status::internal("a tenant id is not ASCII"))?;
    request.metadata_mut().insert("authorization", authorization);
    request.metadata_mut().insert(TENANT_HEADER, tenant_value);
    // Made while serving a call: what is left of that call's deadline.
    if let Some(left) = crate::deadline::remaining() {
        request.set_timeout(left);
    }
    Ok(request)
}
