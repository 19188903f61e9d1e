//! Loading certificates into tonic's mutual-TLS configuration (rustls underneath).

use std::path::PathBuf;

/// The three files a node or client needs: the cluster CA, its certificate and its key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} at {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid PEM {what}: {message}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
}

/// Installs ring as rustls's crypto provider. Call first thing in every `main`; idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Server side: presents `cert`/`key` and requires a client certificate signed by `ca`.
pub fn server_tls(paths: &TlsPaths) -> Result<tonic::transport::ServerTlsConfig, TlsError> {
    let _ = paths;
    todo!("H1")
}

/// Client side: trusts only `ca`, presents `cert`/`key`, and checks the server as `domain`.
pub fn client_tls(
    paths: &TlsPaths,
    domain: &str,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let _ = (paths, domain);
    todo!("H1")
}
