//! TLS on the serving loop, seen from a client: a server with a certificate
//! answers clients that trust its CA and nobody in plaintext; with a client
//! CA (mTLS) it refuses clients without a certificate it signed; and a
//! renewed certificate is served to new connections without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use reservoir_common::auth::{Authenticator, Identity, KeyResolver, TenantId};
use reservoir_common::limits::LimitSettings;
use reservoir_common::tls::{TlsSettings, endpoint_with};
use tokio::net::TcpListener;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

struct NoKeys;

impl KeyResolver for NoKeys {
    fn resolve(&self, _key: String) -> BoxFuture<'static, Result<Option<Identity>, String>> {
        Box::pin(async { Ok(None) })
    }

    fn tenant_exists(&self, _key: String, _tenant: TenantId) -> BoxFuture<'static, Result<bool, String>> {
        Box::pin(async { Ok(false) })
    }
}

/// A CA that signs certificates for the tests.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        Self { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    /// A certificate for `names` and its key, as PEM.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>()).unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (certificate.pem(), key.serialize_pem())
    }

    fn write(&self, directory: &Path, name: &str) -> String {
        let path = directory.join(name);
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path.display().to_string()
    }
}

/// Writes a certificate and key as `<name>.pem` and `<name>.key`.
fn write_pair(directory: &Path, name: &str, (certificate, key): (String, String)) -> (String, String) {
    let certificate_path = directory.join(format!("{name}.pem"));
    let key_path = directory.join(format!("{name}.key"));
    std::fs::write(&certificate_path, certificate).unwrap();
    std::fs::write(&key_path, key).unwrap();
    (certificate_path.display().to_string(), key_path.display().to_string())
}

fn directory() -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!("reservoir-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

/// Serves health and reflection with `tls` until the test ends.
async fn start(tls: TlsSettings) -> SocketAddr {
    start_on(tls, LimitSettings::default(), None).await
}

async fn start_on(tls: TlsSettings, limits: LimitSettings, metrics: Option<TcpListener>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let authenticator = Arc::new(Authenticator::new(Arc::new(NoKeys), Duration::from_secs(60)));
    tokio::spawn(async move {
        let port = reservoir_common::serve::Port {
            listener,
            service_names: &[],
            authenticator,
            limits: &limits,
            tls: &tls,
            metrics,
            database: None,
        };
        reservoir_common::serve::serve(port, tonic::service::Routes::default(), std::future::pending()).await.unwrap();
    });
    address
}

/// Whether a health check over `url` with the client `settings` is answered.
async fn answered(url: &str, settings: &TlsSettings) -> bool {
    let Ok(channel) = endpoint_with(url, settings).unwrap().connect_timeout(Duration::from_secs(2)).connect().await
    else {
        return false;
    };
    let mut health = HealthClient::new(channel);
    health.check(HealthCheckRequest { service: String::new() }).await.is_ok()
}

#[tokio::test]
async fn a_server_with_a_certificate_answers_clients_trusting_its_ca_and_nobody_in_plaintext() {
    let directory = directory();
    let authority = Authority::new("Reservoir test CA");
    let (cert_file, key_file) = write_pair(&directory, "server", authority.issue(&["localhost", "127.0.0.1"]));
    let address = start(TlsSettings { cert_file, key_file, ..TlsSettings::default() }).await;
    let trusting = TlsSettings { ca_file: authority.write(&directory, "ca.pem"), ..TlsSettings::default() };

    assert!(answered(&format!("https://127.0.0.1:{}", address.port()), &trusting).await);
    assert!(answered(&format!("https://localhost:{}", address.port()), &trusting).await);
    // Plaintext gets nothing.
    assert!(!answered(&format!("http://127.0.0.1:{}", address.port()), &TlsSettings::default()).await);
    // Nor does a client trusting another CA.
    let stranger = Authority::new("Another CA");
    let other = TlsSettings { ca_file: stranger.write(&directory, "other-ca.pem"), ..TlsSettings::default() };
    assert!(!answered(&format!("https://127.0.0.1:{}", address.port()), &other).await);
    std::fs::remove_dir_all(directory).unwrap();
}

#[tokio::test]
async fn with_a_client_ca_a_client_needs_a_certificate_it_signed() {
    let directory = directory();
    let servers = Authority::new("Reservoir servers");
    let clients = Authority::new("Reservoir services");
    let (cert_file, key_file) = write_pair(&directory, "server", servers.issue(&["127.0.0.1"]));
    let client_ca_file = clients.write(&directory, "clients.pem");
    let address = start(TlsSettings { cert_file, key_file, client_ca_file, ..TlsSettings::default() }).await;
    let url = format!("https://127.0.0.1:{}", address.port());
    let ca_file = servers.write(&directory, "servers.pem");

    let anonymous = TlsSettings { ca_file: ca_file.clone(), ..TlsSettings::default() };
    assert!(!answered(&url, &anonymous).await, "a client without a certificate is refused");

    let (cert_file, key_file) = write_pair(&directory, "metering", clients.issue(&["metering"]));
    let known = TlsSettings { ca_file: ca_file.clone(), cert_file, key_file, ..TlsSettings::default() };
    assert!(answered(&url, &known).await, "a client with a certificate the client CA signed is served");

    let impostor_ca = Authority::new("Impostor");
    let (cert_file, key_file) = write_pair(&directory, "impostor", impostor_ca.issue(&["metering"]));
    let impostor = TlsSettings { ca_file, cert_file, key_file, ..TlsSettings::default() };
    assert!(!answered(&url, &impostor).await, "a certificate from another CA is refused");
    std::fs::remove_dir_all(directory).unwrap();
}

#[tokio::test]
async fn a_renewed_certificate_is_served_to_new_connections_without_a_restart() {
    let directory = directory();
    let first = Authority::new("First CA");
    let (cert_file, key_file) = write_pair(&directory, "server", first.issue(&["127.0.0.1"]));
    let settings = TlsSettings { cert_file, key_file, reload_interval_ms: 50, ..TlsSettings::default() };
    let address = start(settings).await;
    let url = format!("https://127.0.0.1:{}", address.port());
    let trusting_first = TlsSettings { ca_file: first.write(&directory, "first.pem"), ..TlsSettings::default() };
    let second = Authority::new("Second CA");
    let trusting_second = TlsSettings { ca_file: second.write(&directory, "second.pem"), ..TlsSettings::default() };
    assert!(answered(&url, &trusting_first).await);
    assert!(!answered(&url, &trusting_second).await);

    // The renewal, as a secret update writes it: the files change in place.
    write_pair(&directory, "server", second.issue(&["127.0.0.1"]));
    let mut renewed = false;
    for _ in 0..100 {
        if answered(&url, &trusting_second).await {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(renewed, "the renewed certificate is served");
    assert!(!answered(&url, &trusting_first).await, "the old one no longer");
    std::fs::remove_dir_all(directory).unwrap();
}

/// The status line of a plain HTTP GET.
async fn get(address: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

/// Kubernetes' gRPC probes do not speak TLS: with TLS on the port, the
/// metrics port answers liveness and readiness over plain HTTP.
#[tokio::test]
async fn with_tls_on_the_port_probes_are_answered_on_the_metrics_port() {
    let directory = directory();
    let authority = Authority::new("Reservoir test CA");
    let (cert_file, key_file) = write_pair(&directory, "server", authority.issue(&["127.0.0.1"]));
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_address = metrics.local_addr().unwrap();
    let tls = TlsSettings { cert_file, key_file, ..TlsSettings::default() };
    start_on(tls, LimitSettings::default(), Some(metrics)).await;
    let mut status = String::new();
    for _ in 0..50 {
        if let Ok(stream) = tokio::net::TcpStream::connect(metrics_address).await {
            drop(stream);
            status = get(metrics_address, "/readyz").await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(get(metrics_address, "/healthz").await, "HTTP/1.1 200 OK");
    std::fs::remove_dir_all(directory).unwrap();
}

/// A client that completes the TLS handshake and then says nothing is
/// closed when the handshake timeout ends, as one in plaintext would be:
/// the HTTP/2 preface is owed from inside the TLS, not by the handshake's bytes.
#[tokio::test]
async fn a_client_silent_after_the_tls_handshake_is_closed_at_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, pki_types::ServerName};

    let directory = directory();
    let authority = Authority::new("Reservoir test CA");
    let (cert_file, key_file) = write_pair(&directory, "server", authority.issue(&["127.0.0.1"]));
    let limits = LimitSettings { handshake_timeout_ms: 300, ..LimitSettings::default() };
    let address = start_on(TlsSettings { cert_file, key_file, ..TlsSettings::default() }, limits, None).await;

    let mut roots = RootCertStore::empty();
    roots.add(authority.issuer.der().clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let started = std::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut stream = connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
    // The server speaks first (its HTTP/2 settings); then it waits for ours.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buffer = [0_u8; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server closed the connection");
    assert!(started.elapsed() < Duration::from_secs(3), "closed after {:?}", started.elapsed());
    std::fs::remove_dir_all(directory).unwrap();
}

#[test]
fn half_a_certificate_or_a_client_ca_alone_is_refused_at_start() {
    let key_only = TlsSettings { key_file: "server.key".into(), ..TlsSettings::default() };
    assert!(key_only.validate().unwrap_err().contains("cert_file and key_file"));
    let ca_only = TlsSettings { client_ca_file: "clients.pem".into(), ..TlsSettings::default() };
    assert!(ca_only.validate().unwrap_err().contains("client_ca_file"));
    assert!(TlsSettings::default().validate().is_ok());
}

#[tokio::test]
async fn a_renewed_client_certificate_is_presented_without_a_restart() {
    let directory = directory();
    let servers = Authority::new("Reservoir servers");
    let old_clients = Authority::new("Retired client CA");
    let clients = Authority::new("Reservoir services");
    let (cert_file, key_file) = write_pair(&directory, "server", servers.issue(&["127.0.0.1"]));
    let client_ca_file = clients.write(&directory, "clients.pem");
    let address = start(TlsSettings { cert_file, key_file, client_ca_file, ..TlsSettings::default() }).await;
    let url = format!("https://127.0.0.1:{}", address.port());
    // The client starts with a certificate the server no longer trusts.
    let (cert_file, key_file) = write_pair(&directory, "metering", old_clients.issue(&["metering"]));
    let settings = TlsSettings {
        ca_file: servers.write(&directory, "servers.pem"),
        cert_file,
        key_file,
        reload_interval_ms: 50,
        ..TlsSettings::default()
    };
    // One channel for the whole test, as a service keeps it.
    let channel = endpoint_with(&url, &settings).unwrap().connect_timeout(Duration::from_secs(2)).connect_lazy();
    let check = || {
        let mut health = HealthClient::new(channel.clone());
        async move { health.check(HealthCheckRequest { service: String::new() }).await.is_ok() }
    };
    assert!(!check().await, "refused with the old certificate");
    // The renewal, written in place as a secret update does.
    write_pair(&directory, "metering", clients.issue(&["metering"]));
    let mut served = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if check().await {
            served = true;
            break;
        }
    }
    assert!(served, "the same channel presents the renewed certificate on its next connection");
    std::fs::remove_dir_all(directory).unwrap();
}
