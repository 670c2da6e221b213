//! The serving loop's bounds, seen from a client: a silent connection is
//! closed after the handshake timeout, connections past the limit are closed
//! at once, calls past the in-flight limit and a tenant past its rate are
//! refused with RetryInfo, and an aged connection is closed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reservoir_common::auth::{Authenticator, Caller, Identity, KeyId, KeyResolver, KeyRole, TenantId};
use reservoir_common::limits::LimitSettings;
use reservoir_common::status::reason_of;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic::codegen::http;
use tonic_types::StatusExt;

const TENANT_KEY: &str = "tenant-key";
const OTHER_TENANT_KEY: &str = "other-tenant-key";
const SERVICE_KEY: &str = "service-key";
/// A second key of the first tenant.
const SECOND_TENANT_KEY: &str = "second-tenant-key";
const TENANT: TenantId = TenantId(uuid::Uuid::from_u128(1));
const OTHER_TENANT: TenantId = TenantId(uuid::Uuid::from_u128(2));

struct Keys;

impl KeyResolver for Keys {
    fn resolve(&self, key: String) -> BoxFuture<'static, Result<Option<Identity>, String>> {
        Box::pin(async move {
            let (caller, id) = match key.as_str() {
                TENANT_KEY => (Caller::Tenant(TENANT, KeyRole::Admin), 11),
                OTHER_TENANT_KEY => (Caller::Tenant(OTHER_TENANT, KeyRole::Admin), 12),
                SERVICE_KEY => (Caller::Service, 13),
                SECOND_TENANT_KEY => (Caller::Tenant(TENANT, KeyRole::Write), 14),
                _ => return Ok(None),
            };
            Ok(Some(Identity { caller, key: Some(KeyId(uuid::Uuid::from_u128(id))) }))
        })
    }

    fn tenant_exists(&self, _key: String, tenant: TenantId) -> BoxFuture<'static, Result<bool, String>> {
        Box::pin(async move { Ok(tenant == TENANT || tenant == OTHER_TENANT) })
    }
}

/// A method that takes half a second to answer.
#[derive(Clone)]
struct Slow;

impl tonic::server::NamedService for Slow {
    const NAME: &'static str = "test.Slow";
}

impl tower::Service<http::Request<tonic::body::Body>> for Slow {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        // What the handler knows of its caller's deadline, and what a call it
        // made to another service would send on, both in its answer.
        let known = reservoir_common::deadline::remaining().map(|left| left.as_millis());
        let sent = reservoir_common::auth::service_request((), SERVICE_KEY, TENANT)
            .unwrap()
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| reservoir_common::deadline::parse_grpc_timeout(value.to_str().unwrap()))
            .map(|left| left.as_millis());
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let message = format!("slow, then nothing; deadline in {known:?} ms, sent on as {sent:?} ms");
            Ok(tonic::Status::unimplemented(message).into_http())
        })
    }
}

/// Serves the slow method within `limits` until the test ends.
async fn start(limits: LimitSettings) -> SocketAddr {
    start_until(limits, std::future::pending()).await.0
}

/// Serves the slow method within `limits` until `shutdown`; the server's
/// task ends once it has stopped.
async fn start_until(
    limits: LimitSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let authenticator = Arc::new(Authenticator::new(Arc::new(Keys), Duration::from_secs(60)));
    let server = tokio::spawn(async move {
        let port = reservoir_common::serve::Port {
            listener,
            service_names: &["test.Slow"],
            authenticator,
            limits: &limits,
            tls: &reservoir_common::tls::TlsSettings::default(),
            metrics: None,
            database: None,
        };
        reservoir_common::serve::serve(port, tonic::service::Routes::new(Slow), shutdown).await.unwrap();
    });
    (address, server)
}

async fn call(address: SocketAddr, key: &str, tenant: Option<TenantId>) -> tonic::Status {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    call_on(channel, key, tenant).await
}

/// A call to the slow method.
async fn call_on(channel: tonic::transport::Channel, key: &str, tenant: Option<TenantId>) -> tonic::Status {
    call_path(channel, key, tenant, "/test.Slow/Call").await
}

/// A call to a method nobody serves: UNIMPLEMENTED at once, once past the limits.
async fn quick_call(channel: tonic::transport::Channel, key: &str, tenant: Option<TenantId>) -> tonic::Status {
    call_path(channel, key, tenant, "/test.Quick/Call").await
}

async fn call_path(
    channel: tonic::transport::Channel,
    key: &str,
    tenant: Option<TenantId>,
    path: &'static str,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(());
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    if let Some(tenant) = tenant {
        request.metadata_mut().insert("x-reservoir-tenant", tenant.0.to_string().parse().unwrap());
    }
    let codec: tonic_prost::ProstCodec<(), ()> = tonic_prost::ProstCodec::default();
    match grpc.unary(request, http::uri::PathAndQuery::from_static(path), codec).await {
        Ok(_) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

/// A call's deadline reaches its handler, and what is left of it goes with
/// the calls the handler makes to other services; a call without one has
/// none and sends none.
#[tokio::test]
async fn a_call_s_deadline_reaches_its_handler_and_the_calls_it_makes() {
    let address = start(LimitSettings::default()).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(());
    request.metadata_mut().insert("authorization", format!("Bearer {TENANT_KEY}").parse().unwrap());
    request.set_timeout(Duration::from_secs(3));
    let codec: tonic_prost::ProstCodec<(), ()> = tonic_prost::ProstCodec::default();
    let status = grpc.unary(request, http::uri::PathAndQuery::from_static("/test.Slow/Call"), codec).await.unwrap_err();
    let message = status.message();
    let millis = |after: &str| -> u128 {
        message
            .split(after)
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .and_then(|millis| millis.parse().ok())
            .unwrap_or_else(|| panic!("no {after} in {message:?}"))
    };
    let (known, sent) = (millis("deadline in Some("), millis("sent on as Some("));
    assert!((2_000..=3_000).contains(&known), "{message}");
    assert!(sent <= known && sent + 100 >= known, "{message}");
    let without = call_on(channel, TENANT_KEY, None).await;
    assert!(without.message().ends_with("deadline in None ms, sent on as None ms"), "{}", without.message());
}

/// Reads until the server closes the connection; how long that took.
async fn closed_within(mut stream: TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buffer = [0_u8; 1024];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn a_connection_that_never_speaks_is_closed_after_the_handshake_timeout() {
    let address = start(LimitSettings { handshake_timeout_ms: 300, ..LimitSettings::default() }).await;
    let silent = TcpStream::connect(address).await.unwrap();
    let took = closed_within(silent, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(250), "closed after {took:?}, before the timeout");
    // One that speaks HTTP/2 in time is served.
    let status = call(address, TENANT_KEY, None).await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn a_connection_past_the_limit_is_closed_at_once() {
    let address = start(LimitSettings { max_connections: 2, ..LimitSettings::default() }).await;
    let _first = TcpStream::connect(address).await.unwrap();
    let _second = TcpStream::connect(address).await.unwrap();
    let mut third = TcpStream::connect(address).await.unwrap();
    // The server may close before or after the client writes.
    let _ = third.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let took = closed_within(third, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
}

#[tokio::test]
async fn calls_past_the_in_flight_limit_are_refused_with_retry_info_and_probes_are_answered() {
    let address = start(LimitSettings { max_in_flight: 2, ..LimitSettings::default() }).await;
    let calls: Vec<_> = (0..6).map(|_| tokio::spawn(call(address, TENANT_KEY, None))).collect();
    let probe = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.unwrap());
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_ok()
    });
    let mut answered = 0;
    let mut refused = 0;
    for call in calls {
        let status = call.await.unwrap();
        match status.code() {
            Code::Unimplemented => answered += 1,
            Code::Unavailable => {
                refused += 1;
                assert_eq!(reason_of(&status).as_deref(), Some("OVERLOADED"));
                let retry = status.get_error_details().retry_info().expect("RetryInfo").retry_delay;
                assert!(retry.is_some_and(|delay| delay > Duration::ZERO), "{retry:?}");
            }
            other => panic!("unexpected {other:?}: {status:?}"),
        }
    }
    assert_eq!(answered, 2, "as many answered as the limit");
    assert!(probe.await.unwrap(), "a health check is answered while the limit is full");
    assert_eq!(refused, 4);
    // Once they are done, calls go through again.
    assert_eq!(call(address, TENANT_KEY, None).await.code(), Code::Unimplemented);
}

#[tokio::test]
async fn a_tenant_past_its_rate_is_refused_with_retry_info_and_others_are_not() {
    let limits = LimitSettings {
        tenant_calls_per_second: 1,
        tenant_burst: 3,
        tenant_overrides: BTreeMap::from([(OTHER_TENANT.0.to_string(), 0)]),
        ..LimitSettings::default()
    };
    let address = start(limits).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    for _ in 0..3 {
        let status = quick_call(channel.clone(), TENANT_KEY, None).await;
        assert_eq!(status.code(), Code::Unimplemented, "within the burst: {status:?}");
    }
    let status = quick_call(channel.clone(), TENANT_KEY, None).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason_of(&status).as_deref(), Some("RATE_LIMITED"));
    let retry = status.get_error_details().retry_info().expect("RetryInfo").retry_delay.expect("a delay");
    assert!(retry > Duration::ZERO && retry <= Duration::from_secs(1), "{retry:?}");
    // The ErrorInfo names the limit met.
    let info = status.get_error_details().error_info().expect("ErrorInfo").clone();
    assert_eq!(info.metadata.get("scope").map(String::as_str), Some("tenant"), "{info:?}");
    assert_eq!(info.metadata.get("calls_per_second").map(String::as_str), Some("1"), "{info:?}");
    // The tenant with no limit of its own, and service keys, go on.
    for _ in 0..10 {
        assert_eq!(quick_call(channel.clone(), OTHER_TENANT_KEY, None).await.code(), Code::Unimplemented);
        assert_eq!(quick_call(channel.clone(), SERVICE_KEY, Some(TENANT)).await.code(), Code::Unimplemented);
    }
    // After the delay given, the tenant is served again.
    tokio::time::sleep(retry).await;
    assert_eq!(quick_call(channel, TENANT_KEY, None).await.code(), Code::Unimplemented);
}

#[tokio::test]
async fn a_key_held_to_a_rate_of_its_own_is_refused_while_its_tenants_other_keys_go_on() {
    let limits = LimitSettings {
        key_overrides: BTreeMap::from([(uuid::Uuid::from_u128(11).to_string(), 2)]),
        ..LimitSettings::default()
    };
    assert!(limits.validate().is_ok());
    let address = start(limits).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    for _ in 0..2 {
        assert_eq!(quick_call(channel.clone(), TENANT_KEY, None).await.code(), Code::Unimplemented);
    }
    let status = quick_call(channel.clone(), TENANT_KEY, None).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason_of(&status).as_deref(), Some("RATE_LIMITED"));
    let retry = status.get_error_details().retry_info().expect("RetryInfo").retry_delay.expect("a delay");
    assert!(retry > Duration::ZERO && retry <= Duration::from_secs(1), "{retry:?}");
    let info = status.get_error_details().error_info().expect("ErrorInfo").clone();
    assert_eq!(info.metadata.get("scope").map(String::as_str), Some("key"), "{info:?}");
    assert_eq!(info.metadata.get("calls_per_second").map(String::as_str), Some("2"), "{info:?}");
    for _ in 0..10 {
        assert_eq!(quick_call(channel.clone(), SECOND_TENANT_KEY, None).await.code(), Code::Unimplemented);
    }
    tokio::time::sleep(retry).await;
    assert_eq!(quick_call(channel, TENANT_KEY, None).await.code(), Code::Unimplemented);
    // A key id must be one, and a key's own rate at least a call a second.
    let malformed = LimitSettings { key_overrides: BTreeMap::from([("k".to_owned(), 2)]), ..LimitSettings::default() };
    assert!(malformed.validate().unwrap_err().contains("key_overrides"));
    let zero = LimitSettings {
        key_overrides: BTreeMap::from([(uuid::Uuid::from_u128(11).to_string(), 0)]),
        ..LimitSettings::default()
    };
    assert!(zero.validate().is_err());
}

#[tokio::test]
async fn an_aged_connection_is_closed() {
    let limits =
        LimitSettings { max_connection_age_ms: 300, max_connection_age_grace_ms: 200, ..LimitSettings::default() };
    let address = start(limits).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    // The client preface and an empty SETTINGS frame, then nothing.
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let took = closed_within(stream, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
}

#[tokio::test]
async fn a_call_past_the_call_timeout_gives_its_place_back() {
    let address = start(LimitSettings { call_timeout_ms: 200, max_in_flight: 1, ..LimitSettings::default() }).await;
    let status = call(address, TENANT_KEY, None).await;
    assert_eq!(status.code(), Code::Cancelled, "the slow method outlives the timeout: {status:?}");
    // Its place is free again at once.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    assert_eq!(quick_call(channel, TENANT_KEY, None).await.code(), Code::Unimplemented);
}

#[tokio::test]
async fn one_tenant_cannot_take_every_place_in_flight() {
    let address = start(LimitSettings { tenant_max_in_flight: 2, ..LimitSettings::default() }).await;
    let calls: Vec<_> = (0..5).map(|_| tokio::spawn(call(address, TENANT_KEY, None))).collect();
    // Another tenant, and the services, are served meanwhile.
    let others = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (call(address, OTHER_TENANT_KEY, None).await.code(), call(address, SERVICE_KEY, Some(TENANT)).await.code())
    });
    let mut codes = Vec::new();
    for call in calls {
        let status = call.await.unwrap();
        if status.code() == Code::ResourceExhausted {
            assert_eq!(reason_of(&status).as_deref(), Some("TENANT_IN_FLIGHT"));
            assert!(status.get_error_details().retry_info().is_some(), "{status:?}");
        }
        codes.push(status.code());
    }
    assert_eq!(codes.iter().filter(|code| **code == Code::Unimplemented).count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|code| **code == Code::ResourceExhausted).count(), 3, "{codes:?}");
    assert_eq!(others.await.unwrap(), (Code::Unimplemented, Code::Unimplemented));
    // Its places come back when its calls end.
    assert_eq!(call(address, TENANT_KEY, None).await.code(), Code::Unimplemented);
}

/// Log output kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn audit_lines(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().filter(|line| line.contains("reservoir::audit")).map(str::to_owned).collect()
    }
}

#[tokio::test]
async fn configuration_changes_and_service_calls_are_audited_with_the_key_that_made_them() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).init();
    let address = start(LimitSettings::default()).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
    const SET_PRICE: &str = "/reservoir.metering.v1.MeteringService/SetPrice";
    const CONFIRM: &str = "/reservoir.payments.v1.PaymentsService/ConfirmPayment";
    // This server has neither method: past the key check, each ends UNIMPLEMENTED.
    assert_eq!(call_path(channel.clone(), TENANT_KEY, None, SET_PRICE).await.code(), Code::Unimplemented);
    assert_eq!(call_path(channel.clone(), SERVICE_KEY, Some(OTHER_TENANT), CONFIRM).await.code(), Code::Unimplemented);
    // Neither a call that is not a configuration change nor a refused key is audited.
    assert_eq!(quick_call(channel.clone(), TENANT_KEY, None).await.code(), Code::Unimplemented);
    assert_eq!(call_path(channel, "no-such-key", None, SET_PRICE).await.code(), Code::Unauthenticated);
    let lines = captured.audit_lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for (line, key, tenant, method) in [(&lines[0], 11_u128, TENANT, SET_PRICE), (&lines[1], 13, OTHER_TENANT, CONFIRM)]
    {
        assert!(line.contains(&format!("key_id=\"{}\"", uuid::Uuid::from_u128(key))), "{line}");
        assert!(line.contains(&format!("tenant=\"{tenant}\"")), "{line}");
        assert!(line.contains(&format!("method=\"{method}\"")), "{line}");
        assert!(line.contains("code=Unimplemented"), "{line}");
        assert!(!line.contains(TENANT_KEY) && !line.contains(SERVICE_KEY), "no key in clear: {line}");
    }
    assert!(lines[0].contains("role=\"ADMIN\""), "{}", lines[0]);
    assert!(lines[1].contains("caller=\"service\""), "{}", lines[1]);
}

#[tokio::test]
async fn on_shutdown_health_turns_not_serving_and_calls_are_served_through_the_drain_delay() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let limits = LimitSettings { drain_delay_ms: 600, ..LimitSettings::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (address, server) = start_until(limits, async move {
        let _ = stopped.await;
    })
    .await;
    let connect =
        || async move { tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await };
    let health = |channel| async move {
        let request = HealthCheckRequest { service: "test.Slow".into() };
        HealthClient::new(channel).check(request).await.unwrap().into_inner().status()
    };
    assert_eq!(health(connect().await.unwrap()).await, ServingStatus::Serving);
    let stopping = Instant::now();
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Draining: probes are told to stop sending, callers are still served,
    // on connections open before and on new ones.
    let channel = connect().await.expect("new connections are still taken");
    assert_eq!(health(channel.clone()).await, ServingStatus::NotServing);
    assert_eq!(quick_call(channel, TENANT_KEY, None).await.code(), Code::Unimplemented, "still served");
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("the server stops after the delay").unwrap();
    assert!(stopping.elapsed() >= Duration::from_millis(600), "{:?}", stopping.elapsed());
    assert!(connect().await.is_err(), "then the port is closed");
}
