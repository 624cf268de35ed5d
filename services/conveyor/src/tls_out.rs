//! This process's outgoing connections (to `--peer`s, the scheduler's
//! submission URL, and the CLI's `--server`): `https://` URLs use TLS,
//! trusting the system roots plus `--tls-ca` (`CONVEYOR_TLS_CA`), and
//! present a client certificate when one is configured: `CONVEYOR_TLS_CERT`
//! and `CONVEYOR_TLS_KEY` (as the SDKs read them), else a server's own
//! `--tls-cert`/`--tls-key`, for peers that require mTLS.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context as _;
use conveyor_runtime::tls::{TlsFiles, client_config};
use tonic::transport::Endpoint;

static CA: OnceLock<PathBuf> = OnceLock::new();
static IDENTITY: OnceLock<TlsFiles> = OnceLock::new();

/// Sets the CA to trust and the client identity (a server's own
/// certificate), once per process.
pub fn configure(ca: Option<PathBuf>, identity: Option<TlsFiles>) {
    if let Some(ca) = ca {
        let _ = CA.set(ca);
    }
    if let Some(identity) = identity {
        let _ = IDENTITY.set(identity);
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}

/// The client certificate from `CONVEYOR_TLS_CERT`/`CONVEYOR_TLS_KEY`.
fn env_identity() -> anyhow::Result<Option<TlsFiles>> {
    match (env_path("CONVEYOR_TLS_CERT"), env_path("CONVEYOR_TLS_KEY")) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert,
            key,
            client_ca: None,
        })),
        (None, None) => Ok(None),
        _ => anyhow::bail!(
            "CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY go together: set both (a client certificate and its key) or neither"
        ),
    }
}

/// An endpoint for `url`; an address without a scheme is `https://` when
/// a CA or client certificate is configured, else `http://`.
pub fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    endpoint_for(url, false)
}

/// As [`endpoint`], for the CLI, which follows the SDKs' rule: an `http://`
/// address with TLS settings in the environment is a mistake, said at once.
pub fn client_endpoint(url: &str) -> anyhow::Result<Endpoint> {
    endpoint_for(url, true)
}

fn endpoint_for(url: &str, strict: bool) -> anyhow::Result<Endpoint> {
    let ca = CA.get().cloned().or_else(|| env_path("CONVEYOR_TLS_CA"));
    let identity = env_identity()?.or_else(|| IDENTITY.get().cloned());
    if strict
        && (ca.is_some() || identity.is_some())
        && let Some(rest) = url.strip_prefix("http://")
    {
        anyhow::bail!(
            "{url} is plaintext but TLS settings are given (CONVEYOR_TLS_CA, CONVEYOR_TLS_CERT): use https://{rest}"
        );
    }
    let url = if url.contains("://") {
        url.to_string()
    } else if ca.is_some() || identity.is_some() {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("{url:?} is not an address such as http://127.0.0.1:50051"))?;
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let config = client_config(ca.as_deref(), identity.as_ref())?;
    endpoint
        .tls_config(config)
        .with_context(|| format!("TLS settings for {url}"))
}
