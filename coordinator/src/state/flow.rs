//! How a run moves forward: pending stages become queued, gated, or skipped as their `needs`
//! finish, and the run ends when every stage is final.

use std::collections::{BTreeMap, BTreeSet};

use cd_common::spec::StageSpec;

use super::{
    Deployment, Event, GateDecision, GateOutcome, Pipeline, Run, RunState, Stage, StageState, State,
};
use crate::gate;

pub(super) fn stage_spec<'a>(
    pipelines: &'a BTreeMap<String, Pipeline>,
    run: &'a Run,
    stage: &str,
) -> Option<&'a StageSpec> {
    if let Some(plan) = &run.rollback {
        if plan.stage.name == stage {
            return Some(&plan.stage);
        }
        return plan.check.as_ref().filter(|c| c.name == stage);
    }
    pipelines
        .get(&run.pipeline)?
        .version(run.pipeline_version)?
        .spec
        .stage(stage)
}

/// Moves pending stages forward as far as recorded facts allow, then finishes the run if every
/// stage is final. Emits `RunChanged` once. Then settles what the run's progress means for
/// other runs: deploy locks it releases, runs it supersedes, queued runs it admits
/// (`concurrency`).
pub(super) fn advance(state: &mut State, run_id: &str, at: i64, events: &mut Vec<Event>) {
    let mut newly_waiting = Vec::new();
    let ended = {
        let State {
            pipelines,
            runs,
            deployments,
            active,
            env_locks,
            ..
        } = &mut *state;
        let Some(run) = runs.get_mut(run_id) else {
            return;
        };
        let was_running = run.state == RunState::Running;
        if run.state == RunState::Running && !run.queued {
            while advance_once(
                pipelines,
                deployments,
                env_locks,
                run,
                at,
                events,
                &mut newly_waiting,
            ) {}
        }
        if run.state == RunState::Running && run.stages.iter().all(|s| s.state.is_final()) {
            finish(run, at);
            active.remove(run_id);
        }
        events.push(Event::RunChanged {
            run_id: run_id.to_string(),
        });
        was_running && run.state != RunState::Running
    };
    super::concurrency::settle(state, run_id, ended, &newly_waiting, at, events);
}

/// One pass over the pending stages; true if any changed.
fn advance_once(
    pipelines: &BTreeMap<String, Pipeline>,
    deployments: &[Deployment],
    env_locks: &mut BTreeMap<String, String>,
    run: &mut Run,
    at: i64,
    events: &mut Vec<Event>,
    newly_waiting: &mut Vec<String>,
) -> bool {
    let mut changed = false;
    for i in 0..run.stages.len() {
        if run.stages[i].state != StageState::Pending {
            continue;
        }
        let Some(spec) = stage_spec(pipelines, run, &run.stages[i].name).cloned() else {
            continue;
        };
        let mut ready = true;
        let mut blocked = None;
        for need in &spec.needs {
            match run.stage(need).map(|s| s.state) {
                Some(StageState::Succeeded) => {}
                Some(s) if s.is_final() => blocked = Some(format!("`{need}` {}", s.as_str())),
                _ => ready = false,
            }
        }
        if let Some(why) = blocked {
            let stage = &mut run.stages[i];
            stage.state = StageState::Skipped;
            stage.reason = format!("skipped: needs {why}");
            changed = true;
        } else if ready {
            // A deploying stage first takes its environment's lock: two runs never deploy
            // to the same environment at once.
            if let Some(env) = &spec.environment {
                match env_locks.get(env) {
                    Some(holder) if *holder != run.id => {
                        let stage = &mut run.stages[i];
                        if stage.waiting_for != *env {
                            stage.waiting_for = env.clone();
                            stage.reason =
                                format!("waiting for environment {env} (deploying: {holder})");
                            newly_waiting.push(env.clone());
                        }
                        continue;
                    }
                    _ => {
                        env_locks.insert(env.clone(), run.id.clone());
                        run.stages[i].waiting_for.clear();
                    }
                }
            }
            let decision = spec
                .gate
                .as_ref()
                .map(|g| evaluate_gate(deployments, run, &spec, g, &run.stages[i], at));
            let stage = &mut run.stages[i];
            match decision {
                None => queue(stage, at, "", events),
                Some(d) => apply_gate_decision(stage, d, at, events),
            }
            changed = true;
        }
    }
    changed
}

pub(super) fn evaluate_gate(
    deployments: &[Deployment],
    run: &Run,
    spec: &StageSpec,
    gate_spec: &cd_common::spec::GateSpec,
    stage: &Stage,
    at: i64,
) -> GateDecision {
    let production = spec
        .environment
        .as_deref()
        .and_then(|env| super::deploy::current(deployments, env))
        .map(|d| (d.run_id.as_str(), &d.metrics));
    let results = |name: &str| run.stage(name).and_then(|s| s.last_result());
    let d = gate::evaluate(&gate::GateInput {
        spec: gate_spec,
        results: &results,
        production,
        approvals: &stage.approvals,
    });
    GateDecision {
        outcome: d.outcome,
        reasons: d.reasons,
        at_ms: at,
    }
}

pub(super) fn apply_gate_decision(
    stage: &mut Stage,
    d: GateDecision,
    at: i64,
    events: &mut Vec<Event>,
) {
    let summary = d.reasons.join("; ");
    match d.outcome {
        GateOutcome::Pass => queue(stage, at, &format!("gate passed: {summary}"), events),
        GateOutcome::Fail => {
            stage.state = StageState::GateFailed;
            stage.reason = format!("gate failed: {summary}");
        }
        GateOutcome::Inconclusive | GateOutcome::WaitingApproval => {
            if stage.state != StageState::AwaitingApproval {
                stage.awaiting_since_ms = at;
            }
            stage.state = StageState::AwaitingApproval;
            stage.reason = format!("awaiting approval: {summary}");
        }
    }
    stage.gate = Some(d);
}

pub(super) fn queue(stage: &mut Stage, at: i64, reason: &str, events: &mut Vec<Event>) {
    stage.state = StageState::Queued;
    stage.queued_ms = at;
    stage.reason = reason.to_string();
    events.push(Event::StageQueued);
}

fn finish(run: &mut Run, at: i64) {
    let failed: Vec<&str> = run
        .stages
        .iter()
        .filter(|s| matches!(s.state, StageState::Failed | StageState::GateFailed))
        .map(|s| s.name.as_str())
        .collect();
    let cancelled = run.stages.iter().any(|s| s.state == StageState::Cancelled);
    if !failed.is_empty() {
        run.state = RunState::Failed;
        run.reason = format!("failed: {}", failed.join(", "));
    } else if cancelled {
        run.state = RunState::Cancelled;
        if run.reason.is_empty() {
            run.reason = "cancelled".into();
        }
    } else {
        run.state = RunState::Succeeded;
    }
    run.finished_ms = at;
}

/// Stage names `name` depends on, directly or through other stages.
pub(super) fn upstream(
    pipelines: &BTreeMap<String, Pipeline>,
    run: &Run,
    name: &str,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    while let Some(n) = todo.pop() {
        if let Some(spec) = stage_spec(pipelines, run, &n) {
            for need in &spec.needs {
                if seen.insert(need.clone()) {
                    todo.push(need.clone());
                }
            }
        }
    }
    seen
}
