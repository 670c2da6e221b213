//! Bearer API keys. Each key belongs to one tenant; the server keeps only a
//! peppered hash of it. A tower layer checks the `authorization` metadata of
//! every call and puts the caller's [`TenantId`] into the request extensions,
//! where handlers take it from.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::Status;
use uuid::Uuid;

/// The tenant every row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub Uuid);

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Every key starts with this, so a leaked key is recognisable in logs and by scanners.
pub const KEY_PREFIX: &str = "rsv_";

/// A fresh API key: the prefix and 244 random bits from two v4 uuids.
pub fn generate_key() -> String {
    format!(
        "{KEY_PREFIX}{}{}",
        Uuid::new_v4().simple(),
        Uuid::new_v4().simple()
    )
}

/// The first characters of a key, kept in the clear so an operator can tell keys apart.
pub fn key_display_prefix(key: &str) -> String {
    key.chars().take(12).collect()
}

/// HMAC-SHA-256 of the key under the pepper, hex-encoded. Keys are long and
/// random, so a fast hash is enough; the pepper keeps a stolen table useless.
pub fn hash_key(pepper: &str, key: &str) -> String {
    // HMAC accepts a key of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(pepper.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(key.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Looks up the tenant of a key hash; implemented by whichever store keeps the keys.
pub trait KeyResolver: Send + Sync + 'static {
    /// `Ok(None)` for an unknown or revoked key.
    fn resolve(&self, key_hash: String) -> BoxFuture<'static, Result<Option<TenantId>, String>>;
}

/// Remembers recent answers of a resolver for a short time, so a busy client
/// does not cost a database read per call.
pub struct Authenticator {
    resolver: Arc<dyn KeyResolver>,
    pepper: String,
    ttl: Duration,
    cache: Mutex<HashMap<String, (TenantId, Instant)>>,
}

/// Most cached keys; past this the cache is cleared rather than grown, which
/// only costs a lookup per key.
const KEY_CACHE_ENTRIES_MAX: usize = 10_000;

impl Authenticator {
    pub fn new(resolver: Arc<dyn KeyResolver>, pepper: String, ttl: Duration) -> Self {
        Self {
            resolver,
            pepper,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant of a presented key, or UNAUTHENTICATED.
    pub async fn authenticate(&self, key: &str) -> Result<TenantId, Status> {
        let hash = hash_key(&self.pepper, key);
        if let Ok(cache) = self.cache.lock()
            && let Some((tenant, at)) = cache.get(&hash)
            && at.elapsed() < self.ttl
        {
            return Ok(*tenant);
        }
        let resolved = self.resolver.resolve(hash.clone()).await.map_err(|cause| {
            tracing::error!(%cause, "API key lookup failed");
            Status::unavailable("the key store is unavailable")
        })?;
        let tenant =
            resolved.ok_or_else(|| Status::unauthenticated("unknown or revoked API key"))?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= KEY_CACHE_ENTRIES_MAX {
                cache.clear();
            }
            cache.insert(hash, (tenant, Instant::now()));
        }
        Ok(tenant)
    }
}

/// Calls to these services need no key: probes and tooling must reach them.
fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// The bearer key of a request's `authorization` metadata.
fn bearer_key<B>(request: &http::Request<B>) -> Option<&str> {
    let value = request
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(key.trim())
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
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
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
                return Ok(Status::unauthenticated(
                    "missing bearer API key in authorization metadata",
                )
                .into_http());
            };
            match authenticator.authenticate(&key).await {
                Ok(tenant) => {
                    request.extensions_mut().insert(tenant);
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// The caller's tenant, as the auth layer left it on the request.
pub fn tenant_of<T>(request: &tonic::Request<T>) -> Result<TenantId, Status> {
    request
        .extensions()
        .get::<TenantId>()
        .copied()
        .ok_or_else(|| Status::unauthenticated("missing bearer API key in authorization metadata"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_hash_depends_on_the_pepper_and_is_stable() {
        let key = generate_key();
        assert!(key.starts_with(KEY_PREFIX));
        assert_eq!(key.len(), KEY_PREFIX.len() + 64);
        assert_eq!(hash_key("p", &key), hash_key("p", &key));
        assert_ne!(hash_key("p", &key), hash_key("q", &key));
        assert_ne!(hash_key("p", &key), hash_key("p", &generate_key()));
    }
}
