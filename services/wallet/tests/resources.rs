//! The wallet under the floods an attacker can send without a key or with a
//! tenant's: thousands of silent connections, tens of thousands of calls to
//! made-up methods, and more calls at once than the in-flight limit. Its
//! memory stays bounded and it keeps answering. A test binary of its own, so
//! the resident set read is this test's alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reservoir_common::app::App;
use std::time::Duration;

use reservoir_common::limits::LimitSettings;
use reservoir_common::settings::AuthSettings;
use reservoir_testing::{Backend, TestDatabase};
use reservoir_wallet::app::{Application, WalletSettings};
use tokio::net::TcpStream;

const PEPPER: &str = "resources-test-pepper";
/// The bound the wallet's resident set must stay under.
const RESIDENT_MAX_MIB: f64 = 256.0;

fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap();
    kib / 1024.0
}

async fn channel(address: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap()
}

/// Calls to `count` made-up methods, half without a key, half with `key`,
/// 100 at a time; the codes they got.
async fn made_up_calls(channel: tonic::transport::Channel, key: &str, count: usize) -> Vec<tonic::Code> {
    let grpc = tonic::client::Grpc::new(channel);
    let mut codes = Vec::with_capacity(count);
    for chunk in 0..count / 100 {
        let calls = (0..100).map(|index| {
            let number = chunk * 100 + index;
            let mut grpc = grpc.clone();
            let key = (number % 2 == 0).then(|| key.to_owned());
            async move {
                grpc.ready().await.unwrap();
                let mut request = tonic::Request::new(());
                if let Some(key) = key {
                    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
                }
                let path = format!("/made.up.Service{number}/Method{number}").parse().unwrap();
                let codec: tonic_prost::ProstCodec<(), ()> = tonic_prost::ProstCodec::default();
                grpc.unary(request, path, codec).await.unwrap_err().code()
            }
        });
        codes.extend(futures::future::join_all(calls).await);
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_leave_the_wallet_bounded_and_answering() {
    let database = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let settings = WalletSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: database.url.clone(),
        database_schema: database.schema.clone(),
        database_max_connections: 4,
        sweep_interval_ms: 1_000,
        committers: 1,
        metrics_listen: String::new(),
    };
    let auth = AuthSettings { api_key_pepper: PEPPER.into(), key_cache_ttl_ms: 5_000 };
    let limits = LimitSettings {
        max_connections: 1_000,
        handshake_timeout_ms: 1_000,
        max_in_flight: 64,
        ..LimitSettings::default()
    };
    let application = Application::build(&settings, &auth).await.unwrap().with_limits(limits);
    let address = application.local_addr().unwrap();
    let store = application.store();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));
    let tenant = store.create_tenant("flooded", chrono::Utc::now()).await.unwrap();
    let key = store.issue_key(tenant, PEPPER, chrono::Utc::now()).await.unwrap().key;
    let before = resident_mib();

    // The flooding clients connect first: past the connection limit, a new
    // connection is closed at once, whoever opens it.
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(channel(address).await);
    }
    // 3,000 sockets opened and left silent: those past the limit are closed
    // at once, the rest when the handshake timeout passes.
    let mut silent = Vec::new();
    for _ in 0..3_000 {
        if let Ok(stream) = TcpStream::connect(address).await {
            silent.push(stream);
        }
    }
    // 20,000 calls to made-up methods, half of them with a tenant's key, on
    // 8 connections at once.
    let floods = channels.into_iter().map(|channel| {
        let key = key.clone();
        async move { made_up_calls(channel, &key, 2_500).await }
    });
    let codes: Vec<tonic::Code> = futures::future::join_all(floods).await.into_iter().flatten().collect();
    assert_eq!(codes.len(), 20_000);
    for code in &codes {
        assert!(
            matches!(code, tonic::Code::Unauthenticated | tonic::Code::Unimplemented | tonic::Code::Unavailable),
            "{code:?}"
        );
    }
    let during = resident_mib();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    drop(silent);

    // Still answering, and a real call works.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(address).await);
    let served = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(served.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let after = resident_mib();
    eprintln!("resident: {before:.0} MiB before, {during:.0} MiB during, {after:.0} MiB after the floods");
    assert!(during < RESIDENT_MAX_MIB && after < RESIDENT_MAX_MIB, "{before:.0} / {during:.0} / {after:.0} MiB");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
