//! The `cd-agent` binary: configuration problems stop it at once with one clear line.

use std::process::Command;

fn agent(
    dir: &std::path::Path,
    endpoint: &str,
    tls: &cd_common::tls::TlsPaths,
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cd-agent"))
        .args(["--name", "a1", "--endpoint", endpoint, "--work-dir"])
        .arg(dir.join("work"))
        .arg("--ca")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.cert)
        .arg("--key")
        .arg(&tls.key)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("cd-agent runs")
}

#[test]
fn a_bad_endpoint_is_one_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    cd_common::certs::init_ca(dir.path(), "t.local").expect("ca");
    cd_common::certs::issue(
        dir.path(),
        dir.path(),
        cd_common::certs::Role::Agent,
        "a1",
        &[],
        1,
    )
    .expect("cert");
    let tls = cd_common::tls::TlsPaths::in_dir(dir.path(), "a1");
    let out = agent(dir.path(), "not-a-url", &tls);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not-a-url"), "{err}");
    assert!(!err.contains("Stack backtrace"), "no debug dump: {err}");
}

#[test]
fn missing_certificate_files_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = cd_common::tls::TlsPaths::in_dir(dir.path(), "missing");
    let out = agent(dir.path(), "https://127.0.0.1:9", &tls);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca.pem"), "{err}");
}
