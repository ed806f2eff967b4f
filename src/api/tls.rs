//! HTTPS for the API: the certificate and key of `--api-tls-cert`/`--api-tls-key` (read again on
//! a reload, so a renewed certificate is served without a restart), the listener that completes
//! each TLS handshake beside axum's accept loop (a slow or silent client holds up only its own
//! connection, and gives up after a timeout), and the CAs of `--api-ca-file` that a `subscribe`
//! trusts the API by. It must never show a key's contents, and never answer in plain HTTP where
//! TLS was asked for.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tls_listener::{rustls::TlsAcceptor, TlsListener};
use tokio::net::{TcpListener, TcpStream};

/// Largest certificate or key file read: a chain is a few KiB.
const MAX_FILE: u64 = 1 << 20;
/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The API's certificate chain and key, loaded and checked against each other.
#[derive(Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// What these files held when they were read.
    loaded: Arc<CertifiedKey>,
    /// What the server hands out: `loaded`, until a reload adopts newer files.
    served: Arc<Served>,
    config: Arc<ServerConfig>,
}

/// The certificate every handshake gets, replaceable while the server runs.
#[derive(Debug)]
struct Served(std::sync::RwLock<Arc<CertifiedKey>>);

impl Served {
    fn get(&self) -> Arc<CertifiedKey> {
        // A panic while replacing it cannot leave a half-written Arc: keep serving what is there.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for Served {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// Two settings are the same when they name the same files (a reload compares them).
impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.key == other.key
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("cannot use {path} as the API's certificate: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot use {path} as the API's private key: {reason}")]
    Key { path: String, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert} ({reason}); give the key the certificate was issued for")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
}

impl ServerTlsError {
    /// The setting to correct.
    pub fn setting(&self) -> &'static str {
        match self {
            ServerTlsError::Cert { .. } => "api-tls-cert",
            ServerTlsError::Key { .. } | ServerTlsError::Mismatch { .. } => "api-tls-key",
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    if !path.is_file() {
        return Err("it does not exist or is not a file".into());
    }
    crate::config::read_bounded_bytes(path, MAX_FILE).map_err(|e| e.to_string())
}

/// The PEM certificates of a CA file, to trust besides the public roots.
pub fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let why = |reason: String| format!("cannot use {} as CA certificates: {reason}", path.display());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(path).map_err(why)?)
        .collect::<Result<_, _>>()
        .map_err(|e| why(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(why(
            "no PEM certificate in it (PEM text starts with -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// `http` trusting `ca` besides the public roots: how a `subscribe` or a `bench` reaches an
/// API with a certificate of its own.
pub fn trusting(
    mut http: reqwest::ClientBuilder,
    ca: &[CertificateDer<'static>],
) -> Result<reqwest::ClientBuilder, String> {
    for der in ca {
        let cert = reqwest::Certificate::from_der(der)
            .map_err(|e| format!("a certificate of --api-ca-file: {e}"))?;
        http = http.add_root_certificate(cert);
    }
    Ok(http)
}

impl ServerTls {
    /// Reads a PEM certificate chain (the server's certificate first) and its PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, ServerTlsError> {
        let cert_err = |reason: String| ServerTlsError::Cert {
            path: cert.display().to_string(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read(cert).map_err(cert_err)?)
                .collect::<Result<_, _>>()
                .map_err(|e| cert_err(format!("not PEM: {e}")))?;
        if chain.is_empty() {
            return Err(cert_err(
                "no PEM certificate in it (PEM text starts with -----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        // The error names the file and the kind of problem, never the key's bytes.
        let key_err = |reason: String| ServerTlsError::Key {
            path: key.display().to_string(),
            reason,
        };
        let private = PrivateKeyDer::from_pem_slice(&read(key).map_err(key_err)?)
            .map_err(|e| key_err(format!("no PEM private key in it ({e})")))?;
        let loaded = CertifiedKey::from_der(chain, private, &rustls::crypto::ring::default_provider())
            .map_err(|e| ServerTlsError::Mismatch {
                cert: cert.display().to_string(),
                key: key.display().to_string(),
                reason: e.to_string(),
            })?;
        let loaded = Arc::new(loaded);
        let served = Arc::new(Served(std::sync::RwLock::new(loaded.clone())));
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(served.clone());
        // axum serves HTTP/1.1 here.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            loaded,
            served,
            config: Arc::new(config),
        })
    }

    /// Serves `fresh`'s certificate from now on (new connections; open ones keep theirs) when it
    /// differs from the one served. Returns whether it did.
    pub fn adopt(&self, fresh: &ServerTls) -> bool {
        if self.served.get().cert == fresh.loaded.cert {
            return false;
        }
        *self.served.0.write().unwrap_or_else(|e| e.into_inner()) = fresh.loaded.clone();
        true
    }

    /// `tcp` serving TLS: what axum accepts is a finished handshake.
    pub fn listener(&self, tcp: TcpListener) -> HttpsListener {
        let inner = tls_listener::builder(TlsAcceptor::from(self.config.clone()))
            .handshake_timeout(HANDSHAKE_TIMEOUT)
            .listen(tcp);
        HttpsListener { inner }
    }
}

/// A TCP listener whose connections are TLS streams once their handshake is done.
pub struct HttpsListener {
    inner: TlsListener<TcpListener, TlsAcceptor>,
}

impl axum::serve::Listener for HttpsListener {
    type Io = tls_listener::rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok(accepted) => return accepted,
                Err(tls_listener::Error::ListenerError(e)) => {
                    // As axum's own listener: a refused or reset connection is the client's
                    // business; anything else (out of file descriptors) is worth a pause.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                    ) {
                        tracing::warn!("API accept failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                // A client speaking plain HTTP to this port, one that does not trust the
                // certificate, or a silent one: its connection ends, the others go on.
                Err(e) => tracing::debug!("API TLS handshake failed: {e}"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.listener().local_addr()
    }
}
