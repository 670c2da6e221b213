//! The tower layer that authenticates every call, and what it leaves on
//! the request for handlers.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use uuid::Uuid;

use super::policy::{audit, audited_method};
use super::{Authenticator, Caller, Identity, KeyId, TENANT_HEADER, TenantId, refusal};

/// The call other services resolve keys with (see [`WalletKeyResolver`](super::WalletKeyResolver)).
const KEY_RESOLUTION_PATH: &str = "/reservoir.wallet.v1.WalletService/GetCaller";

/// Calls to these services need no key: probes and tooling must reach them.
fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// The bearer key of a request's `authorization` metadata.
fn bearer_key<B>(request: &http::Request<B>) -> Option<&str> {
    let value = request.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let key = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?;
    Some(key.trim())
}

/// The tenant a service call acts for.
fn acting_tenant<B>(request: &http::Request<B>) -> Option<TenantId> {
    let value = request.headers().get(TENANT_HEADER)?.to_str().ok()?;
    Uuid::parse_str(value.trim()).ok().map(TenantId)
}

/// The tower layer that authenticates every non-public call.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, authenticator: self.authenticator.clone() }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh clone
        // stays for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            if is_public(request.uri().path()) {
                return inner.call(request).await;
            }
            let Some(key) = bearer_key(&request).map(str::to_owned) else {
                crate::limits::refused("unauthenticated");
                return Ok(Status::unauthenticated("missing bearer API key in authorization metadata").into_http());
            };
            let resolving_for_a_service = request.uri().path() == KEY_RESOLUTION_PATH;
            let checked = if resolving_for_a_service {
                authenticator.authenticate_fresh(&key).await
            } else {
                authenticator.authenticate(&key).await
            };
            let Identity { caller, key: key_id } = match checked {
                Ok(identity) => identity,
                Err(status) => {
                    crate::limits::refused("unauthenticated");
                    return Ok(status.into_http());
                }
            };
            if let Some(status) = refusal(caller, request.uri().path()) {
                crate::limits::refused("key_role");
                return Ok(status.into_http());
            }
            let tenant = match caller {
                Caller::Tenant(tenant, _) => Some(tenant),
                Caller::Service => acting_tenant(&request),
            };
            if caller == Caller::Service
                && let Some(tenant) = tenant
                && let Err(status) = authenticator.check_tenant(&key, tenant).await
            {
                return Ok(status.into_http());
            }
            request.extensions_mut().insert(caller);
            if let Some(key_id) = key_id {
                request.extensions_mut().insert(key_id);
            }
            if let Some(tenant) = tenant {
                request.extensions_mut().insert(tenant);
            }
            let audited = audited_method(request.uri().path());
            let result = inner.call(request).await;
            if let Some(method) = audited {
                audit(Identity { caller, key: key_id }, tenant, method, &result);
            }
            result
        })
    }
}

/// The caller's tenant, as the auth layer left it on the request.
pub fn tenant_of<T>(request: &tonic::Request<T>) -> Result<TenantId, Status> {
    if let Some(tenant) = request.extensions().get::<TenantId>() {
        return Ok(*tenant);
    }
    match request.extensions().get::<Caller>() {
        Some(Caller::Service) => {
            Err(Status::permission_denied(format!("a service key must name the tenant it acts for in {TENANT_HEADER}")))
        }
        _ => Err(Status::unauthenticated("missing bearer API key in authorization metadata")),
    }
}

/// Who made the call, as the auth layer left it on the request.
pub fn caller_of<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .copied()
        .ok_or_else(|| Status::unauthenticated("missing bearer API key in authorization metadata"))
}

/// The id of the key that made the call, as the auth layer left it on the
/// request (none on public calls).
pub fn key_of<T>(request: &tonic::Request<T>) -> Option<KeyId> {
    request.extensions().get::<KeyId>().copied()
}
