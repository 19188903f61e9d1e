//! The cluster CA and issued certificates: identities read back, key file modes, and
//! certificates of two CAs signed by different keys.

use std::path::Path;
use std::sync::Arc;

use cd_common::certs::{self, CertError, Identity, Role, identity_from_der};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

fn der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path)
        .expect("pem certificate")
        .to_vec()
}

#[test]
fn issue_each_role_and_read_the_identity_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    let out = dir.path().join("out");
    let ca = certs::init_ca(&ca_dir, "prod.example").expect("init ca");
    assert_eq!(ca.cert, ca_dir.join("ca.pem"));
    assert_eq!(
        certs::ca_trust_domain(&der(&ca.cert)).expect("td"),
        "prod.example"
    );

    for role in Role::ALL {
        let name = format!("{role}-1");
        let sans = vec!["node1.internal".to_string(), "10.0.0.7".to_string()];
        let files = certs::issue(&ca_dir, &out, role, &name, &sans, 30).expect("issue");
        assert_eq!(files.cert, out.join(format!("{name}.pem")));
        assert_eq!(files.key, out.join(format!("{name}-key.pem")));

        let cert_der = der(&files.cert);
        let identity = identity_from_der(&cert_der).expect("identity");
        assert_eq!(
            identity,
            Identity {
                trust_domain: "prod.example".to_string(),
                role,
                name: name.clone(),
            }
        );
        assert_eq!(
            identity.to_string(),
            format!("spiffe://prod.example/{role}/{name}")
        );

        let (_, cert) = X509Certificate::from_der(&cert_der).expect("x509");
        let eku = cert
            .extended_key_usage()
            .expect("eku ext")
            .expect("eku")
            .value;
        assert!(eku.client_auth, "{role}: client auth");
        assert_eq!(
            eku.server_auth,
            role == Role::Coordinator,
            "{role}: server auth"
        );
        let san = cert.subject_alternative_name().expect("san").expect("san");
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                GeneralName::URI(u) => format!("uri:{u}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert!(
            names.contains(&"dns:node1.internal".to_string()),
            "{names:?}"
        );
        assert!(names.contains(&"ip:[10, 0, 0, 7]".to_string()), "{names:?}");
        let has_localhost = names.contains(&"dns:localhost".to_string())
            && names.contains(&"ip:[127, 0, 0, 1]".to_string());
        assert_eq!(has_localhost, role == Role::Coordinator, "{names:?}");
        assert!(!cert.is_ca());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.key)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{role} key mode");
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ca.key)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "ca key mode");
    }
}

/// The issuer's key is identified by the Authority Key Identifier, which must equal the
/// issuing CA's Subject Key Identifier; the signature must verify with that CA's public key.
#[test]
fn certificates_from_two_cas_are_signed_by_different_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca1, ca2) = (dir.path().join("ca1"), dir.path().join("ca2"));
    certs::init_ca(&ca1, "one.local").expect("ca1");
    certs::init_ca(&ca2, "two.local").expect("ca2");
    let a = certs::issue(&ca1, dir.path(), Role::Agent, "a", &[], 1).expect("a");
    let b = certs::issue(&ca2, dir.path(), Role::Agent, "b", &[], 1).expect("b");

    let ca1_der = der(&ca1.join("ca.pem"));
    let ca2_der = der(&ca2.join("ca.pem"));
    let (_, ca1_cert) = X509Certificate::from_der(&ca1_der).expect("ca1");
    let (_, ca2_cert) = X509Certificate::from_der(&ca2_der).expect("ca2");
    assert_ne!(ca1_cert.public_key().raw, ca2_cert.public_key().raw);

    let a_der = der(&a.cert);
    let b_der = der(&b.cert);
    let (_, a_cert) = X509Certificate::from_der(&a_der).expect("a");
    let (_, b_cert) = X509Certificate::from_der(&b_der).expect("b");

    // The Authority Key Identifier names the signing key: each leaf's is its own CA's.
    let ski = |c: &X509Certificate| subject_key_id(c).expect("ski");
    assert_eq!(authority_key_id(&a_cert), Some(ski(&ca1_cert)));
    assert_eq!(authority_key_id(&b_cert), Some(ski(&ca2_cert)));
    assert_ne!(ski(&ca1_cert), ski(&ca2_cert));

    // And the signatures check out only against the issuing CA (webpki, as rustls does).
    assert!(client_cert_verifies(&ca1_der, &a_der));
    assert!(client_cert_verifies(&ca2_der, &b_der));
    assert!(!client_cert_verifies(&ca2_der, &a_der));
    assert!(!client_cert_verifies(&ca1_der, &b_der));
    assert_eq!(a_cert.issuer(), ca1_cert.subject());
    assert_eq!(b_cert.issuer(), ca2_cert.subject());

    assert_eq!(
        identity_from_der(&b_der).expect("b").trust_domain,
        "two.local"
    );
}

fn subject_key_id(cert: &X509Certificate) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

fn authority_key_id(cert: &X509Certificate) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
}

/// Whether rustls's client-certificate verifier accepts `leaf` under the root `ca`.
fn client_cert_verifies(ca: &[u8], leaf: &[u8]) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.to_vec())).expect("root");
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
    verifier
        .verify_client_cert(&CertificateDer::from(leaf.to_vec()), &[], UnixTime::now())
        .is_ok()
}

#[test]
fn coordinator_certs_verify_as_servers_for_localhost() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs::init_ca(dir.path(), "t.local").expect("ca");
    let c = certs::issue(dir.path(), dir.path(), Role::Coordinator, "c1", &[], 1).expect("c1");
    let a = certs::issue(dir.path(), dir.path(), Role::Agent, "a1", &[], 1).expect("a1");
    let ca_der = der(&dir.path().join("ca.pem"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der)).expect("root");
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
    for host in ["localhost", "127.0.0.1"] {
        let name = ServerName::try_from(host).expect("name");
        verifier
            .verify_server_cert(
                &CertificateDer::from(der(&c.cert)),
                &[],
                &name,
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    // An agent certificate is for clients only (no ServerAuth, no localhost).
    let name = ServerName::try_from("localhost").expect("name");
    let agent = verifier.verify_server_cert(
        &CertificateDer::from(der(&a.cert)),
        &[],
        &name,
        &[],
        UnixTime::now(),
    );
    assert!(agent.is_err());
}

#[test]
fn init_ca_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs::init_ca(dir.path(), certs::DEFAULT_TRUST_DOMAIN).expect("first");
    let err = certs::init_ca(dir.path(), certs::DEFAULT_TRUST_DOMAIN).expect_err("second");
    assert_eq!(
        err.to_string(),
        format!(
            "refusing to overwrite the existing CA file {}",
            dir.path().join("ca.pem").display()
        )
    );
}

#[test]
fn bad_names_and_missing_ca_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = certs::issue(dir.path(), dir.path(), Role::Agent, "a", &[], 1).expect_err("no ca");
    assert!(
        matches!(&err, CertError::Io(m) if m.starts_with(&format!("cannot read {}", dir.path().join("ca.pem").display()))),
        "{err}"
    );
    certs::init_ca(dir.path(), "t.local").expect("ca");
    let err = certs::issue(dir.path(), dir.path(), Role::Agent, "../x", &[], 1).expect_err("name");
    assert_eq!(
        err.to_string(),
        "bad identity: `../x` is not a valid name (use letters, digits, `_`, `.` and `-`, starting with a letter or digit)"
    );
    let err = certs::init_ca(&dir.path().join("x"), "Bad Domain").expect_err("td");
    assert!(
        err.to_string().contains("not a valid trust domain"),
        "{err}"
    );
    let err = certs::issue(dir.path(), dir.path(), Role::Agent, "a", &[], 0).expect_err("days");
    assert!(err.to_string().contains("between 1 and"), "{err}");
}

#[test]
fn identity_parsing_says_what_is_wrong() {
    let cases = [
        ("spiffe://td/agent/a1", Ok("spiffe://td/agent/a1")),
        (
            "https://td/agent/a1",
            Err("bad identity: `https://td/agent/a1`: not a spiffe:// URI"),
        ),
        (
            "spiffe://td/agent",
            Err(
                "bad identity: `spiffe://td/agent`: expected the form spiffe://<trust-domain>/<role>/<name>",
            ),
        ),
        (
            "spiffe://td/admin/a1",
            Err(
                "bad identity: `spiffe://td/admin/a1`: unknown role `admin` (expected coordinator, agent, operator or viewer)",
            ),
        ),
        (
            "spiffe://td/agent/-a",
            Err(
                "bad identity: `spiffe://td/agent/-a`: `-a` is not a valid name (use letters, digits, `_`, `.` and `-`, starting with a letter or digit)",
            ),
        ),
        (
            "spiffe://TD/agent/a",
            Err(
                "bad identity: `spiffe://TD/agent/a`: `TD` is not a valid trust domain (use lowercase letters, digits, `.`, `-` and `_`)",
            ),
        ),
    ];
    for (text, expected) in cases {
        let got = text
            .parse::<Identity>()
            .map(|i| i.to_string())
            .map_err(|e| e.to_string());
        assert_eq!(
            got,
            expected.map(str::to_string).map_err(str::to_string),
            "{text}"
        );
    }
    assert_eq!("viewer".parse::<Role>().expect("role"), Role::Viewer);
    assert_eq!(Role::Operator.as_str(), "operator");
}

#[test]
fn identity_from_certs_without_spiffe_uri() {
    // A CA certificate carries `spiffe://<td>` only: not a workload identity.
    let dir = tempfile::tempdir().expect("tempdir");
    certs::init_ca(dir.path(), "t.local").expect("ca");
    let err = identity_from_der(&der(&dir.path().join("ca.pem"))).expect_err("ca");
    assert_eq!(
        err.to_string(),
        "bad identity: `spiffe://t.local`: expected the form spiffe://<trust-domain>/<role>/<name>"
    );

    let plain = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let err = identity_from_der(plain.cert.der()).expect_err("no uri");
    assert_eq!(
        err.to_string(),
        "bad identity: the certificate has no URI SAN (expected spiffe://<trust-domain>/<role>/<name>)"
    );

    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "https://example.com/x".try_into().expect("ia5"),
    )];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    let err = identity_from_der(cert.der()).expect_err("https");
    assert_eq!(
        err.to_string(),
        "bad identity: the certificate's URI SAN `https://example.com/x` is not a spiffe:// identity"
    );

    let err = identity_from_der(b"not a certificate").expect_err("garbage");
    assert!(
        err.to_string()
            .starts_with("bad identity: not an X.509 certificate"),
        "{err}"
    );
}
