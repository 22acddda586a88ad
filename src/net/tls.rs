//! TLS (rustls, ring provider) as a layer of the transport seam: a [`TlsListener`] that hands
//! the accept loop connections to complete a server handshake on, and a [`TlsDialer`] that
//! opens client connections. No protocol code sees TLS: both hand out [`BoxStream`]s.
//!
//! What each port asks for (`docs/security.md`):
//! - client, admin and Nacos ports: the node's certificate, no client certificate;
//! - the peer port and the peer links: mutual TLS — both sides present a certificate signed by
//!   the cluster's CA, and verify the other's against it. A peer without one fails the
//!   handshake, before a single Distro frame is read.
//!
//! Certificates and keys are read from PEM files once, at start; an unreadable file, a file
//! with no certificate or no key, or a key that does not match its certificate is a start-up
//! error that names the file.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{BoxStream, Dialer, Listener};

/// How long a connection may take over its TLS handshake before it is dropped: a client that
/// opens a socket and sends nothing holds a connection slot no longer than this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// ALPN of the Nacos gRPC port: gRPC clients refuse a TLS connection that did not agree on h2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of the HTTP/1.1 ports (admin, Nacos HTTP).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A TLS setting that cannot be used; the message names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{0}")]
    Config(String),
}

/// A TLS setting that cannot be used is an invalid input to whatever reads it (`distrod` at
/// start).
impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
    }
}

/// ring, not aws-lc-rs: it builds with the C compiler alone (aws-lc wants cmake and minutes of
/// build). rustls marks ring's provider deprecated because it has no post-quantum key exchange;
/// the key exchanges it offers (X25519, P-256, P-384) are the classical ones.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file (a certificate chain, or a CA bundle).
fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |reason: String| TlsError::Read {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "PEM certificate",
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "TLS key",
            path: path.to_owned(),
            expected: "PEM private key",
        },
        e => TlsError::Read {
            what: "TLS key",
            path: path.to_owned(),
            reason: e.to_string(),
        },
    })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(path, "TLS CA file")? {
        roots.add(c).map_err(|e| TlsError::Read {
            what: "TLS CA file",
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// A node's TLS material: its certificate chain and key, and the CA that signs the cluster's
/// certificates (needed for mutual TLS between peers, and by clients that verify the node).
#[derive(Clone)]
pub struct NodeTls {
    cert_chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    ca: Option<Arc<RootCertStore>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("certificates", &self.cert_chain.len())
            .field("ca", &self.ca.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Reads the certificate chain, the key and (for mutual TLS between peers) the CA, and
    /// checks that the key belongs to the certificate.
    pub fn load(cert: &Path, key_file: &Path, ca: Option<&Path>) -> Result<NodeTls, TlsError> {
        let tls = NodeTls {
            cert_chain: certs(cert, "TLS certificate")?,
            key: Arc::new(key(key_file)?),
            ca: ca.map(roots).transpose()?,
        };
        // Building a server config checks that the key matches the certificate.
        tls.server(&[])?;
        Ok(tls)
    }

    /// A server config presenting the node's certificate, no client certificate asked for.
    fn server(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_no_client_auth()
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(config_error)?;
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(c)
    }

    /// The acceptor of a port that serves clients (native, admin, Nacos), with `alpn` offered.
    pub fn client_port(&self, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
        Ok(TlsAcceptor::from(Arc::new(self.server(alpn)?)))
    }

    /// The acceptor of the peer port: mutual TLS, a client certificate signed by the cluster's
    /// CA required.
    pub fn peer_port(&self) -> Result<TlsAcceptor, TlsError> {
        let ca = self.peer_ca()?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(ca.clone(), provider())
                .build()
                .map_err(config_error)?;
        let c = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(config_error)?;
        Ok(TlsAcceptor::from(Arc::new(c)))
    }

    /// The connector of the peer links: verifies the peer against the cluster's CA and presents
    /// the node's own certificate.
    pub fn peer_links(&self) -> Result<TlsConnector, TlsError> {
        let c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(self.peer_ca()?)
            .with_client_auth_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(config_error)?;
        Ok(TlsConnector::from(Arc::new(c)))
    }

    fn peer_ca(&self) -> Result<Arc<RootCertStore>, TlsError> {
        self.ca.clone().ok_or_else(|| {
            TlsError::Config(
                "peers use mutual TLS: a cluster with a TLS certificate needs the CA that signs \
                 its members' certificates (--tls-ca)"
                    .into(),
            )
        })
    }
}

/// A client's TLS setting: the CA that signs the nodes' certificates.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Verifies nodes against the CA certificates of a PEM file.
    pub fn from_ca_file(ca: &Path) -> Result<ClientTls, TlsError> {
        ClientTls::from_ca_file_with_alpn(ca, &[])
    }

    /// Verifies nodes against `roots`, offering `alpn`.
    fn with_roots(roots: Arc<RootCertStore>, alpn: &[&[u8]]) -> Result<ClientTls, TlsError> {
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(c)),
        })
    }

    /// The same CA, offering `alpn` (h2 for a gRPC client).
    pub fn from_ca_file_with_alpn(ca: &Path, alpn: &[&[u8]]) -> Result<ClientTls, TlsError> {
        ClientTls::with_roots(roots(ca)?, alpn)
    }

    /// Completes a client handshake on `stream` with the node at `addr` (`host:port`; the
    /// node's certificate must name the host).
    pub async fn connect<S>(
        &self,
        addr: &str,
        stream: S,
    ) -> io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        handshake_client(&self.connector, addr, stream).await
    }

    /// A dialer that opens TCP connections and speaks TLS over them.
    pub fn dialer(&self) -> Arc<dyn Dialer> {
        Arc::new(TlsDialer::new(super::tcp(), self.connector.clone()))
    }
}

/// The host part of `host:port` as a TLS server name (an IP address or a DNS name).
fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr}: not a host name for TLS: {e}"),
        )
    })
}

async fn handshake_client<S>(
    connector: &TlsConnector,
    addr: &str,
    stream: S,
) -> io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let name = server_name(addr)?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream)).await {
        Ok(r) => r.map_err(|e| io::Error::new(e.kind(), format!("TLS with {addr}: {e}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS with {addr}: no handshake within {HANDSHAKE_TIMEOUT:?}"),
        )),
    }
}

/// Opens connections through `inner` and completes a client handshake on each.
pub struct TlsDialer {
    inner: Arc<dyn Dialer>,
    connector: TlsConnector,
}

impl TlsDialer {
    pub fn new(inner: Arc<dyn Dialer>, connector: TlsConnector) -> TlsDialer {
        TlsDialer { inner, connector }
    }
}

impl Dialer for TlsDialer {
    fn connect(&self, addr: String) -> BoxFuture<'static, io::Result<BoxStream>> {
        let opening = self.inner.connect(addr.clone());
        let connector = self.connector.clone();
        Box::pin(async move {
            let tcp = opening.await?;
            let tls = handshake_client(&connector, &addr, tcp).await?;
            Ok(Box::new(tls) as BoxStream)
        })
    }
}

/// A listener whose connections complete a server handshake before they are served. The
/// accept loop runs the handshake in the connection's own task ([`Listener::handshake`]), so a
/// slow or silent client never holds up the others.
pub struct TlsListener {
    inner: Box<dyn Listener>,
    acceptor: TlsAcceptor,
}

impl TlsListener {
    pub fn new(inner: Box<dyn Listener>, acceptor: TlsAcceptor) -> TlsListener {
        TlsListener { inner, acceptor }
    }
}

impl Listener for TlsListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        self.inner.accept()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn handshake(&self, stream: BoxStream) -> BoxFuture<'static, io::Result<BoxStream>> {
        let accepting = self.acceptor.accept(stream);
        Box::pin(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, accepting).await {
                Ok(Ok(s)) => Ok(Box::new(s) as BoxStream),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
                )),
            }
        })
    }
}

/// A listener that serves TLS when `acceptor` is given, plaintext otherwise.
pub fn maybe_tls(inner: Box<dyn Listener>, acceptor: Option<TlsAcceptor>) -> Box<dyn Listener> {
    match acceptor {
        Some(a) => Box::new(TlsListener::new(inner, a)),
        None => inner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_part() {
        assert_eq!(
            server_name("127.0.0.1:8858").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("[::1]:8858").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert_eq!(
            server_name("node-1.distro.svc:8858").unwrap(),
            ServerName::try_from("node-1.distro.svc").unwrap()
        );
        assert!(server_name("bad host:1").is_err());
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let e = NodeTls::load(
            Path::new("/nonexistent/cert.pem"),
            Path::new("/nonexistent/key.pem"),
            None,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("TLS certificate /nonexistent/cert.pem"),
            "{text}"
        );
    }
}
