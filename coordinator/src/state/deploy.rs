//! Deployments: recorded when a stage with `environment:` ends, and rollbacks, which re-deploy
//! the previous successful release as a run of their own (recorded as a rollback, not a release).

use std::collections::BTreeMap;

use cd_common::spec::OnFailure;

use super::command::Rollback;
use super::{
    Deployment, DeploymentStatus, Event, RollbackPlan, Run, RunKind, RunState, Stage, State,
    StateError, flow, runs,
};

/// The latest successful deployment of `env`.
pub(super) fn current<'a>(deployments: &'a [Deployment], env: &str) -> Option<&'a Deployment> {
    deployments
        .iter()
        .rev()
        .find(|d| d.environment == env && d.status == DeploymentStatus::Succeeded)
}

/// Records the deployment a finished stage made, and starts an automatic rollback when a
/// stage with `on_failure: rollback` failed.
pub(super) fn stage_finished(
    state: &mut State,
    run_id: &str,
    stage: &str,
    success: bool,
    at: i64,
    events: &mut Vec<Event>,
) {
    let Some(run) = state.runs.get(run_id) else {
        return;
    };
    let Some(spec) = state.stage_spec(run, stage).cloned() else {
        return;
    };
    if let Some(env) = &spec.environment {
        let deployment = new_deployment(state, run, stage, env, success, at);
        if let (true, Some(plan)) = (success, &run.rollback)
            && let Some(undone) = state
                .deployments
                .get_mut((plan.undoes as usize).wrapping_sub(1))
        {
            undone.status = DeploymentStatus::RolledBack;
        }
        state.deployments.push(deployment);
    }
    if !success && spec.on_failure == OnFailure::Rollback && run.kind == RunKind::Release {
        auto_rollback(state, run_id, stage, at, events);
    }
}

fn new_deployment(
    state: &State,
    run: &Run,
    stage: &str,
    env: &str,
    success: bool,
    at: i64,
) -> Deployment {
    let started = run
        .stage(stage)
        .and_then(|s| s.attempts.first())
        .map_or(at, |a| {
            if a.started_ms > 0 {
                a.started_ms
            } else {
                a.assigned_ms
            }
        });
    let (metrics, restores) = match &run.rollback {
        Some(plan) => (
            state
                .deployments
                .get((plan.restores as usize).wrapping_sub(1))
                .map(|d| d.metrics.clone())
                .unwrap_or_default(),
            plan.restores,
        ),
        None => (upstream_metrics(state, run, stage), 0),
    };
    Deployment {
        id: state.deployments.len() as u64 + 1,
        environment: env.to_string(),
        run_id: run.id.clone(),
        pipeline: run.pipeline.clone(),
        pipeline_version: run.pipeline_version,
        revision: run.revision.clone(),
        stage: stage.to_string(),
        status: if success {
            DeploymentStatus::Succeeded
        } else {
            DeploymentStatus::Failed
        },
        started_ms: started,
        finished_ms: at,
        metrics,
        kind: run.kind,
        restores,
    }
}

/// Metrics reported by the stages `stage` depends on (later stages win on a name clash): the
/// acceptance figures a deployment was promoted with.
fn upstream_metrics(state: &State, run: &Run, stage: &str) -> BTreeMap<String, f64> {
    let ups = flow::upstream(&state.pipelines, run, stage);
    let mut out = BTreeMap::new();
    for s in run.stages.iter().filter(|s| ups.contains(&s.name)) {
        if let Some(r) = s.last_result() {
            out.extend(r.metrics.iter().map(|(k, v)| (k.clone(), *v)));
        }
    }
    out
}

fn auto_rollback(state: &mut State, run_id: &str, stage: &str, at: i64, events: &mut Vec<Event>) {
    let Some(run) = state.runs.get(run_id) else {
        return;
    };
    // Only the nearest deploying stages upstream: a failed production check rolls production
    // back, not the staging deployment that came before it.
    let ups = flow::upstream(&state.pipelines, run, stage);
    let deploying: Vec<&String> = ups
        .iter()
        .filter(|s| {
            state
                .stage_spec(run, s)
                .is_some_and(|sp| sp.environment.is_some())
        })
        .collect();
    let nearest = deploying.iter().filter(|s| {
        !deploying
            .iter()
            .any(|other| other != *s && flow::upstream(&state.pipelines, run, other).contains(**s))
    });
    let envs: Vec<String> = nearest
        .filter_map(|s| state.stage_spec(run, s)?.environment.clone())
        .filter(|env| current(&state.deployments, env).is_some_and(|d| d.run_id == run_id))
        .collect();
    for env in envs {
        let c = Rollback {
            environment: env,
            reason: format!("stage {stage} of run {run_id} failed"),
        };
        // A refusal (nothing earlier to restore) leaves the failed run as the record.
        let _ = start_rollback(state, &c, at, events);
    }
}

pub(super) fn start_rollback(
    state: &mut State,
    c: &Rollback,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<String, StateError> {
    let env = &c.environment;
    if !state.deployments.iter().any(|d| &d.environment == env) {
        return Err(StateError::NotFound(format!(
            "environment {env:?} has no deployments"
        )));
    }
    let cur = current(&state.deployments, env).ok_or_else(|| {
        StateError::FailedPrecondition(format!("environment {env} has no successful deployment"))
    })?;
    if let Some(r) = state
        .active
        .iter()
        .filter_map(|id| state.runs.get(id))
        .find(|r| r.rollback.as_ref().is_some_and(|p| &p.environment == env))
    {
        return Err(StateError::FailedPrecondition(format!(
            "a rollback of {env} is already running ({})",
            r.id
        )));
    }
    let base = if cur.kind == RunKind::Rollback {
        cur.restores
    } else {
        cur.id
    };
    let target = state
        .deployments
        .iter()
        .rev()
        .find(|d| {
            &d.environment == env
                && d.kind == RunKind::Release
                && d.status == DeploymentStatus::Succeeded
                && d.id < base
        })
        .ok_or_else(|| {
            StateError::FailedPrecondition(format!(
                "environment {env} has no earlier successful deployment to roll back to"
            ))
        })?
        .clone();
    let mut stage = state
        .pipelines
        .get(&target.pipeline)
        .and_then(|p| p.version(target.pipeline_version))
        .and_then(|v| v.spec.stage(&target.stage))
        .cloned()
        .ok_or_else(|| {
            StateError::NotFound(format!(
                "stage {} of {} v{} is gone",
                target.stage, target.pipeline, target.pipeline_version
            ))
        })?;
    if let Some(cmd) = stage.rollback.take() {
        stage.run = cmd;
    }
    stage.needs.clear();
    stage.gate = None;
    stage.on_failure = OnFailure::Fail;
    let mut params = state
        .runs
        .get(&target.run_id)
        .map(|r| r.params.clone())
        .unwrap_or_default();
    params.insert("CD_ROLLBACK".into(), "1".into());
    let pipeline = state
        .pipelines
        .get_mut(&target.pipeline)
        .ok_or_else(|| StateError::NotFound(target.pipeline.clone()))?;
    let id = format!("{}-{}", target.pipeline, pipeline.next_run);
    pipeline.next_run += 1;
    let run = Run {
        id: id.clone(),
        seq: state.next_run_seq,
        pipeline: target.pipeline.clone(),
        pipeline_version: target.pipeline_version,
        revision: target.revision.clone(),
        params,
        trigger: if c.reason.is_empty() {
            "rollback".into()
        } else {
            format!("rollback: {}", c.reason)
        },
        kind: RunKind::Rollback,
        stages: vec![Stage::new(&stage.name)],
        rollback: Some(RollbackPlan {
            environment: env.clone(),
            restores: target.id,
            undoes: base,
            stage,
        }),
        state: RunState::Running,
        created_ms: at,
        finished_ms: 0,
        reason: String::new(),
        commit_at_ms: 0,
        queued: false,
        superseded_by: String::new(),
    };
    runs::insert_run(state, run, at, events);
    Ok(id)
}
