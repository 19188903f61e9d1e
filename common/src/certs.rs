//! The cluster CA and the certificates it issues, with SPIFFE-style identities
//! `spiffe://<trust-domain>/<role>/<name>` in a URI SAN.
//!
//! The CA stores its trust domain in its own URI SAN (`spiffe://<trust-domain>`), so `issue`
//! needs only the CA files. rcgen is built without its `x509-parser` feature, so the CA is
//! loaded back by rebuilding its subject name from the parsed certificate; `issue` then checks
//! that the new certificate's issuer is byte-for-byte the CA's subject.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::names::name_problem;

/// Trust domain used when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "conveyor.local";

/// Longest validity `issue` accepts, in days.
pub const MAX_DAYS: u32 = 36_500;

/// The CA certificate's file name inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name inside the CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Common name prefix of CAs made by `init_ca` (followed by the trust domain).
const CA_CN_PREFIX: &str = "Conveyor CA ";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Coordinator,
    Agent,
    Operator,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Coordinator, Role::Agent, Role::Operator, Role::Viewer];

    /// The role as it appears in identities: `coordinator`, `agent`, `operator`, `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = CertError;

    fn from_str(s: &str) -> Result<Self, CertError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                CertError::Identity(format!(
                    "unknown role `{s}` (expected coordinator, agent, operator or viewer)"
                ))
            })
    }
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub trust_domain: String,
    pub role: Role,
    pub name: String,
}

/// `spiffe://<trust-domain>/<role>/<name>`.
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/{}/{}",
            self.trust_domain, self.role, self.name
        )
    }
}

/// Parses `spiffe://<trust-domain>/<role>/<name>`.
impl FromStr for Identity {
    type Err = CertError;

    fn from_str(s: &str) -> Result<Self, CertError> {
        let bad = |why: String| CertError::Identity(format!("`{s}`: {why}"));
        let Some(rest) = s.strip_prefix("spiffe://") else {
            return Err(bad("not a spiffe:// URI".to_string()));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let [trust_domain, role, name] = parts[..] else {
            return Err(bad(
                "expected the form spiffe://<trust-domain>/<role>/<name>".to_string(),
            ));
        };
        if let Some(problem) = trust_domain_problem(trust_domain) {
            return Err(bad(problem));
        }
        let role = Role::from_str(role).map_err(|e| match e {
            CertError::Identity(m) => bad(m),
            other => other,
        })?;
        if let Some(problem) = name_problem(name) {
            return Err(bad(problem));
        }
        Ok(Identity {
            trust_domain: trust_domain.to_string(),
            role,
            name: name.to_string(),
        })
    }
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

/// Why `td` is not a trust domain (`[a-z0-9._-]+`, as SPIFFE requires), or `None`.
pub fn trust_domain_problem(td: &str) -> Option<String> {
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
    if td.is_empty() {
        Some("the trust domain is empty".to_string())
    } else if td.len() > 255 || !td.bytes().all(ok_char) {
        Some(format!(
            "`{td}` is not a valid trust domain (use lowercase letters, digits, `.`, `-` and `_`)"
        ))
    } else {
        None
    }
}

/// Creates `dir/ca.pem` and `dir/ca-key.pem` (refuses to overwrite an existing CA).
pub fn init_ca(dir: &Path, trust_domain: &str) -> Result<IssuedFiles, CertError> {
    if let Some(problem) = trust_domain_problem(trust_domain) {
        return Err(CertError::Identity(problem));
    }
    let files = IssuedFiles {
        cert: dir.join(CA_CERT_FILE),
        key: dir.join(CA_KEY_FILE),
    };
    for path in [&files.cert, &files.key] {
        if path.exists() {
            return Err(CertError::Io(format!(
                "refusing to overwrite the existing CA file {}",
                path.display()
            )));
        }
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{CA_CN_PREFIX}{trust_domain}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = ca_key_usages();
    params.subject_alt_names = vec![SanType::URI(ia5(&format!("spiffe://{trust_domain}"))?)];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let key = KeyPair::generate().map_err(generate)?;
    let key_pem = key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(params, key).map_err(generate)?;
    create_dir(dir)?;
    write_file(&files.key, key_pem.as_bytes(), true, true)?;
    write_file(&files.cert, ca.pem().as_bytes(), false, true)?;
    Ok(files)
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
    if let Some(problem) = name_problem(name) {
        return Err(CertError::Identity(problem));
    }
    if days == 0 || days > MAX_DAYS {
        return Err(CertError::Generate(format!(
            "validity must be between 1 and {MAX_DAYS} days, not {days}"
        )));
    }
    let ca = LoadedCa::load(ca_dir)?;
    let identity = Identity {
        trust_domain: ca.trust_domain.clone(),
        role,
        name: name.to_string(),
    };

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let mut alt_names = vec![SanType::URI(ia5(&identity.to_string())?)];
    let mut extra: Vec<&str> = Vec::new();
    if role == Role::Coordinator {
        extra.extend(["localhost", "127.0.0.1"]);
    }
    extra.extend(sans.iter().map(String::as_str));
    for san in extra {
        let entry = match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(ia5(san)?),
        };
        if !alt_names.contains(&entry) {
            alt_names.push(entry);
        }
    }
    params.subject_alt_names = alt_names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Coordinator => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Agent | Role::Operator | Role::Viewer => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(i64::from(days));

    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &ca.issuer).map_err(generate)?;
    check_issuer(cert.der(), &ca.subject_der)?;

    let files = IssuedFiles {
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}-key.pem")),
    };
    create_dir(out_dir)?;
    write_file(&files.key, key.serialize_pem().as_bytes(), true, false)?;
    write_file(&files.cert, cert.pem().as_bytes(), false, false)?;
    Ok(files)
}

/// Issues a client certificate with exactly the given URI SANs and validity window, skipping
/// every identity check `issue` makes. For tests of refusals (no, malformed or foreign
/// identities; expired certificates): never use it to issue real certificates.
pub fn issue_unchecked(
    ca_dir: &Path,
    out_dir: &Path,
    file_stem: &str,
    uris: &[&str],
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> Result<IssuedFiles, CertError> {
    let ca = LoadedCa::load(ca_dir)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, file_stem);
    params.subject_alt_names = uris
        .iter()
        .map(|u| ia5(u).map(SanType::URI))
        .collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &ca.issuer).map_err(generate)?;
    let files = IssuedFiles {
        cert: out_dir.join(format!("{file_stem}.pem")),
        key: out_dir.join(format!("{file_stem}-key.pem")),
    };
    create_dir(out_dir)?;
    write_file(&files.key, key.serialize_pem().as_bytes(), true, false)?;
    write_file(&files.cert, cert.pem().as_bytes(), false, false)?;
    Ok(files)
}

/// What `cdctl certs show` prints about a certificate.
#[derive(Debug, Clone)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// The SPIFFE identity, or why the certificate has no valid one (a server refuses it).
    pub identity: Result<Identity, String>,
    /// DNS names and IP addresses it is valid for (coordinators).
    pub dns_and_ips: Vec<String>,
}

/// Summarises the first certificate of a PEM file.
pub fn describe_pem_file(path: &Path) -> Result<CertSummary, CertError> {
    let text = read_text(path)?;
    let der = pem_certificate(&text)
        .map_err(|why| CertError::Io(format!("{}: {why}", path.display())))?;
    describe(&der).map_err(|e| CertError::Io(format!("{}: {e}", path.display())))
}

/// Summarises a DER certificate.
pub fn describe(der: &[u8]) -> Result<CertSummary, CertError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| CertError::Identity(format!("not an X.509 certificate: {e}")))?;
    let mut dns_and_ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns_and_ips.push((*d).to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => dns_and_ips.push(
                        IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()).to_string(),
                    ),
                    16 => dns_and_ips.push(
                        IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        identity: identity_from_der(der).map_err(|e| match e {
            CertError::Identity(m) => m,
            other => other.to_string(),
        }),
        dns_and_ips,
    })
}

/// The serial number of a DER certificate as colon-separated hex (as `openssl x509 -serial`
/// prints it, lower case): how logs tell a rotated certificate from the one before.
pub fn serial_from_der(der: &[u8]) -> Result<String, CertError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| CertError::Identity(format!("not an X.509 certificate: {e}")))?;
    Ok(cert.tbs_certificate.raw_serial_as_string())
}

/// The serial number of the first certificate in a PEM file (see [`serial_from_der`]).
pub fn serial_of_pem_file(path: &Path) -> Result<String, CertError> {
    let text = read_text(path)?;
    let der = pem_certificate(&text)
        .map_err(|why| CertError::Io(format!("{}: {why}", path.display())))?;
    serial_from_der(&der).map_err(|e| CertError::Io(format!("{}: {e}", path.display())))
}

/// Reads the SPIFFE identity out of a DER certificate.
pub fn identity_from_der(der: &[u8]) -> Result<Identity, CertError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| CertError::Identity(format!("not an X.509 certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Identity(format!("unreadable subjectAltName: {e}")))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let spiffe: Vec<&str> = uris
        .iter()
        .copied()
        .filter(|u| u.starts_with("spiffe://"))
        .collect();
    match (spiffe.as_slice(), uris.as_slice()) {
        ([one], _) => one.parse(),
        ([], []) => Err(CertError::Identity(
            "the certificate has no URI SAN (expected spiffe://<trust-domain>/<role>/<name>)"
                .to_string(),
        )),
        ([], others) => Err(CertError::Identity(format!(
            "the certificate's URI SAN `{}` is not a spiffe:// identity",
            others.join("`, `")
        ))),
        (many, _) => Err(CertError::Identity(format!(
            "the certificate has {} spiffe:// URI SANs; expected exactly one",
            many.len()
        ))),
    }
}

/// The trust domain a CA certificate (DER) belongs to: from its `spiffe://<td>` URI SAN, or
/// else from a common name `Conveyor CA <td>` or `<td>`.
pub fn ca_trust_domain(der: &[u8]) -> Result<String, CertError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| CertError::Identity(format!("not an X.509 certificate: {e}")))?;
    trust_domain_of(&cert)
}

/// The trust domain of the CA certificate in a PEM file (see [`ca_trust_domain`]).
pub fn ca_trust_domain_file(path: &Path) -> Result<String, CertError> {
    let text = read_text(path)?;
    let der = pem_certificate(&text)
        .map_err(|why| CertError::Io(format!("{}: {why}", path.display())))?;
    ca_trust_domain(&der)
}

fn trust_domain_of(cert: &X509Certificate) -> Result<String, CertError> {
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(td) = uri.strip_prefix("spiffe://")
            {
                let td = td.trim_end_matches('/');
                return match trust_domain_problem(td) {
                    None => Ok(td.to_string()),
                    Some(problem) => Err(CertError::Identity(format!("CA URI SAN: {problem}"))),
                };
            }
        }
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|attr| attr.as_str().ok())
        .unwrap_or_default();
    let td = cn.strip_prefix(CA_CN_PREFIX).unwrap_or(cn);
    match trust_domain_problem(td) {
        None => Ok(td.to_string()),
        Some(_) => Err(CertError::Identity(format!(
            "the CA names no trust domain: no spiffe:// URI SAN, and its common name `{cn}` is \
             not one"
        ))),
    }
}

/// The CA read back from its two files, ready to sign.
struct LoadedCa {
    issuer: Issuer<'static, KeyPair>,
    trust_domain: String,
    subject_der: Vec<u8>,
}

impl LoadedCa {
    fn load(ca_dir: &Path) -> Result<Self, CertError> {
        let cert_path = ca_dir.join(CA_CERT_FILE);
        let key_path = ca_dir.join(CA_KEY_FILE);
        let cert_pem = read_text(&cert_path)?;
        let key_pem = read_text(&key_path)?;
        let bad_cert = |why: String| {
            CertError::Io(format!(
                "{} is not a CA certificate: {why}",
                cert_path.display()
            ))
        };
        let der = pem_certificate(&cert_pem).map_err(bad_cert)?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad_cert(format!("{e}")))?;
        if !cert.is_ca() {
            return Err(bad_cert(
                "its basic constraints do not allow signing".to_string(),
            ));
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            CertError::Io(format!("{} is not a private key: {e}", key_path.display()))
        })?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(CertError::Io(format!(
                "{} does not belong to the certificate in {}",
                key_path.display(),
                cert_path.display()
            )));
        }
        let trust_domain = trust_domain_of(&cert)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&cert)?;
        params.key_usages = ca_key_usages();
        Ok(LoadedCa {
            issuer: Issuer::new(params, key),
            trust_domain,
            subject_der: cert.subject().as_raw().to_vec(),
        })
    }
}

fn ca_key_usages() -> Vec<KeyUsagePurpose> {
    vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ]
}

/// The CA's subject as rcgen values, keeping each attribute's string type so the issued
/// certificate's issuer encodes to the same bytes.
fn distinguished_name(cert: &X509Certificate) -> Result<DistinguishedName, CertError> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut dn = DistinguishedName::new();
    for attr in cert.subject().iter_attributes() {
        let unsupported = || {
            CertError::Generate(format!(
                "cannot reproduce the CA's subject attribute {}",
                attr.attr_type()
            ))
        };
        let oid: Vec<u64> = attr.attr_type().iter().ok_or_else(unsupported)?.collect();
        let text = attr.as_str().map_err(|_| unsupported())?;
        let value = match attr.attr_value().tag() {
            Tag::PrintableString => {
                DnValue::PrintableString(text.try_into().map_err(|_| unsupported())?)
            }
            Tag::Ia5String => DnValue::Ia5String(text.try_into().map_err(|_| unsupported())?),
            Tag::Utf8String => DnValue::Utf8String(text.to_string()),
            _ => return Err(unsupported()),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

/// Refuses a certificate whose issuer name differs from the CA's subject (it would not chain).
fn check_issuer(der: &[u8], ca_subject: &[u8]) -> Result<(), CertError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| CertError::Generate(format!("issued certificate does not parse: {e}")))?;
    if cert.issuer().as_raw() != ca_subject {
        return Err(CertError::Generate(
            "the issued certificate's issuer does not match the CA's subject".to_string(),
        ));
    }
    Ok(())
}

fn pem_certificate(text: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(text.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|e| format!("no PEM CERTIFICATE block ({e})"))
}

fn ia5(text: &str) -> Result<rcgen::string::Ia5String, CertError> {
    text.try_into()
        .map_err(|e| CertError::Generate(format!("`{text}` cannot go in a certificate: {e}")))
}

fn generate(err: rcgen::Error) -> CertError {
    CertError::Generate(err.to_string())
}

fn read_text(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path)
        .map_err(|e| CertError::Io(format!("cannot read {}: {e}", path.display())))
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CertError::Io(format!("cannot create {}: {e}", dir.display())))
}

/// Writes `data` to `path`; private files get mode 0600 (also when they already existed).
/// With `new_only`, an existing file is an error.
fn write_file(path: &Path, data: &[u8], private: bool, new_only: bool) -> Result<(), CertError> {
    let io = |e: std::io::Error| CertError::Io(format!("cannot write {}: {e}", path.display()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if new_only {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(if private { 0o600 } else { 0o644 });
        let mut file = options.open(path).map_err(io)?;
        if private {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        file.write_all(data).map_err(io)?;
        file.sync_all().map_err(io)
    }
    #[cfg(not(unix))]
    {
        let _ = private;
        let mut file = options.open(path).map_err(io)?;
        file.write_all(data).map_err(io)?;
        file.sync_all().map_err(io)
    }
}
