use std::time::Duration;

use reservoir_testing::Backend;
use tokio_stream::StreamExt;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::helpers::*;

#[tokio::test]
async fn health_is_served_without_a_key() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let mut health = HealthClient::new(channel(app.address).await);
    let response = health
        .check(HealthCheckRequest { service: reservoir_wallet::app::SERVICE_NAME.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.status, ServingStatus::Serving as i32);
    app.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_wallet_in_both_protocol_versions() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let expected = |reflection: &'static str| {
        ["grpc.health.v1.Health", reflection, "reservoir.wallet.v1.AdminService", "reservoir.wallet.v1.WalletService"]
    };
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel(app.address).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses =
            client.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let mut listed: Vec<&str> = list.service.iter().map(|service| service.name.as_str()).collect();
        listed.sort_unstable();
        assert_eq!(listed, expected("grpc.reflection.v1.ServerReflection"), "only what this port serves");
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel(app.address).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses =
            client.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            responses.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let mut listed: Vec<&str> = list.service.iter().map(|service| service.name.as_str()).collect();
        listed.sort_unstable();
        assert_eq!(listed, expected("grpc.reflection.v1alpha.ServerReflection"), "only what this port serves");
    }
    app.stop().await;
}

#[tokio::test]
async fn stopping_ends_open_event_streams_instead_of_waiting_for_them() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let mut stream = app
        .client
        .clone()
        .watch_events(reservoir_proto::wallet::WatchEventsRequest { after_sequence: 0, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let reader = tokio::spawn(async move {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), app.stop()).await.expect("the server stops promptly");
    let ended = tokio::time::timeout(Duration::from_secs(5), reader).await.expect("the stream ended").unwrap();
    // Told apart from an end of events: UNAVAILABLE, to resume elsewhere.
    let status = ended.expect("the stream ends with a status, not as if it were complete");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(reservoir_common::status::reason_of(&status).as_deref(), Some("SHUTTING_DOWN"));
    // And resumed at once on another replica.
    let retry = tonic_types::StatusExt::get_error_details(&status).retry_info().and_then(|info| info.retry_delay);
    assert_eq!(retry, Some(Duration::ZERO), "{status:?}");
}

/// Replicas that start together on a fresh database migrate one at a time:
/// both come up, and the schema is applied once.
async fn replicas_starting_together_both_migrate(backend: Backend) {
    let Some(database) = reservoir_testing::TestDatabase::create(backend).await else {
        return;
    };
    let (settings, auth) = (settings(&database), auth_settings());
    let (first, second) = tokio::join!(
        reservoir_wallet::app::Application::build(&settings, &auth),
        reservoir_wallet::app::Application::build(&settings, &auth),
    );
    let (first, second) = (first.expect("the first replica starts"), second.expect("the second replica starts"));
    let store = first.store();
    let tenant = store.create_tenant("both", chrono::Utc::now()).await.unwrap();
    assert!(second.store().tenant_exists(tenant).await.unwrap(), "both replicas see one schema");
    drop((first, second));
    database.drop_database().await;
}

#[tokio::test]
async fn replicas_starting_together_both_migrate_on_sqlite() {
    replicas_starting_together_both_migrate(Backend::Sqlite).await;
}

#[tokio::test]
async fn replicas_starting_together_both_migrate_on_postgres() {
    replicas_starting_together_both_migrate(Backend::Postgres).await;
}

/// The scrape endpoint shows every call by method and status code, its
/// latency, the group commits and what they did, and the connection pool.
async fn metrics_count_calls_codes_and_changes(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "5", reservoir_proto::wallet::GrantKind::Paid).await;
    debit(&app.client, &account, "2").await.unwrap();
    let refused = debit(&app.client, &account, "100").await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::FailedPrecondition);
    // A named event consumer that has read the first event.
    let watch = |consumer: &str| reservoir_proto::wallet::WatchEventsRequest {
        after_sequence: 0,
        consumer: consumer.to_owned(),
    };
    assert_invalid(app.client.clone().watch_events(watch("no spaces here")).await.map(|_| ()), "consumer");
    let mut events = app.client.clone().watch_events(watch("metrics-test")).await.unwrap().into_inner();
    assert!(tokio_stream::StreamExt::next(&mut events).await.unwrap().is_ok());
    let text = scrape(app.metrics).await;
    let value = |name: &str, labels: &[&str]| metric(&text, name, labels);
    let debits = r#"method="Debit""#;
    assert!(value("reservoir_rpc_requests_total", &[debits, r#"code="Ok""#]) >= 1.0, "{text}");
    assert!(value("reservoir_rpc_requests_total", &[debits, r#"code="FailedPrecondition""#]) >= 1.0, "{text}");
    assert!(value("reservoir_rpc_requests_total", &[debits, r#"server="wallet""#]) >= 2.0, "{text}");
    assert!(value("reservoir_rpc_duration_seconds_count", &[debits]) >= 2.0, "{text}");
    assert!(value("reservoir_wallet_changes_total", &[r#"method="Debit""#, r#"outcome="applied""#]) >= 1.0, "{text}");
    assert!(value("reservoir_wallet_changes_total", &[r#"method="Debit""#, r#"outcome="refused""#]) >= 1.0, "{text}");
    assert!(value("reservoir_wallet_group_commit_seconds_count", &[]) >= 1.0, "{text}");
    assert!(text.contains("reservoir_db_pool_connections"), "{text}");
    // What the shared series mean, and which build answers.
    assert!(text.contains("# HELP reservoir_rpc_requests_total Calls answered"), "{text}");
    assert!(text.contains("# HELP reservoir_rpc_duration_seconds"), "{text}");
    let build = format!(r#"reservoir_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&build), "{text}");
    // The process's own figures.
    assert!(value("process_resident_memory_bytes", &[]) > 0.0, "{text}");
    assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
    assert!(text.contains("# HELP process_resident_memory_bytes"), "{text}");
    // A consumer's name is the caller's choice: it never becomes a label.
    assert!(text.contains(r#"reservoir_wallet_outbox_lag_seconds{consumer="other"}"#), "{text}");
    assert!(!text.contains("metrics-test"), "{text}");
}

/// A stream is counted when it ends, with the status it ended with and
/// the whole of its life: one still open at its caller's deadline is ended
/// there, DEADLINE_EXCEEDED; one its caller drops is CANCELLED.
#[tokio::test]
async fn streams_are_counted_when_they_end_with_their_status() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let watch = || reservoir_proto::wallet::WatchEventsRequest { after_sequence: 0, ..Default::default() };
    // The recorder is the test process's: other tests' streams count too,
    // so this one's are told by what they add.
    let watches = r#"method="WatchEvents""#;
    let counted = |text: &str, code: &str| metric(text, "reservoir_rpc_requests_total", &[watches, code]);
    let before = scrape(app.metrics).await;
    // The deadline as a header alone: the client itself waits for ever.
    let mut request = tonic::Request::new(watch());
    request.metadata_mut().insert("grpc-timeout", "500m".parse().unwrap());
    let started = std::time::Instant::now();
    let mut stream = app.client.clone().watch_events(request).await.unwrap().into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    })
    .await
    .expect("the stream ends at its deadline")
    .expect("with a status");
    assert_eq!(ended.code(), tonic::Code::DeadlineExceeded, "{ended:?}");
    assert!(started.elapsed() >= Duration::from_millis(450), "{:?}", started.elapsed());

    let dropped = app.client.clone().watch_events(watch()).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(dropped);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let after = scrape(app.metrics).await;
    for code in [r#"code="DeadlineExceeded""#, r#"code="Cancelled""#] {
        assert!(counted(&after, code) >= counted(&before, code) + 1.0, "{code}: {after}");
    }
    let lived = |text: &str| metric(text, "reservoir_rpc_duration_seconds_sum", &[watches]);
    assert!(lived(&after) - lived(&before) >= 0.75, "the streams' whole lives: {after}");
    app.stop().await;
}

/// A body that is not the method's message is the caller's mistake:
/// INVALID_ARGUMENT, never INTERNAL, and nothing is written.
#[tokio::test]
async fn an_undecodable_request_is_invalid_argument() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let account = prepaid(&app.client).await;
    let key = app.store.issue_key(app.tenant, PEPPER, chrono::Utc::now()).await.unwrap().key;
    let mut grpc = tonic::client::Grpc::new(channel(app.address).await);
    grpc.ready().await.unwrap();
    // Field 1 of DebitRequest (account_id) is a string: these bytes are not UTF-8.
    let mut request = tonic::Request::new(vec![0xff_u8, 0xfe, 0xfd]);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    let path = "/reservoir.wallet.v1.WalletService/Debit".parse().unwrap();
    let status = grpc
        .unary::<Vec<u8>, reservoir_proto::wallet::DebitResponse, _>(request, path, tonic_prost::ProstCodec::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(ledger(&app.client, &account).await.len(), 0);
    app.stop().await;
}

/// Ten thousand calls to made-up methods, without a key and with one, add
/// no series to the scrape endpoint: those with a key count as one unknown
/// method, those without as refused.
#[tokio::test]
async fn made_up_methods_add_no_series_to_the_metrics() {
    let Some(app) = TestApp::spawn(Backend::Sqlite).await else {
        return;
    };
    let grpc = tonic::client::Grpc::new(channel(app.address).await);
    let key = app.store.issue_key(app.tenant, PEPPER, chrono::Utc::now()).await.unwrap().key;
    let call = |number: usize, key: Option<String>| {
        let mut grpc = grpc.clone();
        async move {
            grpc.ready().await.unwrap();
            let path = format!("/made.up.Service{number}/Method{number}");
            let mut request = tonic::Request::new(());
            if let Some(key) = key {
                request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
            }
            grpc.unary::<(), (), _>(request, path.parse().unwrap(), tonic_prost::ProstCodec::default())
                .await
                .unwrap_err()
                .code()
        }
    };
    assert_eq!(call(0, None).await, tonic::Code::Unauthenticated);
    assert_eq!(call(0, Some(key.clone())).await, tonic::Code::Unimplemented);
    // The recorder is the process's, shared with the tests running beside
    // this one: count the series these calls can reach.
    let series = |text: &str| {
        text.lines().filter(|line| line.starts_with("reservoir_rpc_") && line.contains(r#"service="unknown""#)).count()
    };
    let before = scrape(app.metrics).await;
    for chunk in 0..100 {
        let calls = (1..=100).map(|index| {
            let number = chunk * 100 + index;
            call(number, (number % 2 == 0).then(|| key.clone()))
        });
        for code in futures::future::join_all(calls).await {
            assert!(matches!(code, tonic::Code::Unauthenticated | tonic::Code::Unimplemented), "{code:?}");
        }
    }
    let after = scrape(app.metrics).await;
    assert_eq!(series(&after), series(&before), "{after}");
    assert!(!after.contains("made.up") && !after.contains("Method"), "{after}");
    let sum = |name: &str, label: &str| -> f64 {
        after
            .lines()
            .filter(|line| line.starts_with(name) && line.contains(label))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    // Every call is counted: those with a key after authentication, as one
    // unknown method; those without one among the refused, by reason.
    assert!(sum("reservoir_rpc_requests_total", r#"method="unknown""#) >= 5_001.0, "{after}");
    assert!(sum("reservoir_rpc_refused_total", r#"reason="unauthenticated""#) >= 5_001.0, "{after}");
    app.stop().await;
}

/// The sum of a metric's samples whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|label| line.contains(label)))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// GET /metrics over plain HTTP/1.1.
async fn scrape(address: std::net::SocketAddr) -> String {
    let response = get(address, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// A GET over plain HTTP/1.1: the whole response, status line first.
async fn get(address: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// Health follows the database. With PostgreSQL out of reach (the network
/// to it cut), the wallet's service turns NOT_SERVING and `/readyz` 503, so
/// readiness takes the replica out of its Service, while the server as a
/// whole stays SERVING and `/healthz` 200, so liveness does not restart it;
/// calls meanwhile are UNAVAILABLE (retry), never INTERNAL. Once the
/// database is back, SERVING again and calls are served.
#[tokio::test]
async fn health_follows_the_database() {
    let Some(database) = reservoir_testing::TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let host = database.url.split('@').nth(1).and_then(|rest| rest.split('/').next()).unwrap().to_owned();
    let upstream = tokio::net::lookup_host(&host).await.unwrap().next().unwrap();
    let proxy = reservoir_testing::proxy::TcpProxy::start(upstream).await;
    let mut through = database.clone();
    through.url = database.url.replacen(&host, &proxy.address().to_string(), 1);
    let app = TestApp::start(through, None).await;
    let account = open_funded_account(&app.client, "10").await;
    let health = HealthClient::new(channel(app.address).await);
    let status = |service: &'static str| {
        let mut health = health.clone();
        async move { health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status }
    };
    let wallet = reservoir_wallet::app::SERVICE_NAME;
    assert_eq!(status(wallet).await, ServingStatus::Serving as i32);

    proxy.cut();
    let cut_at = std::time::Instant::now();
    while status(wallet).await != ServingStatus::NotServing as i32 {
        assert!(cut_at.elapsed() < Duration::from_secs(20), "still SERVING 20 s after the database went away");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status("").await, ServingStatus::Serving as i32, "liveness stays SERVING");
    assert!(get(app.metrics, "/readyz").await.starts_with("HTTP/1.1 503"));
    assert!(get(app.metrics, "/healthz").await.starts_with("HTTP/1.1 200"));
    let refused = app
        .client
        .clone()
        .get_balance(reservoir_proto::wallet::GetBalanceRequest { account_id: account.id.clone() })
        .await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unavailable);

    proxy.restore();
    let restored_at = std::time::Instant::now();
    while status(wallet).await != ServingStatus::Serving as i32 {
        assert!(restored_at.elapsed() < Duration::from_secs(20), "still NOT_SERVING 20 s after the database came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(get(app.metrics, "/readyz").await.starts_with("HTTP/1.1 200"));
    assert_eq!(available(&app.client, &account).await, d("10"));
    app.stop().await;
}

crate::on_both_backends!(metrics_count_calls_codes_and_changes);

/// A connection PostgreSQL ends under a query (an administrator's or a
/// restart's termination) is UNAVAILABLE to the caller, which may retry,
/// never INTERNAL, which it must not.
#[tokio::test]
async fn a_connection_the_database_ends_is_unavailable_not_internal() {
    use reservoir_common::db::{Failure, classify};
    use sea_orm::ConnectionTrait;

    let Some(database) = reservoir_testing::TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let connection = sea_orm::Database::connect(&database.url).await.unwrap();
    let ended = connection.execute_unprepared("SELECT pg_terminate_backend(pg_backend_pid())").await.unwrap_err();
    assert_eq!(classify(&ended), Failure::Unavailable, "{ended}");
    let status = tonic::Status::from(reservoir_wallet::error::WalletError::from(ended));
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    connection.close().await.ok();
    database.drop_database().await;
}
