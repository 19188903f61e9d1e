//! Pure evaluation of a promotion gate against recorded results, the metrics production was
//! promoted with, and approvals. Missing data is *inconclusive*: it waits for an operator and
//! never promotes by default. Every decision carries its reasons, which are stored and shown.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use cd_common::spec::{GateSpec, MetricGate, TestsGate};

use crate::state::{Approval, GateOutcome, StageResult};

/// Slack for comparing floating-point figures written by scripts.
const EPSILON: f64 = 1e-9;

pub struct GateInput<'a> {
    pub spec: &'a GateSpec,
    /// The latest result of a stage of the same run, by name.
    pub results: &'a dyn Fn(&str) -> Option<&'a StageResult>,
    /// Run id and metrics of the deployment now in the gated stage's environment.
    pub production: Option<(&'a str, &'a BTreeMap<String, f64>)>,
    pub approvals: &'a [Approval],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub outcome: GateOutcome,
    pub reasons: Vec<String>,
}

#[derive(Default)]
struct Tally {
    reasons: Vec<String>,
    failed: bool,
    inconclusive: bool,
}

impl Tally {
    fn pass(&mut self, r: String) {
        self.reasons.push(r);
    }
    fn fail(&mut self, r: String) {
        self.failed = true;
        self.reasons.push(r);
    }
    fn unknown(&mut self, r: String) {
        self.inconclusive = true;
        self.reasons.push(r);
    }
}

pub fn evaluate(input: &GateInput<'_>) -> Decision {
    let mut t = Tally::default();
    if let Some(tests) = &input.spec.tests {
        check_tests(input, tests, &mut t);
    }
    for m in &input.spec.metrics {
        check_metric(input, m, &mut t);
    }
    let approvers: BTreeSet<&str> = input
        .approvals
        .iter()
        .filter(|a| a.approved)
        .map(|a| a.identity.as_str())
        .collect();
    let mut required = input.spec.approvals as usize;
    if t.inconclusive {
        required = required.max(1);
    }
    let outcome = if t.failed {
        GateOutcome::Fail
    } else if approvers.len() >= required {
        if required > 0 {
            let who: Vec<&str> = approvers.into_iter().collect();
            t.pass(format!("approved by {}", who.join(", ")));
        }
        GateOutcome::Pass
    } else if t.inconclusive {
        t.reasons
            .push("inconclusive: an operator must approve or reject".into());
        GateOutcome::Inconclusive
    } else {
        t.reasons
            .push(format!("approvals: {}/{} given", approvers.len(), required));
        GateOutcome::WaitingApproval
    };
    Decision {
        outcome,
        reasons: t.reasons,
    }
}

fn check_tests(input: &GateInput<'_>, spec: &TestsGate, t: &mut Tally) {
    let (mut total, mut passed) = (0u64, 0u64);
    for from in &spec.from {
        match (input.results)(from) {
            None => return t.unknown(format!("tests: no result from `{from}`")),
            Some(r) => match &r.tests {
                None => return t.unknown(format!("tests: `{from}` produced no JUnit report")),
                Some(c) => {
                    total += u64::from(c.total);
                    passed += u64::from(c.passed);
                }
            },
        }
    }
    let from = spec.from.join(", ");
    if total == 0 {
        return t.unknown(format!("tests: no tests ran in {from}"));
    }
    let rate = passed as f64 / total as f64;
    let text = format!(
        "tests: {passed}/{total} passed in {from} (rate {rate:.3}, min {:.3})",
        spec.min_pass_rate
    );
    if rate + EPSILON < spec.min_pass_rate {
        t.fail(text)
    } else {
        t.pass(text)
    }
}

fn check_metric(input: &GateInput<'_>, m: &MetricGate, t: &mut Tally) {
    let name = &m.name;
    let Some(value) = (input.results)(&m.from)
        .and_then(|r| r.metrics.get(name))
        .copied()
        .filter(|v| v.is_finite())
    else {
        return t.unknown(format!("{name}: missing from the metrics of `{}`", m.from));
    };
    let mut ok = true;
    if let Some(min) = m.min
        && value + EPSILON < min
    {
        t.fail(format!("{name} {value} is below the floor {min}"));
        ok = false;
    }
    if let Some(max) = m.max
        && value > max + EPSILON
    {
        t.fail(format!("{name} {value} is above the ceiling {max}"));
        ok = false;
    }
    if let Some(max_reg) = m.max_regression {
        match input.production {
            None => t.pass(format!("{name}: no production baseline yet")),
            Some((run, prod)) => match prod.get(name) {
                None => t.pass(format!("{name}: production ({run}) has no {name} baseline")),
                Some(&p) => {
                    let drop = p - value;
                    if drop > max_reg + EPSILON {
                        t.fail(format!(
                            "{name} {value} regressed {drop:.4} from production {p} ({run}); max regression {max_reg}"
                        ));
                        ok = false;
                    } else if ok {
                        t.pass(format!(
                            "{name} {value} vs production {p} ({run}) within max regression {max_reg}"
                        ));
                        return;
                    }
                }
            },
        }
    }
    if ok && (m.min.is_some() || m.max.is_some()) {
        t.pass(format!("{name} {value} within bounds"));
    }
}
