//! Deployments: recorded when a stage with `environment:` ends, and rollbacks, which re-deploy
//! the previous successful release as a run of their own (recorded as a rollback, not a release).

use std::collections::BTreeMap;

use cd_common::spec::{OnFailure, StageSpec};

use super::command::Rollback;
use super::{
    Deployment, DeploymentStatus, Event, RollbackPlan, Run, RunKind, RunState, Stage, State,
    StateError, flow, incidents, runs,
};

/// The latest successful deployment of `env`.
pub(super) fn current<'a>(deployments: &'a [Deployment], env: &str) -> Option<&'a Deployment> {
    deployments
        .iter()
        .rev()
        .find(|d| d.environment == env && d.status == DeploymentStatus::Succeeded)
}

/// Records the deployment a finished stage made; for a failed check after a deployment (a
/// `monitor` stage, or any stage with `on_failure: rollback`) opens an incident and, when asked,
/// starts an automatic rollback; for a rollback run whose last stage passed, resolves the
/// incidents it was started for.
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
    let check_at = check_time(run, stage, at);
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
    let Some(run) = state.runs.get(run_id) else {
        return;
    };
    if success && let Some(plan) = &run.rollback {
        let last = plan.check.as_ref().unwrap_or(&plan.stage);
        if last.name == stage {
            let restored = state
                .deployments
                .iter()
                .rev()
                .find(|d| d.run_id == run_id && d.status != DeploymentStatus::Failed)
                .map_or(0, |d| d.id);
            let resolved_at = if plan.check.is_some() { check_at } else { at };
            incidents::resolve_by_rollback(state, run_id, restored, resolved_at);
        }
        return;
    }
    let watches = spec.on_failure == OnFailure::Rollback || spec.monitor.is_some();
    if !success && run.kind == RunKind::Release && watches {
        failed_check(state, run_id, &spec, check_at, at, events);
    }
}

/// When the deciding check of `stage`'s last attempt ran: the time the agent reported, kept
/// within the attempt's lifetime (agent clocks drift), else `at`.
fn check_time(run: &Run, stage: &str, at: i64) -> i64 {
    let Some(attempt) = run.stage(stage).and_then(|s| s.attempts.last()) else {
        return at;
    };
    match attempt.result.as_ref().map_or(0, |r| r.check_at_ms) {
        0 => at,
        t => t.clamp(attempt.assigned_ms.min(at), at),
    }
}

/// A check after a deployment failed: every environment the run deployed nearest upstream of
/// the check gets an incident opened at `check_at`, and a rollback (with the check re-run as
/// its health check) when the stage says `on_failure: rollback`.
fn failed_check(
    state: &mut State,
    run_id: &str,
    spec: &StageSpec,
    check_at: i64,
    at: i64,
    events: &mut Vec<Event>,
) {
    let why = state
        .runs
        .get(run_id)
        .and_then(|r| r.stage(&spec.name))
        .map(|s| s.reason.clone())
        .unwrap_or_default();
    for env in nearest_envs(state, run_id, &spec.name) {
        let reason = format!("stage {} of run {run_id} failed: {why}", spec.name);
        let id =
            incidents::open_for_failed_check(state, &env, run_id, &spec.name, &reason, check_at);
        if spec.on_failure != OnFailure::Rollback {
            continue;
        }
        let c = Rollback {
            environment: env,
            reason: format!("stage {} of run {run_id} failed", spec.name),
        };
        // A refusal (nothing earlier to restore) leaves the incident open for an operator.
        if let Ok(rollback_run) = start_rollback(state, &c, Some(spec.clone()), at, events) {
            incidents::link_rollback(state, id, &rollback_run);
        }
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

/// The environments of the deploying stages nearest upstream of `stage` that `run_id` itself
/// deployed and that are still in service: a failed production check concerns production, not
/// the staging deployment that came before it.
fn nearest_envs(state: &State, run_id: &str, stage: &str) -> Vec<String> {
    let Some(run) = state.runs.get(run_id) else {
        return Vec::new();
    };
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
    nearest
        .filter_map(|s| state.stage_spec(run, s)?.environment.clone())
        .filter(|env| current(&state.deployments, env).is_some_and(|d| d.run_id == run_id))
        .collect()
}

/// The health check a rollback run makes after its deployment: the failed check again, once
/// deployed, until its first passing check (a monitor's `duration` becomes 0).
fn health_check(failed: &StageSpec, deploy_stage: &str) -> StageSpec {
    let mut check = failed.clone();
    check.needs = vec![deploy_stage.to_string()];
    check.on_failure = OnFailure::Fail;
    check.gate = None;
    check.environment = None;
    if let Some(m) = &mut check.monitor {
        m.duration_ms = 0;
    }
    if check.name == deploy_stage {
        check.name = format!("{}-check", check.name);
    }
    check
}

/// Starts a rollback run of `c.environment`; `check` (the failed check, for an automatic
/// rollback) becomes its health-check stage.
pub(super) fn start_rollback(
    state: &mut State,
    c: &Rollback,
    check: Option<StageSpec>,
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
    let check = check.map(|c| health_check(&c, &stage.name));
    let mut stages = vec![Stage::new(&stage.name)];
    stages.extend(check.iter().map(|c| Stage::new(&c.name)));
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
        stages,
        rollback: Some(RollbackPlan {
            environment: env.clone(),
            restores: target.id,
            undoes: base,
            stage,
            check,
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
