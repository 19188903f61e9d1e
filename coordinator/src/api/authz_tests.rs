//! The table covers every method the server serves, and each kind of caller is refused with
//! the code and reason it should get.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use cd_common::certs::{self, Role};
use prost::Message;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::Code;

use super::*;

/// Every `/package.Service/Method` in an encoded `FileDescriptorSet`.
fn methods(encoded: &[u8]) -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(encoded).expect("descriptor set decodes");
    let mut out = BTreeSet::new();
    for file in set.file {
        let package = file.package.clone().unwrap_or_default();
        for service in &file.service {
            for method in &service.method {
                out.insert(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    out
}

#[test]
fn every_served_method_has_exactly_one_row_and_no_row_is_stale() {
    let mut served = methods(cd_proto::FILE_DESCRIPTOR_SET);
    served.extend(methods(tonic_health::pb::FILE_DESCRIPTOR_SET));
    served.extend(methods(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET));
    served.extend(methods(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET));
    assert!(
        served.contains("/cd.v1.ControlService/StartRun")
            && served.contains("/cd.raft.v1.RaftPeer/Send"),
        "descriptor sets look wrong: {served:?}"
    );
    let rows: Vec<&str> = TABLE.iter().map(|(p, _, _)| *p).collect();
    let unique: BTreeSet<&str> = rows.iter().copied().collect();
    assert_eq!(rows.len(), unique.len(), "a method has two rows");
    let missing: Vec<&String> = served
        .iter()
        .filter(|m| !unique.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "methods without a row in TABLE: {missing:?}"
    );
    let stale: Vec<&&str> = unique.iter().filter(|p| !served.contains(**p)).collect();
    assert!(
        stale.is_empty(),
        "rows for methods nobody serves: {stale:?}"
    );
    for (path, roles, _) in TABLE {
        assert!(!roles.is_empty(), "{path} allows nobody");
    }
}

#[test]
fn writes_are_operator_only_and_the_peer_and_agent_apis_are_their_roles_only() {
    let roles = |p: &str| allowed_roles(p).expect(p);
    for w in [
        "StartRun",
        "ApplyPipeline",
        "CancelRun",
        "Approve",
        "Reject",
        "Rollback",
    ] {
        assert_eq!(
            roles(&format!("/cd.v1.ControlService/{w}")),
            [Role::Operator]
        );
    }
    assert_eq!(
        roles("/cd.v1.ControlService/GetRun"),
        [Role::Viewer, Role::Operator]
    );
    assert_eq!(roles("/cd.raft.v1.RaftPeer/Send"), [Role::Coordinator]);
    assert_eq!(roles("/cd.v1.AgentService/ReportResult"), [Role::Agent]);
    assert_eq!(allowed_roles("/cd.v1.ControlService/Nope"), None);
    assert!(is_write("/cd.v1.ControlService/StartRun") && is_write("/cd.v1.ControlService/Revoke"));
    assert!(
        !is_write("/cd.v1.ControlService/ListAudit") && !is_write("/cd.v1.ControlService/GetRun")
    );
}

struct Fixture {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        certs::init_ca(&ca, "prod.example").expect("ca");
        Fixture { _dir: dir, ca }
    }

    fn der(&self, stem: &str, uris: &[&str]) -> CertificateDer<'static> {
        let now = time::OffsetDateTime::now_utc();
        let files = certs::issue_unchecked(
            &self.ca,
            &self.ca,
            stem,
            uris,
            now - time::Duration::hours(1),
            now + time::Duration::days(1),
        )
        .expect("issue");
        load(&files.cert)
    }

    fn role(&self, role: Role, name: &str) -> CertificateDer<'static> {
        let files = certs::issue(&self.ca, &self.ca, role, name, &[], 1).expect("issue");
        load(&files.cert)
    }
}

fn load(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("pem")
}

fn policy(revoked: &'static [&'static str]) -> Policy {
    Policy {
        trust_domain: "prod.example".into(),
        revoked: Arc::new(move |id| revoked.contains(&id.to_string().as_str())),
        writes: None,
        max_metadata: 8192,
    }
}

fn refusal(p: &Policy, path: &str, cert: Option<CertificateDer<'static>>) -> (Code, String) {
    let chain: Option<Vec<CertificateDer<'static>>> = cert.map(|c| vec![c]);
    let err = p.decide(path, chain.as_deref()).expect_err("refused");
    (err.code(), err.message().to_string())
}

#[test]
fn bad_identities_are_unauthenticated_and_say_why() {
    let f = Fixture::new();
    let p = policy(&[]);
    let path = "/cd.v1.ControlService/ListRuns";
    let cases: Vec<(&str, Option<CertificateDer<'static>>, &str)> = vec![
        ("no certificate", None, "no client certificate"),
        ("no URI SAN", Some(f.der("bare", &[])), "no URI SAN"),
        (
            "not spiffe",
            Some(f.der("web", &["https://example.com/x"])),
            "is not a spiffe:// identity",
        ),
        (
            "unknown role",
            Some(f.der("adm", &["spiffe://prod.example/admin/root"])),
            "unknown role `admin`",
        ),
        (
            "malformed path",
            Some(f.der("short", &["spiffe://prod.example/operator"])),
            "expected the form",
        ),
        (
            "foreign trust domain",
            Some(f.der("td", &["spiffe://other.example/operator/eve"])),
            "trust domain other.example is not prod.example",
        ),
    ];
    for (what, cert, expect) in cases {
        let (code, msg) = refusal(&p, path, cert);
        assert_eq!(code, Code::Unauthenticated, "{what}: {msg}");
        assert!(msg.contains(expect), "{what}: `{msg}` lacks `{expect}`");
    }
}

#[test]
fn wrong_roles_are_permission_denied_naming_caller_method_and_allowed_roles() {
    let f = Fixture::new();
    let p = policy(&[]);
    let cases = [
        (
            Role::Viewer,
            "ann",
            "/cd.v1.ControlService/StartRun",
            "operator",
        ),
        (
            Role::Operator,
            "bob",
            "/cd.raft.v1.RaftPeer/Send",
            "coordinator",
        ),
        (
            Role::Agent,
            "a1",
            "/cd.v1.ControlService/ListRuns",
            "viewer, operator",
        ),
        (
            Role::Coordinator,
            "n1",
            "/cd.v1.AgentService/Attach",
            "agent",
        ),
        (
            Role::Operator,
            "bob",
            "/cd.v1.ControlService/Unknown",
            "not in the authorization",
        ),
    ];
    for (role, name, path, expect) in cases {
        let (code, msg) = refusal(&p, path, Some(f.role(role, name)));
        assert_eq!(code, Code::PermissionDenied, "{msg}");
        let caller = format!("spiffe://prod.example/{role}/{name}");
        assert!(msg.contains(&caller) && msg.contains(path), "{msg}");
        assert!(msg.contains(expect), "`{msg}` lacks `{expect}`");
    }
    // And the right roles pass, carrying the identity.
    let ok = p
        .decide(
            "/cd.v1.ControlService/GetRun",
            Some(&[f.role(Role::Viewer, "ann")][..]),
        )
        .expect("viewer reads");
    assert_eq!(ok.name, "ann");
    assert!(
        p.decide(
            "/grpc.health.v1.Health/Check",
            Some(&[f.role(Role::Agent, "a1")][..])
        )
        .is_ok()
    );
}

#[test]
fn a_revoked_identity_is_refused_with_a_valid_certificate() {
    let f = Fixture::new();
    let p = policy(&["spiffe://prod.example/agent/gone"]);
    let (code, msg) = refusal(
        &p,
        "/cd.v1.AgentService/Heartbeat",
        Some(f.role(Role::Agent, "gone")),
    );
    assert_eq!(code, Code::Unauthenticated);
    assert!(msg.contains("revoked"), "{msg}");
    assert!(
        p.decide(
            "/cd.v1.AgentService/Heartbeat",
            Some(&[f.role(Role::Agent, "kept")][..])
        )
        .is_ok()
    );
}
