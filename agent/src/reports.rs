//! Reading a stage's declared reports after it exits: JUnit XML into test counts, and a flat
//! JSON object into metrics. Paths are relative to the workspace and may not leave it.
//!
//! A missing or unreadable report is not a stage failure: the problem becomes an entry in the
//! result's `errors` (naming the file) and the coordinator's gate treats the data as missing.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use cd_proto::v1::TestCounts;
use quick_xml::events::Event;
use quick_xml::reader::Reader;

/// Largest JUnit file read (32 MiB).
const MAX_JUNIT_BYTES: u64 = 32 * 1024 * 1024;
/// Largest metrics file read (1 MiB).
const MAX_METRICS_BYTES: u64 = 1024 * 1024;
/// Most metrics kept from one file (the coordinator refuses a result with more).
pub const MAX_METRICS: usize = 1000;

/// Test counts and metrics parsed from the declared reports, with a message per problem.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReportOutcome {
    pub tests: Option<TestCounts>,
    pub metrics: HashMap<String, f64>,
    pub errors: Vec<String>,
}

/// Reads the reports the stage declared (`""` for none). Blocking file I/O: call from
/// `spawn_blocking`.
pub fn collect(workspace: &Path, junit: &str, metrics: &str) -> ReportOutcome {
    let mut out = ReportOutcome::default();
    if !junit.is_empty() {
        match read_report(workspace, junit, MAX_JUNIT_BYTES).and_then(|b| parse_junit(&b)) {
            Ok(counts) => out.tests = Some(counts),
            Err(e) => out.errors.push(format!("junit report {junit}: {e}")),
        }
    }
    if !metrics.is_empty() {
        match read_report(workspace, metrics, MAX_METRICS_BYTES) {
            Ok(bytes) => {
                let (map, problems) = parse_metrics(&bytes);
                out.metrics = map;
                out.errors.extend(
                    problems
                        .into_iter()
                        .map(|p| format!("metrics report {metrics}: {p}")),
                );
            }
            Err(e) => out.errors.push(format!("metrics report {metrics}: {e}")),
        }
    }
    out
}

/// Resolves `relative` inside `workspace`, refusing absolute paths, `..` that climb out, and
/// symlinks that point outside.
pub fn resolve_in_workspace(workspace: &Path, relative: &str) -> Result<PathBuf, String> {
    let rel = Path::new(relative);
    let mut depth = 0usize;
    for component in rel.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "path escapes the workspace".to_string())?;
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("path must be relative to the workspace".into());
            }
        }
    }
    let joined = workspace.join(rel);
    let root = workspace
        .canonicalize()
        .map_err(|e| format!("workspace {}: {e}", workspace.display()))?;
    let real = match joined.canonicalize() {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("file not found".into()),
        Err(e) => return Err(e.to_string()),
    };
    if !real.starts_with(&root) {
        return Err("path escapes the workspace (through a symlink)".into());
    }
    Ok(real)
}

fn read_report(workspace: &Path, relative: &str, limit: u64) -> Result<Vec<u8>, String> {
    let path = resolve_in_workspace(workspace, relative)?;
    let meta = std::fs::metadata(&path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > limit {
        return Err(format!(
            "{} bytes is over the {limit}-byte limit",
            meta.len()
        ));
    }
    std::fs::read(&path).map_err(|e| e.to_string())
}

/// Counts `<testcase>` elements (in `<testsuites>` or a bare `<testsuite>`, nested or not).
/// A case with `<error>` counts as an error, else with `<failure>` as failed, else with
/// `<skipped>` as skipped, else passed. Attribute totals are ignored.
pub fn parse_junit(bytes: &[u8]) -> Result<TestCounts, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut reader = Reader::from_str(text);
    let mut counts = TestCounts::default();
    let mut depth = 0usize;
    let mut root_seen = false;
    // Depth of the open <testcase>, and what it contained so far.
    let mut case: Option<(usize, CaseState)> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("malformed XML at byte {}: {e}", reader.error_position()))?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                let local = e.local_name();
                let name = local.as_ref();
                if !root_seen {
                    root_seen = true;
                    if name != "testsuites" && name != "testsuite" {
                        return Err(format!(
                            "not a JUnit report (root element <{name}>, expected <testsuites> or <testsuite>)"
                        ));
                    }
                }
                if let Some((_, state)) = case.as_mut() {
                    match name {
                        "failure" => state.failure = true,
                        "error" => state.error = true,
                        "skipped" => state.skipped = true,
                        _ => {}
                    }
                } else if name == "testcase" {
                    if empty {
                        counts.add(CaseState::default());
                    } else {
                        case = Some((depth, CaseState::default()));
                    }
                }
                if !empty {
                    depth += 1;
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if let Some((case_depth, state)) = case
                    && case_depth == depth
                {
                    counts.add(state);
                    case = None;
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !root_seen {
        return Err("empty document (no <testsuites> or <testsuite> element)".into());
    }
    if depth != 0 {
        return Err("malformed XML: unexpected end of file inside an element".into());
    }
    Ok(counts)
}

#[derive(Debug, Default, Clone, Copy)]
struct CaseState {
    failure: bool,
    error: bool,
    skipped: bool,
}

trait AddCase {
    fn add(&mut self, case: CaseState);
}

impl AddCase for TestCounts {
    fn add(&mut self, case: CaseState) {
        self.total += 1;
        if case.error {
            self.errors += 1;
        } else if case.failure {
            self.failed += 1;
        } else if case.skipped {
            self.skipped += 1;
        } else {
            self.passed += 1;
        }
    }
}

/// Parses a flat JSON object of name -> number. Returns the numeric entries and a message for
/// each problem (not an object, a value that is not a number).
pub fn parse_metrics(bytes: &[u8]) -> (HashMap<String, f64>, Vec<String>) {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return (HashMap::new(), vec![format!("invalid JSON: {e}")]),
    };
    let serde_json::Value::Object(object) = value else {
        return (
            HashMap::new(),
            vec!["expected a JSON object of name -> number".into()],
        );
    };
    let mut metrics = HashMap::new();
    let mut problems = Vec::new();
    let total = object.len();
    for (name, value) in object {
        if metrics.len() == MAX_METRICS {
            problems.push(format!(
                "{total} entries is over the limit of {MAX_METRICS}; the rest were dropped"
            ));
            break;
        }
        match value.as_f64().filter(|n| n.is_finite()) {
            Some(n) => {
                metrics.insert(name, n);
            }
            None => problems.push(format!(
                "metric \"{name}\" is not a number (found {})",
                json_kind(&value)
            )),
        }
    }
    (metrics, problems)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number out of range",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[path = "reports_tests.rs"]
mod tests;
