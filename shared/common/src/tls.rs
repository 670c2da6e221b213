//! TLS on the gRPC servers and on the channels between services: rustls on
//! ring, through tokio-rustls on the server side and tonic's own client.
//!
//! A server presents `cert_file`/`key_file`; with `client_ca_file` set it
//! also asks every client for a certificate signed by that CA (mTLS) and
//! refuses the handshake without one. The three files are read again when
//! they change (a Kubernetes secret updated by cert-manager), and new
//! connections use the new ones; open connections keep theirs. tonic's
//! server TLS reads its files once, so the server side is this module's own
//! glue: a rustls configuration swapped under a lock, and each accepted
//! connection's handshake run on its own task within the handshake timeout.
//!
//! A channel to another service uses TLS when its endpoint is `https://`:
//! it trusts `ca_file` (or the Mozilla roots when that is empty) and, when
//! the process has a certificate, presents it, so the same files serve as
//! the service's identity in both directions. Its files are read again when
//! they change, like the server's: a channel's next connection presents the
//! renewed certificate without a restart. tonic's client TLS reads its files
//! once too, so channels over TLS are dialled by this module ([`Dialer`]).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Channel, Endpoint};

use crate::limits::{Bounded, Preface, refused};

/// TLS for a process's server and its channels to the other services.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct TlsSettings {
    /// PEM certificate chain the server presents (and, for mTLS, the
    /// channels to other services); empty serves plaintext.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
    /// PEM CA certificates; when set, every client must present a
    /// certificate signed by one of them (mTLS).
    pub client_ca_file: String,
    /// PEM CA certificates that signed the other services' certificates,
    /// for `https://` endpoints; empty trusts the Mozilla roots.
    pub ca_file: String,
    /// How often the server's files are checked for a change.
    pub reload_interval_ms: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            ca_file: String::new(),
            reload_interval_ms: 30_000,
        }
    }
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err("tls: cert_file and key_file are set together".into());
        }
        if !self.client_ca_file.is_empty() && self.cert_file.is_empty() {
            return Err("tls: client_ca_file (mTLS) needs cert_file and key_file".into());
        }
        if self.reload_interval_ms == 0 {
            return Err("tls: reload_interval_ms must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: reading {path}: {message}")]
    File { path: String, message: String },
    #[error("tls: {0}")]
    Config(String),
}

fn read(path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::File { path: path.to_owned(), message: error.to_string() })
}

fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::File { path: path.to_owned(), message: error.to_string() })?;
    if certificates.is_empty() {
        return Err(TlsError::File { path: path.to_owned(), message: "no PEM certificate in it".into() });
    }
    Ok(certificates)
}

/// The server's rustls configuration, built afresh from the files.
fn server_config(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let key = PrivateKeyDer::from_pem_slice(&read(&settings.key_file)?)
        .map_err(|error| TlsError::File { path: settings.key_file.clone(), message: error.to_string() })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let builder = if settings.client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for certificate in certificates(&settings.client_ca_file)? {
            roots.add(certificate).map_err(|error| TlsError::Config(format!("client_ca_file: {error}")))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|error| TlsError::Config(format!("client_ca_file: {error}")))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder
        .with_single_cert(certificates(&settings.cert_file)?, key)
        .map_err(|error| TlsError::Config(format!("cert_file and key_file: {error}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// When each file was last changed, to notice a renewal.
fn stamps(paths: [&str; 3]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .into_iter()
        .map(|path| {
            let metadata = std::fs::metadata(Path::new(path)).ok()?;
            Some((metadata.modified().ok()?, metadata.len()))
        })
        .collect()
}

/// A server's TLS, re-read when its files change.
#[derive(Clone)]
pub struct ServerTls {
    settings: TlsSettings,
    config: Arc<RwLock<Arc<ServerConfig>>>,
}

impl ServerTls {
    /// `None` when the settings serve plaintext.
    pub fn load(settings: &TlsSettings) -> Result<Option<Self>, TlsError> {
        if !settings.enabled() {
            return Ok(None);
        }
        let config = server_config(settings)?;
        Ok(Some(Self { settings: settings.clone(), config: Arc::new(RwLock::new(Arc::new(config))) }))
    }

    fn acceptor(&self) -> TlsAcceptor {
        let config = match self.config.read() {
            Ok(config) => config.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        TlsAcceptor::from(config)
    }

    /// Checks the files every `reload_interval_ms` until `stopping`, and
    /// swaps in a configuration built from them when they changed. A
    /// configuration that does not build (a half-written file) is logged and
    /// the previous one kept; the next check tries again.
    pub async fn reload_until(self, mut stopping: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.settings.reload_interval_ms);
        let mut seen = stamps(server_files(&self.settings));
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stopping.changed() => return,
            }
            let now = stamps(server_files(&self.settings));
            if now == seen {
                continue;
            }
            match server_config(&self.settings) {
                Ok(config) => {
                    match self.config.write() {
                        Ok(mut current) => *current = Arc::new(config),
                        Err(poisoned) => *poisoned.into_inner() = Arc::new(config),
                    }
                    seen = now;
                    metrics::counter!("reservoir_tls_reloads_total", "outcome" => "loaded").increment(1);
                    tracing::info!(cert_file = %self.settings.cert_file, "TLS certificate files changed: reloaded");
                }
                Err(error) => {
                    metrics::counter!("reservoir_tls_reloads_total", "outcome" => "failed").increment(1);
                    tracing::warn!(%error, "TLS certificate files changed but do not load; the previous ones stay in use");
                }
            }
        }
    }
}

/// A connection as the server takes it: plaintext or TLS over a bounded
/// TCP connection, with the TCP peer as its connect info either way.
pub enum Connection {
    Plain(Bounded),
    /// With the HTTP/2 preface it still owes, read from inside the TLS.
    Tls(Box<tokio_rustls::server::TlsStream<Bounded>>, Preface),
}

/// The connections to serve: `connections` as they are, or each through a
/// TLS handshake of its own (a slow or failed one holds up nobody else's),
/// which with the HTTP/2 preface after it must end within the connection's
/// handshake timeout. Failed handshakes are counted and dropped. With TLS,
/// the listener is closed when `stopping` turns true or the server stops
/// taking connections.
pub fn accept(
    connections: impl Stream<Item = io::Result<Bounded>> + Send + 'static,
    tls: Option<ServerTls>,
    mut stopping: watch::Receiver<bool>,
) -> Pin<Box<dyn Stream<Item = io::Result<Connection>> + Send>> {
    let Some(tls) = tls else {
        return Box::pin(connections.map(|next| next.map(Connection::Plain)));
    };
    let (accepted, incoming) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut connections = std::pin::pin!(connections);
        loop {
            let next = tokio::select! {
                next = connections.next() => next,
                _ = stopping.changed() => return,
                () = accepted.closed() => return,
            };
            let Some(next) = next else { return };
            let mut connection = match next {
                Ok(connection) => connection,
                Err(error) => {
                    if accepted.send(Err(error)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let (acceptor, accepted) = (tls.acceptor(), accepted.clone());
            let preface = connection.take_preface();
            let until = preface.deadline().unwrap_or_else(tokio::time::Instant::now);
            tokio::spawn(async move {
                match tokio::time::timeout_at(until, acceptor.accept(connection)).await {
                    Ok(Ok(stream)) => {
                        let _ = accepted.send(Ok(Connection::Tls(Box::new(stream), preface))).await;
                    }
                    Ok(Err(error)) => {
                        refused("tls_handshake");
                        tracing::debug!(%error, "a TLS handshake failed");
                    }
                    Err(_) => refused("handshake_timeout"),
                }
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(incoming))
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Self::Plain(connection) => connection.connect_info(),
            Self::Tls(stream, _) => stream.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(connection) => Pin::new(connection).poll_read(cx, buf),
            Self::Tls(stream, preface) => preface.poll_read(stream.as_mut(), cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(connection) => Pin::new(connection).poll_write(cx, buf),
            Self::Tls(stream, _) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(connection) => Pin::new(connection).poll_write_vectored(cx, bufs),
            Self::Tls(stream, _) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(connection) => connection.is_write_vectored(),
            Self::Tls(stream, _) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(connection) => Pin::new(connection).poll_flush(cx),
            Self::Tls(stream, _) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(connection) => Pin::new(connection).poll_shutdown(cx),
            Self::Tls(stream, _) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The settings channels to other services use; set once at start.
static CHANNELS: OnceLock<TlsSettings> = OnceLock::new();

/// Makes `settings` the TLS of every channel this process opens to another
/// service with [`endpoint`]. A process has one identity; the first call
/// wins.
pub fn use_for_channels(settings: &TlsSettings) {
    let _ = CHANNELS.set(settings.clone());
}

/// An endpoint for another service: TLS when the URL is `https://`, with
/// the settings given to [`use_for_channels`] (or none: the Mozilla roots).
pub fn endpoint(url: &str) -> Result<ServiceEndpoint, TlsError> {
    endpoint_with(url, CHANNELS.get().unwrap_or(&TlsSettings::default()))
}

/// An endpoint for another service with explicit TLS settings.
pub fn endpoint_with(url: &str, settings: &TlsSettings) -> Result<ServiceEndpoint, TlsError> {
    let Some(rest) = url.strip_prefix("https://") else {
        let endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|error| TlsError::Config(format!("{url}: {error}")))?;
        return Ok(ServiceEndpoint { endpoint, tls: None });
    };
    // tonic is given the address only: the dialer below does the TLS, so
    // that each new connection takes the identity as its files are now.
    let endpoint =
        Endpoint::from_shared(format!("http://{rest}")).map_err(|error| TlsError::Config(format!("{url}: {error}")))?;
    Ok(ServiceEndpoint { endpoint, tls: Some(Arc::new(ClientTls::load(settings)?)) })
}

/// How long connecting to another service (and the TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A channel to the service `name` at `url` that connects on first use, so
/// that a service starts (and refuses calls that need the other as
/// UNAVAILABLE) while the other is down; each call may take `call_timeout`.
pub fn lazy_channel(url: &str, name: &str, call_timeout: Duration) -> Result<crate::channel::ServiceChannel, String> {
    Ok(endpoint(url)
        .map_err(|error| format!("{name} endpoint {url:?}: {error}"))?
        .timeout(call_timeout)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_lazy())
}

/// A channel's endpoint, plaintext or over TLS; built like tonic's.
pub struct ServiceEndpoint {
    endpoint: Endpoint,
    tls: Option<Arc<ClientTls>>,
}

impl ServiceEndpoint {
    /// How long a call may take.
    pub fn timeout(self, timeout: Duration) -> Self {
        Self { endpoint: self.endpoint.timeout(timeout), ..self }
    }

    /// How long connecting (and the TLS handshake) may take.
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        Self { endpoint: self.endpoint.connect_timeout(timeout), ..self }
    }

    /// A channel that connects on first use, and again after a connection
    /// is lost; its calls are traced.
    pub fn connect_lazy(self) -> crate::channel::ServiceChannel {
        crate::channel::ServiceChannel::new(match self.tls {
            None => self.endpoint.connect_lazy(),
            Some(tls) => self.endpoint.connect_with_connector_lazy(Dialer { tls }),
        })
    }

    /// A channel connected now.
    pub async fn connect(self) -> Result<Channel, tonic::transport::Error> {
        match self.tls {
            None => self.endpoint.connect().await,
            Some(tls) => self.endpoint.connect_with_connector(Dialer { tls }).await,
        }
    }
}

/// The files a server's TLS is built from.
fn server_files(settings: &TlsSettings) -> [&str; 3] {
    [&settings.cert_file, &settings.key_file, &settings.client_ca_file]
}

/// The files a client's TLS is built from.
fn client_files(settings: &TlsSettings) -> [&str; 3] {
    [&settings.cert_file, &settings.key_file, &settings.ca_file]
}

/// A client's rustls configuration, built afresh from the files: the CA
/// file's roots (the Mozilla roots without one) and, when the process has a
/// certificate, that certificate as its identity.
fn client_config(settings: &TlsSettings) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    if settings.ca_file.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        for certificate in certificates(&settings.ca_file)? {
            roots.add(certificate).map_err(|error| TlsError::Config(format!("ca_file: {error}")))?;
        }
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_root_certificates(roots);
    let mut config = if settings.enabled() {
        let key = PrivateKeyDer::from_pem_slice(&read(&settings.key_file)?)
            .map_err(|error| TlsError::File { path: settings.key_file.clone(), message: error.to_string() })?;
        builder
            .with_client_auth_cert(certificates(&settings.cert_file)?, key)
            .map_err(|error| TlsError::Config(format!("cert_file and key_file: {error}")))?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client's TLS, re-read when its files change: looked at when a
/// connection is made, at most every `reload_interval_ms`. A renewed
/// certificate that does not load yet is logged and the previous one kept.
pub struct ClientTls {
    settings: TlsSettings,
    state: std::sync::Mutex<ClientState>,
}

struct ClientState {
    config: Arc<ClientConfig>,
    stamps: Vec<Option<(SystemTime, u64)>>,
    checked: std::time::Instant,
}

impl ClientTls {
    fn load(settings: &TlsSettings) -> Result<Self, TlsError> {
        let state = ClientState {
            config: Arc::new(client_config(settings)?),
            stamps: stamps(client_files(settings)),
            checked: std::time::Instant::now(),
        };
        Ok(Self { settings: settings.clone(), state: std::sync::Mutex::new(state) })
    }

    /// The configuration for a new connection.
    fn config(&self) -> Arc<ClientConfig> {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.checked.elapsed() >= Duration::from_millis(self.settings.reload_interval_ms) {
            state.checked = std::time::Instant::now();
            let now = stamps(client_files(&self.settings));
            if now != state.stamps {
                match client_config(&self.settings) {
                    Ok(config) => {
                        state.config = Arc::new(config);
                        state.stamps = now;
                        metrics::counter!("reservoir_tls_reloads_total", "outcome" => "loaded").increment(1);
                        tracing::info!(cert_file = %self.settings.cert_file, "client TLS files changed: reloaded");
                    }
                    Err(error) => {
                        metrics::counter!("reservoir_tls_reloads_total", "outcome" => "failed").increment(1);
                        tracing::warn!(%error, "client TLS files changed but do not load; the previous ones stay in use");
                    }
                }
            }
        }
        state.config.clone()
    }
}

/// Dials a service and runs the TLS handshake with the client's TLS as it
/// is now. Written here because tonic's own client TLS reads its files once.
#[derive(Clone)]
struct Dialer {
    tls: Arc<ClientTls>,
}

impl tower::Service<http::Uri> for Dialer {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.tls.config();
        Box::pin(async move {
            let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
            let host = uri.host().ok_or_else(|| invalid(format!("{uri}: no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|error| invalid(format!("{host}: {error}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
