//! The cluster CA and the certificates it issues, with SPIFFE-style identities
//! `spiffe://<trust-domain>/<role>/<name>` in a URI SAN.

use std::path::{Path, PathBuf};

/// Trust domain used when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "conveyor.local";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Coordinator,
    Agent,
    Operator,
    Viewer,
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub trust_domain: String,
    pub role: Role,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}")]
    Io(String),
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("bad identity: {0}")]
    Identity(String),
}

/// Files written by `issue`.
#[derive(Debug, Clone)]
pub struct IssuedFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates `dir/ca.pem` and `dir/ca-key.pem` (refuses to overwrite an existing CA).
pub fn init_ca(dir: &Path, trust_domain: &str) -> Result<IssuedFiles, CertError> {
    let _ = (dir, trust_domain);
    todo!("H1")
}

/// Issues `out_dir/<name>.pem` and `out_dir/<name>-key.pem` signed by the CA in `ca_dir`.
/// `sans` are extra DNS names or IP addresses (coordinators always get `localhost` and
/// `127.0.0.1`). Valid for `days`.
pub fn issue(
    ca_dir: &Path,
    out_dir: &Path,
    role: Role,
    name: &str,
    sans: &[String],
    days: u32,
) -> Result<IssuedFiles, CertError> {
    let _ = (ca_dir, out_dir, role, name, sans, days);
    todo!("H1")
}

/// Reads the SPIFFE identity out of a DER certificate.
pub fn identity_from_der(der: &[u8]) -> Result<Identity, CertError> {
    let _ = der;
    todo!("H1")
}
