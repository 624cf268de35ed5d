//! TLS settings of the SDK: given in code ([`Tls`]), or read from the
//! environment as every Conveyor SDK reads them: `CONVEYOR_TLS_CA`, a PEM
//! file of CA certificates to trust besides the system's;
//! `CONVEYOR_TLS_CERT` and `CONVEYOR_TLS_KEY`, a client certificate and its
//! key for servers that require one (mTLS).

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::{Error, Result};

/// TLS settings for [`Client::connect_with_tls`](crate::Client::connect_with_tls)
/// and [`WorkerBuilder::tls`](crate::WorkerBuilder::tls); without them the
/// SDK reads `CONVEYOR_TLS_CA`, `CONVEYOR_TLS_CERT` and `CONVEYOR_TLS_KEY`.
/// An `https://` address (or one without a scheme, when settings are given)
/// uses TLS; an `http://` address with settings is a configuration error.
///
/// ```no_run
/// # async fn example() -> conveyor_client::Result<()> {
/// use conveyor_client::{Client, Tls};
/// let tls = Tls::new()
///     .ca_file("/etc/conveyor/ca.pem")
///     .identity_files("/etc/conveyor/client.pem", "/etc/conveyor/client.key");
/// let client = Client::connect_with_tls("https://conveyor:50051", tls).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Tls {
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}

fn read(path: &PathBuf, setting: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| {
        Error::Config(format!(
            "{setting} {}: {error}: point it at a PEM file",
            path.display()
        ))
    })
}

impl Tls {
    /// No settings: the system roots, no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also trust the CA certificates in this PEM file.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }

    /// Present this client certificate and key (PEM files), for servers
    /// started with `--tls-client-ca` (mTLS).
    pub fn identity_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// The settings in `CONVEYOR_TLS_CA`, `CONVEYOR_TLS_CERT` and
    /// `CONVEYOR_TLS_KEY`.
    pub fn from_env() -> Result<Self> {
        let identity = match (env_path("CONVEYOR_TLS_CERT"), env_path("CONVEYOR_TLS_KEY")) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY go together: set both (a client certificate and its key) or neither".into(),
                ));
            }
        };
        Ok(Self {
            ca: env_path("CONVEYOR_TLS_CA"),
            identity,
        })
    }

    /// Whether any TLS setting is given.
    pub(crate) fn is_set(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }

    /// These settings, or the environment's when `tls` is `None`.
    pub(crate) fn or_env(tls: Option<&Tls>) -> Result<Tls> {
        match tls {
            Some(tls) => Ok(tls.clone()),
            None => Self::from_env(),
        }
    }

    pub(crate) fn client_config(&self) -> Result<ClientTlsConfig> {
        let mut config = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &self.ca {
            config =
                config.ca_certificate(Certificate::from_pem(read(ca, "TLS CA (CONVEYOR_TLS_CA)")?));
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(
                read(cert, "TLS client certificate (CONVEYOR_TLS_CERT)")?,
                read(key, "TLS client key (CONVEYOR_TLS_KEY)")?,
            ));
        }
        Ok(config)
    }
}
