//! Bounds on what callers can make a service hold: open connections, how
//! long a connection may take to start speaking HTTP/2, how long one lives,
//! calls in flight, and each tenant's rate of calls. Past a bound a call is
//! refused at once with RetryInfo, so a flood costs the caller, not this
//! process's memory.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::auth::{Caller, KeyId, TenantId};
use crate::status::retry_later;

/// The client's first bytes on an HTTP/2 connection (RFC 9113, 3.4).
const PREFACE_LENGTH: usize = 24;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Connections open at once per listener; a connection past this is
    /// closed as soon as it is accepted.
    pub max_connections: usize,
    /// How long a new connection has to send the HTTP/2 preface before it is
    /// closed: a socket opened and left silent holds nothing for long.
    pub handshake_timeout_ms: u64,
    /// How often an HTTP/2 PING (and a TCP keepalive) checks each
    /// connection's peer is still there.
    pub keepalive_interval_ms: u64,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout_ms: u64,
    /// A connection is asked to close (GOAWAY) after this long, busy or
    /// idle; clients reconnect, which also spreads them over new replicas.
    pub max_connection_age_ms: u64,
    /// How long calls and streams still open on an aged connection may go on
    /// before it is closed regardless (WatchEvents resumes from its last sequence).
    pub max_connection_age_grace_ms: u64,
    /// On SIGTERM, how long the service goes on taking calls after its
    /// health turns NOT_SERVING, before it stops accepting and finishes what
    /// is in flight: long enough for Kubernetes to take the pod out of its
    /// Service's endpoints, so no caller is refused meanwhile (0: stop at
    /// once, as `reservoir up` does).
    pub drain_delay_ms: u64,
    /// Calls in flight at once per listener, over all connections; past this a
    /// call is refused UNAVAILABLE with RetryInfo. Health checks are not
    /// counted: a probe must get its answer from an overloaded pod too. A
    /// stream counts until its response starts.
    pub max_in_flight: usize,
    /// How long a call may take until its response starts (a client's
    /// shorter grpc-timeout wins): a caller that sends headers and never its
    /// body gives its place back after this.
    pub call_timeout_ms: u64,
    /// Calls in flight at once for one tenant's keys, within `max_in_flight`:
    /// one tenant's slow calls cannot take every place (0: no share).
    pub tenant_max_in_flight: usize,
    /// Calls a second each tenant's keys may make to this service (a token
    /// bucket; 0: no limit). Service keys are not limited here.
    pub tenant_calls_per_second: u32,
    /// The bucket's depth: how many calls a tenant may make at once before
    /// the rate applies.
    pub tenant_burst: u32,
    /// Per tenant (by id): calls a second instead of `tenant_calls_per_second`
    /// (0: no limit); the burst is the same number.
    pub tenant_overrides: BTreeMap<String, u32>,
    /// Per tenant API key (by key id, as `reservoir key list` shows): calls a
    /// second that key may make, checked besides its tenant's rate, so one
    /// key (a batch job's, say) can be held below the rest; the burst is the
    /// same number.
    pub key_overrides: BTreeMap<String, u32>,
    /// Origins whose browser code may call this service with gRPC-Web, each
    /// as `scheme://host[:port]` (`https://app.example.com`): their pages
    /// are answered CORS preflights and may read the answers. Empty: only
    /// pages served from this service's own origin (and non-browser
    /// clients) can call it. No wildcard: a page from anywhere could spend
    /// a key its user holds.
    pub browser_origins: Vec<String>,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_connections: 4_096,
            handshake_timeout_ms: 10_000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            max_connection_age_ms: 30 * 60 * 1_000,
            max_connection_age_grace_ms: 5 * 60 * 1_000,
            drain_delay_ms: 0,
            max_in_flight: 2_048,
            call_timeout_ms: 60_000,
            tenant_max_in_flight: 512,
            tenant_calls_per_second: 50_000,
            tenant_burst: 50_000,
            tenant_overrides: BTreeMap::new(),
            key_overrides: BTreeMap::new(),
            browser_origins: Vec::new(),
        }
    }
}

impl LimitSettings {
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("max_connections", self.max_connections as u64),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("max_connection_age_ms", self.max_connection_age_ms),
            ("max_in_flight", self.max_in_flight as u64),
            ("call_timeout_ms", self.call_timeout_ms),
        ] {
            if value == 0 {
                return Err(format!("limits.{name} must be at least 1"));
            }
        }
        if self.tenant_calls_per_second > 0 && self.tenant_burst == 0 {
            return Err("limits.tenant_burst must be at least 1 when tenant_calls_per_second is set".into());
        }
        for tenant in self.tenant_overrides.keys() {
            if uuid::Uuid::parse_str(tenant).is_err() {
                return Err(format!("limits.tenant_overrides: {tenant:?} is not a tenant id"));
            }
        }
        for origin in &self.browser_origins {
            if !crate::cors::is_origin(origin) {
                return Err(format!(
                    "limits.browser_origins: {origin:?} is not an origin as a browser sends it, such as \
                     https://app.example.com (a scheme, a host in lower case, a port only when not the \
                     scheme's own; no path, no wildcard)"
                ));
            }
        }
        for (key, rate) in &self.key_overrides {
            if uuid::Uuid::parse_str(key).is_err() {
                return Err(format!("limits.key_overrides: {key:?} is not a key id"));
            }
            if *rate == 0 {
                return Err(format!("limits.key_overrides: {key:?} must allow at least 1 call a second"));
            }
        }
        Ok(())
    }

    fn duration(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Self::duration(self.handshake_timeout_ms)
    }

    pub fn keepalive_interval(&self) -> Duration {
        Self::duration(self.keepalive_interval_ms)
    }

    pub fn keepalive_timeout(&self) -> Duration {
        Self::duration(self.keepalive_timeout_ms)
    }

    pub fn max_connection_age(&self) -> Duration {
        Self::duration(self.max_connection_age_ms)
    }

    pub fn max_connection_age_grace(&self) -> Duration {
        Self::duration(self.max_connection_age_grace_ms)
    }

    pub fn drain_delay(&self) -> Duration {
        Self::duration(self.drain_delay_ms)
    }

    pub fn call_timeout(&self) -> Duration {
        Self::duration(self.call_timeout_ms)
    }
}

/// Counts a call or connection refused by a limit or by authentication.
pub(crate) fn refused(reason: &'static str) {
    metrics::counter!("reservoir_rpc_refused_total", "reason" => reason).increment(1);
}

// ---- connections ---------------------------------------------------------------

/// The accepted connections of `incoming`, at most `max_connections` open at
/// once (one past it is dropped, closing it, as soon as it is accepted), each
/// closed if it has not sent the HTTP/2 preface within the handshake timeout.
///
/// Written here because neither tonic nor tower bounds a listener's
/// connections (tower's limits count requests); this is only the glue: a
/// semaphore permit and a timer carried by each connection.
pub fn bounded_connections<S>(incoming: S, limits: &LimitSettings) -> impl Stream<Item = io::Result<Bounded>> + use<S>
where
    S: Stream<Item = io::Result<TcpStream>>,
{
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let handshake = limits.handshake_timeout();
    incoming.filter_map(move |accepted| {
        let open = open.clone();
        async move {
            match accepted {
                Ok(stream) => match open.try_acquire_owned() {
                    Ok(permit) => Some(Ok(Bounded { stream, _permit: permit, preface: Preface::new(handshake) })),
                    Err(_) => {
                        refused("connections");
                        None
                    }
                },
                Err(error) => Some(Err(error)),
            }
        }
    })
}

/// A connection holding its place among those allowed open.
pub struct Bounded {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    preface: Preface,
}

impl Bounded {
    /// Hands the preface's deadline to whoever reads the HTTP/2 bytes: over
    /// TLS the first bytes on the socket are the TLS handshake's, and the
    /// preface is what comes out of it.
    pub fn take_preface(&mut self) -> Preface {
        std::mem::replace(&mut self.preface, Preface { deadline: None, received: 0 })
    }
}

/// The HTTP/2 preface a new connection owes, and by when: reads fail with
/// TimedOut once the deadline passes before its bytes have arrived.
pub struct Preface {
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    received: usize,
}

impl Preface {
    fn new(within: Duration) -> Self {
        Self { deadline: Some(Box::pin(tokio::time::sleep(within))), received: 0 }
    }

    /// When the preface must have arrived; `None` once it has.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline.as_ref().map(|sleep| sleep.deadline())
    }

    /// Reads from `inner`, counting the bytes until the preface is in.
    pub fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        inner: &mut R,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if self.deadline.is_some() {
                    self.received += buf.filled().len() - before;
                    if self.received >= PREFACE_LENGTH {
                        self.deadline = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let late = self.deadline.as_mut().is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if late {
                    refused("handshake_timeout");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 preface in time")));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl Connected for Bounded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Bounded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.preface.poll_read(&mut this.stream, cx, buf)
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

// ---- calls in flight ---------------------------------------------------------------

/// How long a client refused for load is told to wait.
const OVERLOADED_RETRY: Duration = Duration::from_millis(100);

/// Calls in flight, at most `max_in_flight` over every connection of the
/// listener: tower's global concurrency limit with load shedding, the shed
/// call answered UNAVAILABLE with RetryInfo instead of tonic's generic
/// RESOURCE_EXHAUSTED.
#[derive(Clone)]
pub struct InFlightLayer {
    semaphore: Arc<Semaphore>,
}

impl InFlightLayer {
    pub fn new(limits: &LimitSettings) -> Self {
        Self { semaphore: Arc::new(Semaphore::new(limits.max_in_flight)) }
    }
}

impl<S: Clone> tower::Layer<S> for InFlightLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let limited = tower::limit::ConcurrencyLimit::with_semaphore(inner.clone(), self.semaphore.clone());
        Shed { limited: tower::load_shed::LoadShed::new(limited), probes: inner }
    }
}

/// Counts calls against the limit and answers one the load shedder refused;
/// health checks go straight through.
#[derive(Clone)]
pub struct Shed<S> {
    limited: tower::load_shed::LoadShed<tower::limit::ConcurrencyLimit<S>>,
    probes: S,
}

impl<S, B> tower::Service<http::Request<B>> for Shed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Load shedding is always ready; the probes' path is the inner service's.
        match self.probes.poll_ready(cx) {
            Poll::Ready(Ok(())) => self.limited.poll_ready(cx),
            Poll::Ready(Err(error)) => Poll::Ready(Err(error.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with("/grpc.health.v1.") {
            let answer = self.probes.call(request);
            return Box::pin(async move { answer.await.map_err(Into::into) });
        }
        let answer = self.limited.call(request);
        Box::pin(async move {
            match answer.await {
                Err(error) if error.is::<tower::load_shed::error::Overloaded>() => {
                    refused("in_flight");
                    Ok(retry_later(
                        Code::Unavailable,
                        "OVERLOADED",
                        "too many calls in flight; retry after the delay given",
                        OVERLOADED_RETRY,
                    )
                    .into_http())
                }
                other => other,
            }
        })
    }
}

// ---- each tenant's rate ----------------------------------------------------------------

/// Each tenant's calls a second and its share of the calls in flight,
/// checked after authentication (the tenant is known then): governor's
/// token buckets, one per tenant (one of its own for a tenant with an
/// override, and one more for a key with an override of its own), and a
/// semaphore per tenant.
#[derive(Clone)]
pub struct TenantRateLayer {
    buckets: Option<Arc<TenantBuckets>>,
    shares: Option<Arc<TenantShares>>,
}

/// Each tenant's places among the calls in flight: a semaphore per tenant
/// seen (only authenticated tenants, so as many as the deployment has).
struct TenantShares {
    per_tenant: usize,
    tenants: std::sync::Mutex<std::collections::HashMap<TenantId, Arc<Semaphore>>>,
}

impl TenantShares {
    /// A place for one of the tenant's calls, if it has one free.
    fn take(&self, tenant: TenantId) -> Option<OwnedSemaphorePermit> {
        let semaphore = self
            .tenants
            .lock()
            .ok()?
            .entry(tenant)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
            .clone();
        semaphore.try_acquire_owned().ok()
    }
}

struct TenantBuckets {
    /// Tenants on the default rate; `None` when it is unlimited.
    default: Option<DefaultKeyedRateLimiter<TenantId>>,
    /// Tenants with their own rate; `None` for one without a limit.
    overrides: BTreeMap<TenantId, Option<DefaultDirectRateLimiter>>,
    /// Keys held to a rate of their own besides their tenant's.
    keys: BTreeMap<KeyId, DefaultDirectRateLimiter>,
}

fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)))
}

impl TenantRateLayer {
    pub fn new(limits: &LimitSettings) -> Self {
        let default = quota(limits.tenant_calls_per_second, limits.tenant_burst).map(RateLimiter::keyed);
        let overrides: BTreeMap<TenantId, Option<DefaultDirectRateLimiter>> = limits
            .tenant_overrides
            .iter()
            .filter_map(|(tenant, rate)| {
                let tenant = TenantId(uuid::Uuid::parse_str(tenant).ok()?);
                Some((tenant, quota(*rate, *rate).map(RateLimiter::direct)))
            })
            .collect();
        let keys: BTreeMap<KeyId, DefaultDirectRateLimiter> = limits
            .key_overrides
            .iter()
            .filter_map(|(key, rate)| {
                let key = KeyId(uuid::Uuid::parse_str(key).ok()?);
                Some((key, quota(*rate, *rate).map(RateLimiter::direct)?))
            })
            .collect();
        let unlimited = default.is_none() && overrides.values().all(Option::is_none) && keys.is_empty();
        let shares = (limits.tenant_max_in_flight > 0)
            .then(|| Arc::new(TenantShares { per_tenant: limits.tenant_max_in_flight, tenants: Default::default() }));
        Self { buckets: (!unlimited).then(|| Arc::new(TenantBuckets { default, overrides, keys })), shares }
    }
}

impl TenantBuckets {
    /// How long the key must wait, if it has a bucket of its own and that
    /// is empty, and the bucket's calls a second.
    fn key_wait(&self, key: KeyId) -> Option<(Duration, u64)> {
        delay_of(self.keys.get(&key)?.check())
    }

    /// How long the tenant must wait, if its bucket is empty, and the
    /// bucket's calls a second.
    fn wait(&self, tenant: TenantId) -> Option<(Duration, u64)> {
        let checked = match self.overrides.get(&tenant) {
            Some(None) => return None,
            Some(Some(bucket)) => bucket.check(),
            None => self.default.as_ref()?.check_key(&tenant),
        };
        delay_of(checked)
    }
}

/// How long until a bucket that refused has a token again, and its calls a
/// second; none if it gave one.
fn delay_of(
    checked: Result<(), governor::NotUntil<<governor::clock::DefaultClock as governor::clock::Clock>::Instant>>,
) -> Option<(Duration, u64)> {
    let clock = governor::clock::DefaultClock::default();
    checked.err().map(|not_until| {
        let interval = not_until.quota().replenish_interval().as_nanos().max(1);
        let per_second = u64::try_from(1_000_000_000 / interval).unwrap_or(u64::MAX);
        (not_until.wait_time_from(governor::clock::Clock::now(&clock)), per_second)
    })
}

impl<S> tower::Layer<S> for TenantRateLayer {
    type Service = TenantRate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TenantRate { inner, buckets: self.buckets.clone(), shares: self.shares.clone() }
    }
}

#[derive(Clone)]
pub struct TenantRate<S> {
    inner: S,
    buckets: Option<Arc<TenantBuckets>>,
    shares: Option<Arc<TenantShares>>,
}

impl<S, B> tower::Service<http::Request<B>> for TenantRate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let tenant = match request.extensions().get::<Caller>() {
            Some(Caller::Tenant(tenant, _)) => Some(*tenant),
            _ => None,
        };
        // A key with a rate of its own is held to it first, then to its tenant's.
        let key = request.extensions().get::<KeyId>().copied();
        let limited = tenant.zip(self.buckets.as_ref()).and_then(|(tenant, buckets)| {
            let key_wait = key.and_then(|key| buckets.key_wait(key));
            key_wait.map(|wait| ("key_rate", "key", "this key's calls a second are over its own limit", wait)).or_else(
                || {
                    buckets
                        .wait(tenant)
                        .map(|wait| ("tenant_rate", "tenant", "this tenant's calls a second are over its limit", wait))
                },
            )
        });
        if let Some((counted, scope, message, (delay, per_second))) = limited {
            refused(counted);
            let message = format!("{message} ({per_second}); retry after the delay given");
            // Which limit, and how many calls a second it allows.
            let metadata = [("scope", scope.to_owned()), ("calls_per_second", per_second.to_string())];
            let status =
                crate::status::retry_later_with(Code::ResourceExhausted, "RATE_LIMITED", message, delay, metadata);
            return Box::pin(futures::future::ready(Ok(status.into_http())));
        }
        let place = match (&self.shares, tenant) {
            (Some(shares), Some(tenant)) => match shares.take(tenant) {
                Some(place) => Some(place),
                None => {
                    refused("tenant_in_flight");
                    let status = retry_later(
                        Code::ResourceExhausted,
                        "TENANT_IN_FLIGHT",
                        "this tenant has as many calls in flight as it may; retry after the delay given",
                        OVERLOADED_RETRY,
                    );
                    return Box::pin(futures::future::ready(Ok(status.into_http())));
                }
            },
            _ => None,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answered = answer.await;
            drop(place);
            answered
        })
    }
}
