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
//! the service's identity in both directions. That identity is read once,
//! at start ([`use_for_channels`]); a restart picks up a renewed one.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

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
fn stamps(settings: &TlsSettings) -> Vec<Option<(SystemTime, u64)>> {
    [&settings.cert_file, &settings.key_file, &settings.client_ca_file]
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
        let mut seen = stamps(&self.settings);
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stopping.changed() => return,
            }
            let now = stamps(&self.settings);
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
pub fn endpoint(url: &str) -> Result<Endpoint, TlsError> {
    endpoint_with(url, CHANNELS.get().unwrap_or(&TlsSettings::default()))
}

/// An endpoint for another service with explicit TLS settings.
pub fn endpoint_with(url: &str, settings: &TlsSettings) -> Result<Endpoint, TlsError> {
    let endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|error| TlsError::Config(format!("{url}: {error}")))?;
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new();
    config = if settings.ca_file.is_empty() {
        config.with_webpki_roots()
    } else {
        config.ca_certificate(Certificate::from_pem(read(&settings.ca_file)?))
    };
    if settings.enabled() {
        config = config.identity(Identity::from_pem(read(&settings.cert_file)?, read(&settings.key_file)?));
    }
    endpoint.tls_config(config).map_err(|error| TlsError::Config(format!("{url}: {error}")))
}
