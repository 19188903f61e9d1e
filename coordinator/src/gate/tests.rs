//! Gate decisions for pass, fail, regression, inconclusive, approval and tests rate.

use std::collections::BTreeMap;

use cd_common::spec::{GateSpec, MetricGate, TestsGate};

use super::*;
use crate::state::{Approval, StageResult, TestCounts};

fn result(acc: Option<f64>, tests: Option<(u32, u32)>) -> StageResult {
    StageResult {
        exit_code: 0,
        duration_ms: 1,
        tests: tests.map(|(passed, total)| TestCounts {
            total,
            passed,
            failed: total - passed,
            errors: 0,
            skipped: 0,
        }),
        metrics: acc
            .map(|a| BTreeMap::from([("accuracy".to_string(), a)]))
            .unwrap_or_default(),
        cancelled: false,
        errors: vec![],
        oom_killed: false,
        check_at_ms: 0,
    }
}

fn spec(approvals: u32) -> GateSpec {
    GateSpec {
        tests: Some(TestsGate {
            from: vec!["acceptance".into()],
            min_pass_rate: 1.0,
        }),
        metrics: vec![MetricGate {
            name: "accuracy".into(),
            from: "acceptance".into(),
            min: Some(0.9),
            max: None,
            max_regression: Some(0.02),
        }],
        approvals,
        ..Default::default()
    }
}

fn decide(
    spec: &GateSpec,
    r: Option<StageResult>,
    prod: Option<f64>,
    approvals: &[Approval],
) -> Decision {
    let prod_metrics: BTreeMap<String, f64> = prod
        .map(|p| BTreeMap::from([("accuracy".to_string(), p)]))
        .unwrap_or_default();
    let results = |name: &str| {
        if name == "acceptance" {
            r.as_ref()
        } else {
            None
        }
    };
    evaluate(&GateInput {
        spec,
        results: &results,
        production: prod.map(|_| ("prod-run", &prod_metrics)),
        approvals,
    })
}

fn approval(who: &str) -> Approval {
    Approval {
        identity: who.into(),
        approved: true,
        comment: String::new(),
        at_ms: 1,
    }
}

#[test]
fn passes_when_every_check_holds() {
    let d = decide(
        &spec(0),
        Some(result(Some(0.95), Some((10, 10)))),
        Some(0.94),
        &[],
    );
    assert_eq!(d.outcome, GateOutcome::Pass, "{d:?}");
    assert!(d.reasons.iter().any(|r| r.contains("10/10 passed")));
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("vs production 0.94 (prod-run)"))
    );
}

#[test]
fn fails_below_the_floor() {
    let d = decide(&spec(0), Some(result(Some(0.7), Some((10, 10)))), None, &[]);
    assert_eq!(d.outcome, GateOutcome::Fail);
    assert!(
        d.reasons
            .iter()
            .any(|r| r == "accuracy 0.7 is below the floor 0.9"),
        "{d:?}"
    );
}

#[test]
fn fails_on_regression_against_production_even_above_the_floor() {
    let d = decide(
        &spec(0),
        Some(result(Some(0.91), Some((10, 10)))),
        Some(0.95),
        &[],
    );
    assert_eq!(d.outcome, GateOutcome::Fail);
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("regressed 0.0400 from production 0.95")),
        "{d:?}"
    );
}

#[test]
fn a_regression_within_the_allowance_passes() {
    let d = decide(
        &spec(0),
        Some(result(Some(0.94), Some((10, 10)))),
        Some(0.95),
        &[],
    );
    assert_eq!(d.outcome, GateOutcome::Pass, "{d:?}");
}

#[test]
fn failing_tests_fail_the_gate() {
    let d = decide(&spec(0), Some(result(Some(0.95), Some((9, 10)))), None, &[]);
    assert_eq!(d.outcome, GateOutcome::Fail);
    assert!(d.reasons[0].contains("9/10 passed"), "{d:?}");
}

#[test]
fn missing_metric_or_report_is_inconclusive_not_a_pass() {
    let d = decide(&spec(0), Some(result(None, Some((10, 10)))), None, &[]);
    assert_eq!(d.outcome, GateOutcome::Inconclusive);
    assert!(
        d.reasons.iter().any(|r| r.contains("accuracy: missing")),
        "{d:?}"
    );
    let d = decide(&spec(0), Some(result(Some(0.95), None)), None, &[]);
    assert_eq!(d.outcome, GateOutcome::Inconclusive);
    assert!(
        d.reasons.iter().any(|r| r.contains("no JUnit report")),
        "{d:?}"
    );
    let d = decide(&spec(0), None, None, &[]);
    assert_eq!(d.outcome, GateOutcome::Inconclusive);
}

#[test]
fn an_operator_approval_resolves_an_inconclusive_gate_but_never_a_failure() {
    let d = decide(
        &spec(0),
        Some(result(None, Some((10, 10)))),
        None,
        &[approval("alice")],
    );
    assert_eq!(d.outcome, GateOutcome::Pass);
    assert!(d.reasons.iter().any(|r| r == "approved by alice"));
    let d = decide(
        &spec(0),
        Some(result(Some(0.5), Some((10, 10)))),
        None,
        &[approval("alice")],
    );
    assert_eq!(d.outcome, GateOutcome::Fail);
}

#[test]
fn required_approvals_count_distinct_identities() {
    let good = Some(result(Some(0.95), Some((10, 10))));
    let d = decide(&spec(2), good.clone(), None, &[]);
    assert_eq!(d.outcome, GateOutcome::WaitingApproval);
    assert!(d.reasons.iter().any(|r| r == "approvals: 0/2 given"));
    let d = decide(
        &spec(2),
        good.clone(),
        None,
        &[approval("a"), approval("a")],
    );
    assert_eq!(d.outcome, GateOutcome::WaitingApproval);
    let d = decide(&spec(2), good, None, &[approval("a"), approval("b")]);
    assert_eq!(d.outcome, GateOutcome::Pass);
}
