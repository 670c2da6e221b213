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
use sha2::{Digest, Sha256};
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

/// An API key's id in the wallet's key table (never the key itself): what
/// ledger entries and configuration changes record as the key that made
/// them. The auth layer puts it into the request extensions beside the
/// [`Caller`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub Uuid);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who presented a key, and which key it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub caller: Caller,
    /// `None` only from a wallet older than key ids, while a rolling upgrade
    /// runs both: calls then go on, unattributed.
    pub key: Option<KeyId>,
}

/// Every key starts with this, so a leaked key is recognisable in logs and by scanners.
pub const KEY_PREFIX: &str = "rsv_";

/// A fresh API key: the prefix and 244 random bits from two v4 uuids.
pub fn generate_key() -> String {
    format!("{KEY_PREFIX}{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
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

/// Calls only the suite's own services make, with a service key: a tenant's
/// key is refused on them whatever its role (money arrives through the
/// payment flow, not by a tenant saying so).
const SERVICE_ONLY: &[&str] = &[
    "/reservoir.invoicing.v1.InvoicingService/MarkInvoicePaid",
    "/reservoir.payments.v1.PaymentsService/ConfirmPayment",
];

/// Changes to a tenant's configuration: what it charges, where its events
/// go, what its vouchers are worth, its wallet settings.
const ADMIN_ONLY: &[&str] = &[
    "/reservoir.wallet.v1.WalletService/UpdateTenantSettings",
    "/reservoir.metering.v1.MeteringService/CreateMeter",
    "/reservoir.metering.v1.MeteringService/SetPrice",
    "/reservoir.invoicing.v1.InvoicingService/UpdateBillingSettings",
    "/reservoir.invoicing.v1.InvoicingService/UpdateReportSchedule",
    "/reservoir.orchestrator.v1.WebhookService/CreateWebhookEndpoint",
    "/reservoir.orchestrator.v1.WebhookService/UpdateWebhookEndpoint",
    "/reservoir.orchestrator.v1.WebhookService/RotateWebhookSecret",
    "/reservoir.payments.v1.PaymentsService/CreateVoucherBatch",
];

/// The configuration changes and service-only calls, as the audit log names
/// them: only these static paths, so no caller can choose what is logged.
fn audited_method(path: &str) -> Option<&'static str> {
    ADMIN_ONLY.iter().chain(SERVICE_ONLY).find(|method| **method == path).copied()
}

/// One line of the audit log (target `reservoir::audit`) for a configuration
/// change or service-only call that got past the key check: which key made
/// it, for which tenant, and how it ended. Changes of money are recorded on
/// the ledger entries they write instead, each with its key id.
fn audit<B, E>(identity: Identity, tenant: Option<TenantId>, method: &str, result: &Result<http::Response<B>, E>) {
    let code = crate::metrics::code_of(result);
    let (kind, role) = match identity.caller {
        Caller::Tenant(_, role) => ("tenant", role.as_str()),
        Caller::Service => ("service", ""),
    };
    tracing::info!(
        target: "reservoir::audit",
        key_id = identity.key.map(|key| key.to_string()).unwrap_or_default(),
        caller = kind,
        role,
        tenant = tenant.map(|tenant| tenant.to_string()).unwrap_or_default(),
        method,
        code = ?code,
        "audited call"
    );
}

/// Whether the method at `path` only reads: by the verb its name starts with.
fn only_reads(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or_default();
    ["Get", "List", "Watch", "Export", "Quote"].iter().any(|verb| method.starts_with(verb))
}

/// Why `caller` may not call the method at `path`, if it may not:
/// PERMISSION_DENIED with reason SERVICE_KEY_REQUIRED or KEY_ROLE.
pub fn refusal(caller: Caller, path: &str) -> Option<Status> {
    let Caller::Tenant(_, role) = caller else {
        return None;
    };
    if SERVICE_ONLY.contains(&path) {
        return Some(crate::status::with_reason(
            tonic::Code::PermissionDenied,
            "SERVICE_KEY_REQUIRED",
            "this call is made by Reservoir's own services, with a service key",
        ));
    }
    let needed = if only_reads(path) {
        return None;
    } else if ADMIN_ONLY.contains(&path) {
        KeyRole::Admin
    } else {
        KeyRole::Write
    };
    let allowed = match needed {
        KeyRole::Admin => role == KeyRole::Admin,
        _ => role != KeyRole::ReadOnly,
    };
    (!allowed).then(|| {
        crate::status::with_reason(
            tonic::Code::PermissionDenied,
            "KEY_ROLE",
            format!("this key's role is {}; this call needs {}", role.as_str(), needed.as_str()),
        )
    })
}

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

/// The call other services resolve keys with (see [`WalletKeyResolver`]).
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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

    #[test]
    fn each_role_reaches_what_it_may() {
        let tenant = TenantId(Uuid::nil());
        let reads = "/reservoir.wallet.v1.WalletService/GetBalance";
        let change = "/reservoir.wallet.v1.WalletService/Debit";
        let configuration = "/reservoir.metering.v1.MeteringService/SetPrice";
        let service_only = "/reservoir.payments.v1.PaymentsService/ConfirmPayment";
        let reason = |caller, path| refusal(caller, path).map(|status| crate::status::reason_of(&status));
        for role in [KeyRole::Admin, KeyRole::Write, KeyRole::ReadOnly] {
            let caller = Caller::Tenant(tenant, role);
            assert_eq!(reason(caller, reads), None, "{role:?} reads");
            assert_eq!(reason(caller, service_only), Some(Some("SERVICE_KEY_REQUIRED".into())), "{role:?}");
        }
        assert_eq!(reason(Caller::Tenant(tenant, KeyRole::Admin), change), None);
        assert_eq!(reason(Caller::Tenant(tenant, KeyRole::Admin), configuration), None);
        assert_eq!(reason(Caller::Tenant(tenant, KeyRole::Write), change), None);
        assert_eq!(reason(Caller::Tenant(tenant, KeyRole::Write), configuration), Some(Some("KEY_ROLE".into())));
        assert_eq!(reason(Caller::Tenant(tenant, KeyRole::ReadOnly), change), Some(Some("KEY_ROLE".into())));
        assert_eq!(reason(Caller::Tenant(tenant, KeyRole::ReadOnly), configuration), Some(Some("KEY_ROLE".into())));
        for path in [reads, change, configuration, service_only] {
            assert!(refusal(Caller::Service, path).is_none(), "services reach {path}");
        }
        for role in [KeyRole::Admin, KeyRole::Write, KeyRole::ReadOnly] {
            assert_eq!(KeyRole::parse(role.as_str()), Some(role));
        }
    }

    /// Every path the policy names is a method some service serves.
    #[test]
    fn the_policy_names_real_methods() {
        let served: std::collections::HashSet<String> =
            crate::metrics::method_paths(&[reservoir_proto::FILE_DESCRIPTOR_SET])
                .into_iter()
                .map(|(_, path)| path)
                .collect();
        for path in SERVICE_ONLY.iter().chain(ADMIN_ONLY) {
            assert!(served.contains(*path), "{path} is not a method");
        }
    }

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
