//! Loading certificates into tonic's mutual-TLS configuration (rustls underneath).
//!
//! Files are checked before tonic sees them (right PEM block kind, parseable X.509, key that
//! matches the certificate) because tonic only fails later, at bind or connect time, with an
//! error that does not say which file is wrong.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The three files a node or client needs: the cluster CA, its certificate and its key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsPaths {
    /// `dir/ca.pem`, `dir/<name>.pem` and `dir/<name>-key.pem`, the layout `certs::issue`
    /// writes (with the CA copied or linked next to them).
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsPaths {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // The I/O error is part of the message and deliberately not a `source`, so an error
    // chain printed with `{:#}` does not repeat it.
    #[error("cannot read {what} at {path}: {error}")]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
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
pub fn server_tls(paths: &TlsPaths) -> Result<ServerTlsConfig, TlsError> {
    let files = load(paths)?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(files.cert, files.key))
        .client_ca_root(Certificate::from_pem(files.ca)))
}

/// A plain rustls server config presenting `cert`/`key` without asking for a client
/// certificate: for the webhook listener, whose senders (GitHub, GitLab) have none and prove
/// themselves with an HMAC instead.
pub fn server_tls_without_client_auth(paths: &TlsPaths) -> Result<rustls::ServerConfig, TlsError> {
    let files = load(paths)?;
    let chain = certificates(CERT, &paths.cert, &files.cert)?;
    let key = private_key(&paths.key, &files.key)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(CERT, &paths.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(KEY, &paths.key, e.to_string()))
}

/// The certificate chain and key in `paths`, checked as `server_tls` checks them, ready for a
/// rustls server whose certificate can be swapped while it runs (rotation).
pub fn certified_key(paths: &TlsPaths) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let cert = read(CERT, &paths.cert)?;
    let chain = certificates(CERT, &paths.cert, &cert)?;
    let key = read(KEY, &paths.key)?;
    let key_der = private_key(&paths.key, &key)?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key_der, &provider).map_err(|err| {
        invalid(
            KEY,
            &paths.key,
            format!(
                "it cannot be used with the certificate in {}: {err}",
                paths.cert.display()
            ),
        )
    })
}

/// The cluster CA in `paths` as the roots client certificates must chain to.
pub fn ca_roots(paths: &TlsPaths) -> Result<rustls::RootCertStore, TlsError> {
    let ca = read(CA, &paths.ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for der in certificates(CA, &paths.ca, &ca)? {
        roots
            .add(der)
            .map_err(|e| invalid(CA, &paths.ca, e.to_string()))?;
    }
    Ok(roots)
}

/// Client side: trusts only `ca`, presents `cert`/`key`, and checks the server as `domain`.
pub fn client_tls(paths: &TlsPaths, domain: &str) -> Result<ClientTlsConfig, TlsError> {
    let files = load(paths)?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(files.ca))
        .identity(Identity::from_pem(files.cert, files.key))
        .domain_name(domain))
}

/// The PEM text of the three files, checked.
struct Files {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

const CA: &str = "CA certificate";
const CERT: &str = "certificate";
const KEY: &str = "private key";

fn load(paths: &TlsPaths) -> Result<Files, TlsError> {
    let ca = read(CA, &paths.ca)?;
    certificates(CA, &paths.ca, &ca)?;
    // Checks that the chain and key parse and belong together.
    certified_key(paths)?;
    Ok(Files {
        ca,
        cert: read(CERT, &paths.cert)?,
        key: read(KEY, &paths.key)?,
    })
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })
}

fn invalid(what: &'static str, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Every PEM block in `text`, in order.
fn sections(
    what: &'static str,
    path: &Path,
    text: &[u8],
) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsError> {
    let mut reader: &mut dyn BufRead = &mut &text[..];
    let mut out = Vec::new();
    loop {
        match pem::from_buf(&mut reader) {
            Ok(Some(section)) => out.push(section),
            Ok(None) => return Ok(out),
            Err(err) => return Err(invalid(what, path, err.to_string())),
        }
    }
}

fn kind_name(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        SectionKind::EchConfigList => "ECHCONFIG",
        _ => "unknown",
    }
}

fn found(sections: &[(SectionKind, Vec<u8>)]) -> String {
    if sections.is_empty() {
        "no PEM blocks".to_string()
    } else {
        let kinds: Vec<&str> = sections.iter().map(|(k, _)| kind_name(*k)).collect();
        kinds.join(", ")
    }
}

/// The certificates in a PEM file; there must be at least one and each must parse as X.509.
fn certificates(
    what: &'static str,
    path: &Path,
    text: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let all = sections(what, path, text)?;
    let certs: Vec<CertificateDer<'static>> = all
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    if certs.is_empty() {
        return Err(invalid(
            what,
            path,
            format!("it holds no CERTIFICATE block (found {})", found(&all)),
        ));
    }
    for (i, cert) in certs.iter().enumerate() {
        if let Err(err) = x509_parser::parse_x509_certificate(cert) {
            return Err(invalid(
                what,
                path,
                format!("certificate {} does not parse as X.509: {err}", i + 1),
            ));
        }
    }
    Ok(certs)
}

/// The one private key in a PEM file.
fn private_key(path: &Path, text: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    let all = sections(KEY, path, text)?;
    let mut keys = all.iter().filter_map(|(kind, der)| match kind {
        SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(der.clone().into())),
        SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(der.clone().into())),
        SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(der.clone().into())),
        _ => None,
    });
    let Some(key) = keys.next() else {
        return Err(invalid(
            KEY,
            path,
            format!("it holds no PRIVATE KEY block (found {})", found(&all)),
        ));
    };
    if keys.next().is_some() {
        return Err(invalid(KEY, path, "it holds more than one private key"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{self, Role};

    fn setup() -> (tempfile::TempDir, TlsPaths) {
        let dir = tempfile::tempdir().expect("tempdir");
        certs::init_ca(dir.path(), "test.local").expect("ca");
        certs::issue(dir.path(), dir.path(), Role::Coordinator, "c1", &[], 1).expect("issue");
        let paths = TlsPaths::in_dir(dir.path(), "c1");
        (dir, paths)
    }

    #[test]
    fn good_files_load() {
        let (_dir, paths) = setup();
        server_tls(&paths).expect("server");
        client_tls(&paths, "localhost").expect("client");
    }

    #[test]
    fn missing_file_names_the_path() {
        let (dir, mut paths) = setup();
        paths.cert = dir.path().join("nope.pem");
        let err = server_tls(&paths).expect_err("missing");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot read certificate at {}: ",
                paths.cert.display()
            )),
            "{text}"
        );
        assert!(matches!(
            err,
            TlsError::Read {
                what: "certificate",
                ..
            }
        ));
    }

    #[test]
    fn key_given_as_cert_is_refused() {
        let (_dir, mut paths) = setup();
        paths.cert = paths.key.clone();
        let err = client_tls(&paths, "localhost").expect_err("key as cert");
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a valid PEM certificate: it holds no CERTIFICATE block (found PRIVATE KEY)",
                paths.key.display()
            )
        );
    }

    #[test]
    fn cert_given_as_key_is_refused() {
        let (_dir, mut paths) = setup();
        paths.key = paths.cert.clone();
        let err = server_tls(&paths).expect_err("cert as key");
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a valid PEM private key: it holds no PRIVATE KEY block (found CERTIFICATE)",
                paths.cert.display()
            )
        );
    }

    #[test]
    fn key_as_ca_and_garbage_are_refused() {
        let (dir, mut paths) = setup();
        paths.ca = paths.key.clone();
        let err = server_tls(&paths).expect_err("key as ca");
        assert!(
            err.to_string().contains("not a valid PEM CA certificate"),
            "{err}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").expect("write");
        paths.ca = junk.clone();
        let err = server_tls(&paths).expect_err("junk");
        assert_eq!(
            err.to_string(),
            format!(
                "{} is not a valid PEM CA certificate: it holds no CERTIFICATE block (found no PEM blocks)",
                junk.display()
            )
        );
    }

    #[test]
    fn mismatched_key_is_refused() {
        let (dir, mut paths) = setup();
        certs::issue(dir.path(), dir.path(), Role::Agent, "a1", &[], 1).expect("issue");
        paths.key = dir.path().join("a1-key.pem");
        let err = server_tls(&paths).expect_err("mismatch");
        assert!(
            err.to_string()
                .contains("cannot be used with the certificate"),
            "{err}"
        );
    }
}
