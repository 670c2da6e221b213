//! Who presented a key, as a resolver answers, with recent answers cached
//! for a short time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tonic::Status;

use super::{Identity, TENANT_HEADER, TenantId};

/// Looks up who presented a key: the store that keeps the keys, or a remote
/// service that can tell.
pub trait KeyResolver: Send + Sync + 'static {
    /// `Ok(None)` for an unknown or revoked key.
    fn resolve(&self, key: String) -> BoxFuture<'static, Result<Option<Identity>, String>>;

    /// Whether `tenant` exists, asked with the service `key` that names it.
    fn tenant_exists(&self, key: String, tenant: TenantId) -> BoxFuture<'static, Result<bool, String>>;
}

/// Remembers recent answers of a resolver for a short time, so a busy client
/// does not cost a lookup per call. The cache is keyed by a digest of the
/// key, never the key itself.
pub struct Authenticator {
    resolver: Arc<dyn KeyResolver>,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Identity, Instant)>>,
    /// Tenants service calls named that exist: a tenant is never deleted,
    /// so once known it stays so (the set starts over past its bound).
    tenants: Mutex<std::collections::HashSet<TenantId>>,
}

/// Most cached keys; past this the cache is cleared rather than grown, which
/// only costs a lookup per key.
const KEY_CACHE_ENTRIES_MAX: usize = 10_000;

impl Authenticator {
    pub fn new(resolver: Arc<dyn KeyResolver>, ttl: Duration) -> Self {
        Self { resolver, ttl, cache: Mutex::new(HashMap::new()), tenants: Mutex::new(Default::default()) }
    }

    /// Ok when `tenant`, named by a service call made with `key`, exists;
    /// UNAUTHENTICATED otherwise, before the call can touch anything (an
    /// unknown tenant once failed deep in the store, as INTERNAL).
    pub async fn check_tenant(&self, key: &str, tenant: TenantId) -> Result<(), Status> {
        if self.tenants.lock().is_ok_and(|tenants| tenants.contains(&tenant)) {
            return Ok(());
        }
        let exists = self.resolver.tenant_exists(key.to_owned(), tenant).await.map_err(|cause| {
            tracing::error!(%cause, "tenant lookup failed");
            crate::status::unavailable("KEY_STORE_UNAVAILABLE", "the key store is unavailable; retry")
        })?;
        if !exists {
            return Err(Status::unauthenticated(format!("{TENANT_HEADER} names no tenant")));
        }
        if let Ok(mut tenants) = self.tenants.lock() {
            if tenants.len() >= KEY_CACHE_ENTRIES_MAX {
                tenants.clear();
            }
            tenants.insert(tenant);
        }
        Ok(())
    }

    /// Who presented `key`, or UNAUTHENTICATED.
    pub async fn authenticate(&self, key: &str) -> Result<Identity, Status> {
        self.authenticate_with(key, true).await
    }

    /// As [`Self::authenticate`], from the resolver whatever is cached.
    /// Services that resolve keys through this one (GetCaller) keep their
    /// own cache: answering them from this cache too would stack the two
    /// windows, and a revoked key would live twice as long there.
    pub async fn authenticate_fresh(&self, key: &str) -> Result<Identity, Status> {
        self.authenticate_with(key, false).await
    }

    async fn authenticate_with(&self, key: &str, cached: bool) -> Result<Identity, Status> {
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        if cached
            && let Ok(cache) = self.cache.lock()
            && let Some((identity, at)) = cache.get(&digest)
            && at.elapsed() < self.ttl
        {
            return Ok(*identity);
        }
        let resolved = self.resolver.resolve(key.to_owned()).await.map_err(|cause| {
            tracing::error!(%cause, "API key lookup failed");
            crate::status::unavailable("KEY_STORE_UNAVAILABLE", "the key store is unavailable; retry")
        })?;
        let identity = resolved.ok_or_else(|| Status::unauthenticated("unknown or revoked API key"))?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= KEY_CACHE_ENTRIES_MAX {
                cache.clear();
            }
            cache.insert(digest, (identity, Instant::now()));
        }
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use crate::auth::Caller;
    use uuid::Uuid;

    /// A resolver whose answer can be changed, counting its lookups.
    struct Switch {
        valid: std::sync::atomic::AtomicBool,
        lookups: std::sync::atomic::AtomicUsize,
    }

    impl KeyResolver for Arc<Switch> {
        fn resolve(&self, _key: String) -> BoxFuture<'static, Result<Option<Identity>, String>> {
            use std::sync::atomic::Ordering;
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let valid = self.valid.load(Ordering::SeqCst);
            Box::pin(async move { Ok(valid.then_some(Identity { caller: Caller::Service, key: None })) })
        }

        fn tenant_exists(&self, _key: String, tenant: TenantId) -> BoxFuture<'static, Result<bool, String>> {
            use std::sync::atomic::Ordering;
            self.lookups.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Ok(tenant.0.is_nil()) })
        }
    }

    /// A key store that does not answer.
    struct Down;

    impl KeyResolver for Down {
        fn resolve(&self, _key: String) -> BoxFuture<'static, Result<Option<Identity>, String>> {
            Box::pin(async { Err("connection refused".to_owned()) })
        }

        fn tenant_exists(&self, _key: String, _tenant: TenantId) -> BoxFuture<'static, Result<bool, String>> {
            Box::pin(async { Err("connection refused".to_owned()) })
        }
    }

    /// A key store that does not answer is a refusal to retry, saying when:
    /// UNAVAILABLE, KEY_STORE_UNAVAILABLE, and a RetryInfo.
    #[tokio::test]
    async fn a_key_store_that_does_not_answer_says_when_to_try_again() {
        let authenticator = Authenticator::new(Arc::new(Down), Duration::from_secs(60));
        let refusals = [
            authenticator.authenticate("rsv_some_key").await.unwrap_err(),
            authenticator.check_tenant("rsv_some_key", TenantId(Uuid::now_v7())).await.unwrap_err(),
        ];
        for status in refusals {
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert_eq!(crate::status::reason_of(&status).as_deref(), Some("KEY_STORE_UNAVAILABLE"));
            let retry =
                tonic_types::StatusExt::get_error_details(&status).retry_info().and_then(|info| info.retry_delay);
            assert_eq!(retry, Some(crate::status::UNAVAILABLE_RETRY));
        }
    }

    #[tokio::test]
    async fn a_fresh_lookup_sees_a_revocation_the_cache_still_hides() {
        use std::sync::atomic::Ordering;
        let switch = Arc::new(Switch { valid: true.into(), lookups: 0.into() });
        let authenticator = Authenticator::new(Arc::new(switch.clone()), Duration::from_secs(60));
        assert!(authenticator.authenticate("k").await.is_ok());
        assert!(authenticator.authenticate("k").await.is_ok());
        assert_eq!(switch.lookups.load(Ordering::SeqCst), 1, "the second came from the cache");
        switch.valid.store(false, Ordering::SeqCst);
        assert!(authenticator.authenticate("k").await.is_ok(), "cached for its window");
        let fresh = authenticator.authenticate_fresh("k").await.unwrap_err();
        assert_eq!(fresh.code(), tonic::Code::Unauthenticated);
    }

    #[tokio::test]
    async fn a_known_tenant_is_asked_for_once_and_an_unknown_one_refused_each_time() {
        use std::sync::atomic::Ordering;
        let switch = Arc::new(Switch { valid: true.into(), lookups: 0.into() });
        let authenticator = Authenticator::new(Arc::new(switch.clone()), Duration::from_secs(60));
        let known = TenantId(Uuid::nil());
        assert!(authenticator.check_tenant("k", known).await.is_ok());
        assert!(authenticator.check_tenant("k", known).await.is_ok());
        assert_eq!(switch.lookups.load(Ordering::SeqCst), 1, "a known tenant is remembered");
        let unknown = TenantId(Uuid::now_v7());
        for _ in 0..2 {
            let refused = authenticator.check_tenant("k", unknown).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
            assert!(refused.message().contains(TENANT_HEADER), "{}", refused.message());
        }
        assert_eq!(switch.lookups.load(Ordering::SeqCst), 3, "an unknown tenant is asked for every time");
    }
}
