//! Starting and cancelling runs, and operator decisions on gates.

use super::command::{Approve, CancelRun, ExpireApproval, Reject, StartRun};
use super::flow;
use super::{
    Approval, Event, GateOutcome, Outcome, Run, RunKind, RunState, Stage, StageState, State,
    StateError,
};

pub(super) fn start_run(
    state: &mut State,
    c: &StartRun,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    let pipeline = state
        .pipelines
        .get_mut(&c.pipeline)
        .ok_or_else(|| StateError::NotFound(format!("pipeline {:?} does not exist", c.pipeline)))?;
    let version = pipeline
        .latest()
        .ok_or_else(|| StateError::NotFound(format!("pipeline {:?} has no version", c.pipeline)))?;
    let stages = version
        .spec
        .stages
        .iter()
        .map(|s| Stage::new(&s.name))
        .collect();
    let version = version.version;
    let id = format!("{}-{}", c.pipeline, pipeline.next_run);
    pipeline.next_run += 1;
    let run = Run {
        id: id.clone(),
        seq: state.next_run_seq,
        pipeline: c.pipeline.clone(),
        pipeline_version: version,
        revision: if c.revision.is_empty() {
            "HEAD".into()
        } else {
            c.revision.clone()
        },
        params: c.params.clone(),
        trigger: if c.trigger.is_empty() {
            "manual".into()
        } else {
            c.trigger.clone()
        },
        kind: RunKind::Release,
        rollback: None,
        state: RunState::Running,
        created_ms: at,
        finished_ms: 0,
        stages,
        reason: String::new(),
        commit_at_ms: c.commit_at_ms,
        queued: false,
        superseded_by: String::new(),
    };
    insert_run(state, run, at, events);
    Ok(Outcome::Run(id))
}

/// Adds a new running run and moves its first stages forward.
/// A release run beyond its pipeline's `concurrency` waits, queued (see `concurrency`).
pub(super) fn insert_run(state: &mut State, mut run: Run, at: i64, events: &mut Vec<Event>) {
    let id = run.id.clone();
    if run.kind == RunKind::Release
        && let Some(why) = super::concurrency::must_queue(state, &run.pipeline)
    {
        run.queued = true;
        run.reason = why;
    }
    let queued = run.queued;
    state.next_run_seq += 1;
    state.active.insert(id.clone());
    state.runs.insert(id.clone(), run);
    if queued {
        super::concurrency::supersede_queued(state, &id, at, events);
    }
    flow::advance(state, &id, at, events);
}

pub(super) fn cancel_run(
    state: &mut State,
    c: &CancelRun,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    let reason = if c.reason.is_empty() {
        "cancelled by operator".to_string()
    } else {
        format!("cancelled: {}", c.reason)
    };
    cancel(state, &c.run_id, reason, at, events)
}

/// Cancels a running run: live attempts are told to stop, every unfinished stage is
/// cancelled with `reason`.
pub(super) fn cancel(
    state: &mut State,
    run_id: &str,
    reason: String,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    let run = state
        .runs
        .get_mut(run_id)
        .ok_or_else(|| StateError::NotFound(format!("run {run_id:?} does not exist")))?;
    if run.state != RunState::Running {
        return Err(StateError::FailedPrecondition(format!(
            "run {} already ended ({:?})",
            run.id, run.state
        )));
    }
    for stage in run.stages.iter_mut().filter(|s| !s.state.is_final()) {
        if stage.state.is_live()
            && let Some(a) = stage.attempts.last_mut()
        {
            a.end_reason = reason.clone();
            a.finished_ms = at;
            events.push(Event::CancelAttempt {
                agent: a.agent.clone(),
                run_id: run.id.clone(),
                stage: stage.name.clone(),
                attempt: a.number,
                term: a.term,
                reason: reason.clone(),
            });
        }
        stage.state = StageState::Cancelled;
        stage.reason = reason.clone();
    }
    run.reason = reason;
    run.queued = false;
    flow::advance(state, run_id, at, events);
    Ok(Outcome::Done)
}

fn awaiting_stage<'a>(
    state: &'a mut State,
    run_id: &str,
    stage: &str,
) -> Result<&'a mut Run, StateError> {
    let run = state
        .runs
        .get_mut(run_id)
        .ok_or_else(|| StateError::NotFound(format!("run {run_id:?} does not exist")))?;
    let s = run
        .stage(stage)
        .ok_or_else(|| StateError::NotFound(format!("run {run_id} has no stage {stage:?}")))?;
    if s.state != StageState::AwaitingApproval {
        return Err(StateError::FailedPrecondition(format!(
            "stage {stage} of run {run_id} is {}, not awaiting approval",
            s.state.as_str()
        )));
    }
    Ok(run)
}

impl State {
    /// Refuses a decision by someone the stage's `gate.approvers` does not name (the API
    /// checks before proposing, so nothing is written; apply checks again).
    pub fn check_approver(&self, run_id: &str, stage: &str, who: &str) -> Result<(), StateError> {
        check_approver(self, run_id, stage, who)
    }
}

fn check_approver(state: &State, run_id: &str, stage: &str, who: &str) -> Result<(), StateError> {
    let approvers = state
        .runs
        .get(run_id)
        .and_then(|run| flow::stage_spec(&state.pipelines, run, stage))
        .and_then(|spec| spec.gate.as_ref())
        .map(|g| g.approvers.as_slice())
        .unwrap_or_default();
    if cd_common::spec::may_approve(approvers, who) {
        Ok(())
    } else {
        Err(StateError::PermissionDenied(format!(
            "{who} may not approve or reject stage {stage} of run {run_id}; gate.approvers: {}",
            approvers.join(", ")
        )))
    }
}

pub(super) fn approve(
    state: &mut State,
    c: &Approve,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    awaiting_stage(state, &c.run_id, &c.stage)?;
    check_approver(state, &c.run_id, &c.stage, &c.identity)?;
    let State {
        runs,
        deployments,
        pipelines,
        ..
    } = &mut *state;
    let run = runs
        .get_mut(&c.run_id)
        .ok_or_else(|| StateError::NotFound(c.run_id.clone()))?;
    let spec = flow::stage_spec(pipelines, run, &c.stage)
        .cloned()
        .ok_or_else(|| StateError::NotFound(format!("no spec for stage {:?}", c.stage)))?;
    let gate_spec = spec.gate.clone().unwrap_or_default();
    let idx = run
        .stages
        .iter()
        .position(|s| s.name == c.stage)
        .ok_or_else(|| StateError::NotFound(c.stage.clone()))?;
    run.stages[idx].approvals.push(Approval {
        identity: c.identity.clone(),
        approved: true,
        comment: c.comment.clone(),
        at_ms: at,
    });
    let d = flow::evaluate_gate(deployments, run, &spec, &gate_spec, &run.stages[idx], at);
    if d.outcome == GateOutcome::Fail {
        // Facts changed since the stage started waiting (e.g. production moved): say so.
        run.stages[idx].reason = format!("gate failed: {}", d.reasons.join("; "));
    }
    flow::apply_gate_decision(&mut run.stages[idx], d, at, events);
    flow::advance(state, &c.run_id, at, events);
    Ok(Outcome::Done)
}

pub(super) fn reject(
    state: &mut State,
    c: &Reject,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    awaiting_stage(state, &c.run_id, &c.stage)?;
    check_approver(state, &c.run_id, &c.stage, &c.identity)?;
    let run = awaiting_stage(state, &c.run_id, &c.stage)?;
    if let Some(stage) = run.stage_mut(&c.stage) {
        stage.approvals.push(Approval {
            identity: c.identity.clone(),
            approved: false,
            comment: c.reason.clone(),
            at_ms: at,
        });
        stage.state = StageState::GateFailed;
        stage.reason = format!("rejected by {}: {}", c.identity, c.reason);
    }
    flow::advance(state, &c.run_id, at, events);
    Ok(Outcome::Done)
}

/// Fails a stage whose approval wait passed its `gate.approval_timeout` (deadline checked
/// against the command's time, so a stale proposal after an approval changes nothing).
pub(super) fn expire_approval(
    state: &mut State,
    c: &ExpireApproval,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    awaiting_stage(state, &c.run_id, &c.stage)?;
    let timeout = state
        .runs
        .get(&c.run_id)
        .and_then(|run| flow::stage_spec(&state.pipelines, run, &c.stage))
        .and_then(|s| s.gate.as_ref())
        .and_then(|g| g.approval_timeout_ms);
    let Some(timeout) = timeout else {
        return Err(StateError::FailedPrecondition(format!(
            "stage {} of run {} has no gate.approval_timeout",
            c.stage, c.run_id
        )));
    };
    let run = awaiting_stage(state, &c.run_id, &c.stage)?;
    let Some(stage) = run.stage_mut(&c.stage) else {
        return Err(StateError::NotFound(c.stage.clone()));
    };
    if at < stage.awaiting_since_ms + timeout as i64 {
        return Err(StateError::FailedPrecondition(format!(
            "stage {} of run {} has waited less than its approval_timeout",
            c.stage, c.run_id
        )));
    }
    stage.state = StageState::GateFailed;
    stage.reason = format!(
        "approval timed out: no decision within {}",
        cd_common::duration::format_ms(timeout)
    );
    flow::advance(state, &c.run_id, at, events);
    Ok(Outcome::Done)
}
