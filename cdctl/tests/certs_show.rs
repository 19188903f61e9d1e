//! `cdctl certs show`: prints identity, role and expiry, and says why a certificate is refused
//! (exit code 1) when it has no valid identity or has expired.

use std::path::Path;
use std::process::{Command, Output};

use cd_common::certs::{DEFAULT_TRUST_DOMAIN, Role, init_ca, issue, issue_unchecked};

fn show(file: &Path, json: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdctl"));
    if json {
        cmd.args(["-o", "json"]);
    }
    cmd.args(["certs", "show"])
        .arg(file)
        .output()
        .expect("cdctl runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn certs_show_prints_identity_role_and_expiry_and_explains_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path();
    init_ca(ca, DEFAULT_TRUST_DOMAIN).expect("ca");

    let good = issue(ca, ca, Role::Viewer, "ann", &[], 30).expect("issue");
    let out = show(&good.cert, false);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("identity:     spiffe://conveyor.local/viewer/ann"),
        "{t}"
    );
    assert!(t.contains("role:         viewer"), "{t}");
    assert!(
        t.contains("valid, expires in 29 days") || t.contains("expires in 30 days"),
        "{t}"
    );

    let out = show(&good.cert, true);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["role"], "viewer");
    assert_eq!(v["name"], "ann");
    assert!(
        v["not_after"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{v}"
    );

    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let cases: [(&str, &[&str], time::OffsetDateTime, &str); 4] = [
        ("bare", &[], now + day, "no URI SAN"),
        (
            "web",
            &["https://example.com/x"],
            now + day,
            "not a spiffe:// identity",
        ),
        (
            "adm",
            &["spiffe://conveyor.local/admin/root"],
            now + day,
            "unknown role `admin`",
        ),
        (
            "old",
            &["spiffe://conveyor.local/operator/old"],
            now - day,
            "EXPIRED",
        ),
    ];
    for (stem, uris, not_after, expect) in cases {
        let f = issue_unchecked(ca, ca, stem, uris, now - day * 2, not_after).expect("issue");
        let out = show(&f.cert, false);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stem}: {t}");
        assert!(t.contains(expect), "{stem}: `{t}` lacks `{expect}`");
    }

    let out = show(&ca.join("missing.pem"), false);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out).contains("missing.pem"), "{}", text(&out));
}
