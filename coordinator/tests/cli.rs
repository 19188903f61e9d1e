//! The `cd-coordinator` binary itself: clear startup errors and dev mode's one-command loop.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cd-coordinator"))
}

#[test]
fn serve_with_a_missing_certificate_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.pem");
    let out = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--ca")
        .arg(&missing)
        .arg("--cert")
        .arg(&missing)
        .arg("--key")
        .arg(&missing)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.pem"), "stderr: {err}");
    assert!(!err.contains("panicked"), "stderr: {err}");
}

#[test]
fn dev_once_runs_the_example_to_production() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = bin()
        .current_dir(&root)
        .args([
            "dev",
            "--once",
            "--listen",
            "127.0.0.1:0",
            "--run",
            "examples/ml-model/pipeline.yaml",
            "--data-dir",
        ])
        .arg(dir.path().join("dev"))
        .arg("--param")
        .arg(format!("ML_STORE={}", dir.path().join("store").display()))
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dev --once failed: {err}");
    assert!(err.contains("deploy-production"), "{err}");
    assert!(err.contains("succeeded"), "{err}");
    assert!(
        dir.path().join("store/production/model.txt").exists(),
        "model deployed to production"
    );
}
