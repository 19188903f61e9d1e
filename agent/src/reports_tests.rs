//! Report parsing tests: JUnit shapes, metrics JSON, and paths that try to leave the workspace.

use super::*;

fn counts(total: u32, passed: u32, failed: u32, errors: u32, skipped: u32) -> TestCounts {
    TestCounts {
        total,
        passed,
        failed,
        errors,
        skipped,
    }
}

#[test]
fn junit_nested_suites_count_each_testcase() {
    // The attribute totals lie on purpose: only <testcase> elements count.
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="99" failures="0">
  <testsuite name="outer" tests="1">
    <testsuite name="inner">
      <testcase name="a" classname="x"/>
      <testcase name="b"><failure message="boom">trace</failure></testcase>
    </testsuite>
    <testcase name="c"><error type="Panic"/></testcase>
    <testcase name="d"><skipped/></testcase>
    <testcase name="e"><system-out>noise</system-out></testcase>
  </testsuite>
  <testsuite name="second">
    <testcase name="f"><failure/><system-err/></testcase>
    <testcase name="g"><error/><failure/></testcase>
  </testsuite>
</testsuites>"#;
    assert_eq!(parse_junit(xml.as_bytes()), Ok(counts(7, 2, 2, 2, 1)));
}

#[test]
fn junit_bare_testsuite_and_empty_suites() {
    let xml = r#"<testsuite name="s" tests="3">
        <testcase name="a"></testcase>
        <testcase name="b"><skipped message="later"/></testcase>
        <testcase name="c"><failure>x</failure></testcase>
    </testsuite>"#;
    assert_eq!(parse_junit(xml.as_bytes()), Ok(counts(3, 1, 1, 0, 1)));
    assert_eq!(
        parse_junit(b"<testsuites/>"),
        Ok(counts(0, 0, 0, 0, 0)),
        "no tests is a valid, empty report"
    );
}

#[test]
fn junit_malformed_or_foreign_documents_are_errors() {
    let unclosed = parse_junit(b"<testsuite><testcase name=\"a\">").unwrap_err();
    assert!(
        unclosed.contains("malformed") || unclosed.contains("end"),
        "{unclosed}"
    );
    let mismatched = parse_junit(b"<testsuite><testcase></testsuite>").unwrap_err();
    assert!(mismatched.contains("malformed"), "{mismatched}");
    let foreign = parse_junit(b"<html><body/></html>").unwrap_err();
    assert!(foreign.contains("not a JUnit report"), "{foreign}");
    assert!(parse_junit(b"").is_err());
    assert!(parse_junit(&[0xff, 0xfe, 0x00]).is_err());
}

#[test]
fn metrics_good_and_bad_values() {
    let (m, problems) = parse_metrics(br#"{"accuracy": 0.93, "latency_ms": 12, "loss": -1e-3}"#);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(m.len(), 3);
    assert_eq!(m["accuracy"], 0.93);
    assert_eq!(m["latency_ms"], 12.0);

    let (m, problems) = parse_metrics(br#"{"accuracy": "high", "f1": 0.8, "ok": true}"#);
    assert_eq!(m.len(), 1);
    assert_eq!(m["f1"], 0.8);
    assert_eq!(problems.len(), 2);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("\"accuracy\"") && p.contains("string"))
    );

    let (m, problems) = parse_metrics(b"[1, 2]");
    assert!(m.is_empty() && problems[0].contains("object"));
    let (_, problems) = parse_metrics(b"{not json");
    assert!(problems[0].contains("invalid JSON"));

    let many: serde_json::Map<String, serde_json::Value> = (0..MAX_METRICS + 5)
        .map(|i| (format!("m{i}"), serde_json::Value::from(i)))
        .collect();
    let text = serde_json::to_vec(&many).expect("json");
    let (m, problems) = parse_metrics(&text);
    assert_eq!(m.len(), MAX_METRICS);
    assert!(problems[0].contains("limit"), "{problems:?}");
}

#[test]
fn collect_names_the_file_for_every_problem() {
    let ws = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(ws.path().join("reports")).expect("mkdir");
    std::fs::write(
        ws.path().join("reports/junit.xml"),
        r#"<testsuite><testcase name="a"/></testsuite>"#,
    )
    .expect("write");
    std::fs::write(ws.path().join("metrics.json"), r#"{"accuracy": 0.91}"#).expect("write");

    let good = collect(ws.path(), "reports/junit.xml", "metrics.json");
    assert_eq!(good.tests, Some(counts(1, 1, 0, 0, 0)));
    assert_eq!(good.metrics.get("accuracy"), Some(&0.91));
    assert!(good.errors.is_empty());

    let missing = collect(ws.path(), "missing.xml", "nope.json");
    assert_eq!(missing.tests, None);
    assert!(missing.metrics.is_empty());
    assert_eq!(
        missing.errors,
        vec![
            "junit report missing.xml: file not found".to_string(),
            "metrics report nope.json: file not found".to_string(),
        ]
    );

    let none = collect(ws.path(), "", "");
    assert_eq!(none, ReportOutcome::default());
}

#[test]
fn report_paths_may_not_leave_the_workspace() {
    let root = tempfile::tempdir().expect("tempdir");
    let ws = root.path().join("ws");
    std::fs::create_dir_all(ws.join("sub")).expect("mkdir");
    std::fs::write(root.path().join("secret.json"), "{}").expect("write");
    std::fs::write(ws.join("ok.json"), "{}").expect("write");
    std::os::unix::fs::symlink(root.path().join("secret.json"), ws.join("link.json"))
        .expect("symlink");

    assert!(resolve_in_workspace(&ws, "ok.json").is_ok());
    assert!(resolve_in_workspace(&ws, "sub/../ok.json").is_ok());
    for bad in ["../secret.json", "sub/../../secret.json", "/etc/passwd"] {
        let err = resolve_in_workspace(&ws, bad).unwrap_err();
        assert!(
            err.contains("escapes") || err.contains("relative"),
            "{bad}: {err}"
        );
    }
    let err = resolve_in_workspace(&ws, "link.json").unwrap_err();
    assert!(err.contains("symlink"), "{err}");

    let out = collect(&ws, "../secret.json", "");
    assert_eq!(
        out.errors,
        vec!["junit report ../secret.json: path escapes the workspace".to_string()]
    );
}
