//! TLS for the gRPC listener (rustls): the server certificate is re-read
//! when its files change, so a rotated certificate reaches new connections
//! without a restart; with a client CA, every client must present a
//! certificate it signed (mTLS), and the certificate's subject is available
//! to handlers through tonic's `peer_certs`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the listener's TLS material lives (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that sign client certificates: set, every client
    /// must present one (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// A TLS setting that cannot be used, with what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the certificate chain and key into a signing key.
fn load_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|error| {
            TlsError(format!(
                "--tls-cert {}: {error}: give a PEM certificate chain",
                files.cert.display()
            ))
        })?
        .collect::<Result<_, _>>()
        .map_err(|error| TlsError(format!("--tls-cert {}: {error}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "--tls-cert {}: no CERTIFICATE in it: give a PEM certificate chain, leaf first",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|error| {
        TlsError(format!(
            "--tls-key {}: {error}: give the certificate's PEM private key",
            files.key.display()
        ))
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|error| TlsError(format!("--tls-key {}: {error}", files.key.display())))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|error| {
        TlsError(format!(
            "--tls-cert {} and --tls-key {} do not belong together: {error}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

/// Hands out the current certificate; [`reload`] swaps it.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(|poison| poison.into_inner())
                .clone(),
        )
    }
}

/// The listener's TLS: an acceptor whose certificate follows the files.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    files: TlsFiles,
}

impl ServerTls {
    /// Loads the files (failing with what to fix) and builds the acceptor.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let current = Arc::new(Current(RwLock::new(load_key(files)?)));
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError(error.to_string()))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|error| {
                        TlsError(format!(
                            "--tls-client-ca {}: {error}: give the PEM certificates of the CA that signs client certificates",
                            path.display()
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|error| TlsError(format!("--tls-client-ca {}: {error}", path.display())))?;
                for cert in certs {
                    roots.add(cert).map_err(|error| {
                        TlsError(format!("--tls-client-ca {}: {error}", path.display()))
                    })?;
                }
                if roots.is_empty() {
                    return Err(TlsError(format!(
                        "--tls-client-ca {}: no CERTIFICATE in it",
                        path.display()
                    )));
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|error| {
                            TlsError(format!("--tls-client-ca {}: {error}", path.display()))
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(current.clone());
        // gRPC is HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            files: files.clone(),
        })
    }

    /// Accepts TCP connections on `listener`, completes their handshakes
    /// concurrently (a slow client holds up only itself), and yields the
    /// TLS streams until `shutdown`; also re-reads the certificate when its
    /// files change.
    pub fn incoming(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
        let (sender, receiver) = tokio::sync::mpsc::channel(128);
        tokio::spawn(reload(
            self.files.clone(),
            self.current.clone(),
            shutdown.clone(),
        ));
        let acceptor = self.acceptor;
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = shutdown.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send(Ok(tls)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::info!(%peer, %error, "TLS handshake refused");
                        }
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(receiver)
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

/// Re-reads the certificate and key when either file changes; a pair that
/// does not load (half written, mismatched) is skipped with a warning and
/// tried again at the next change, the old certificate staying in use.
async fn reload(files: TlsFiles, current: Arc<Current>, shutdown: CancellationToken) {
    let stamp = |files: &TlsFiles| (modified(&files.cert), modified(&files.key));
    let mut seen = stamp(&files);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RELOAD_INTERVAL) => {}
        }
        let now = stamp(&files);
        if now == seen {
            continue;
        }
        match load_key(&files) {
            Ok(key) => {
                *current
                    .0
                    .write()
                    .unwrap_or_else(|poison| poison.into_inner()) = key;
                seen = now;
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded: new connections get it");
            }
            Err(error) => {
                // Retried on the next tick until it loads (files written
                // one after the other pass through a mismatched state).
                tracing::warn!(%error, "the changed TLS certificate does not load yet; keeping the current one");
            }
        }
    }
}

/// The CA and client identity this process uses for its own outgoing
/// connections to `https://` peers (`--tls-ca`, and `--tls-cert`/`--tls-key`
/// as the client certificate when the peer requires one).
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<&TlsFiles>,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let mut config = tonic::transport::ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca)
            .map_err(|error| TlsError(format!("--tls-ca {}: {error}", ca.display())))?;
        config = config.ca_certificate(tonic::transport::Certificate::from_pem(pem));
    }
    if let Some(files) = identity {
        let cert = std::fs::read(&files.cert)
            .map_err(|error| TlsError(format!("--tls-cert {}: {error}", files.cert.display())))?;
        let key = std::fs::read(&files.key)
            .map_err(|error| TlsError(format!("--tls-key {}: {error}", files.key.display())))?;
        config = config.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Ok(config)
}
