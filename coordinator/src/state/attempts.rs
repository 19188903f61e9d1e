//! Agents and the attempts they run: assignment, leases, logs, results, expiry.
//!
//! Every claim names an attempt; only the live attempt of a stage (the last one, while the
//! stage is assigned or running, held by the same agent) may change it. Anything else is
//! `Stale`: that is the fencing that makes a stage's outcome recorded exactly once.

use std::collections::BTreeMap;

use super::command::{
    AppendLogs, AssignStage, AttemptKey, ExpireAttempt, Heartbeat, RegisterAgent, ReportResult,
};
use super::{
    Agent, Attempt, Event, LogAck, Outcome, Run, Stage, StageState, State, StateError, deploy, flow,
};

pub(super) fn register_agent(
    state: &mut State,
    c: &RegisterAgent,
    at: i64,
) -> Result<Outcome, StateError> {
    let agent = state.agents.entry(c.name.clone()).or_insert_with(|| Agent {
        name: c.name.clone(),
        labels: Vec::new(),
        slots: 0,
        version: String::new(),
        registered_ms: at,
        last_seen_ms: at,
    });
    agent.labels = c.labels.clone();
    agent.slots = c.slots;
    agent.version = c.version.clone();
    agent.last_seen_ms = at;
    Ok(Outcome::Done)
}

pub(super) fn heartbeat(state: &mut State, c: &Heartbeat, at: i64) -> Result<Outcome, StateError> {
    let agent = state
        .agents
        .get_mut(&c.agent)
        .ok_or_else(|| StateError::NotFound(format!("agent {:?} is not registered", c.agent)))?;
    agent.last_seen_ms = at;
    for id in &state.active {
        let Some(run) = state.runs.get_mut(id) else {
            continue;
        };
        for stage in run.stages.iter_mut().filter(|s| s.state.is_live()) {
            if let Some(a) = stage.attempts.last_mut()
                && a.agent == c.agent
            {
                a.lease_until_ms = a.lease_until_ms.max(c.lease_until_ms);
            }
        }
    }
    Ok(Outcome::Done)
}

pub(super) fn assign(
    state: &mut State,
    c: &AssignStage,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    if !state.agents.contains_key(&c.agent) {
        return Err(StateError::NotFound(format!(
            "agent {:?} is not registered",
            c.agent
        )));
    }
    let stage = stage_mut(state, &c.run_id, &c.stage)?;
    if stage.state != StageState::Queued {
        return Err(StateError::FailedPrecondition(format!(
            "stage {} of run {} is {}, not queued",
            c.stage,
            c.run_id,
            stage.state.as_str()
        )));
    }
    let next = stage.attempts.len() as u32 + 1;
    if c.attempt != next {
        return Err(StateError::Stale(format!(
            "attempt {} of {}/{} is not the next one ({next})",
            c.attempt, c.run_id, c.stage
        )));
    }
    stage.attempts.push(Attempt {
        number: next,
        agent: c.agent.clone(),
        assigned_ms: at,
        started_ms: 0,
        finished_ms: 0,
        lease_until_ms: c.lease_until_ms,
        result: None,
        end_reason: String::new(),
        log_next_seq: 0,
        term: c.term,
    });
    stage.state = StageState::Assigned;
    stage.reason.clear();
    events.push(Event::Assigned {
        agent: c.agent.clone(),
        run_id: c.run_id.clone(),
        stage: c.stage.clone(),
        attempt: next,
    });
    events.push(Event::RunChanged {
        run_id: c.run_id.clone(),
    });
    Ok(Outcome::Done)
}

pub(super) fn start(
    state: &mut State,
    c: &AttemptKey,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    let run_id = c.run_id.clone();
    let stage = stage_mut(state, &c.run_id, &c.stage)?;
    let attempt = live_attempt_mut(stage, c)?;
    if attempt.started_ms == 0 {
        attempt.started_ms = at;
    }
    if stage.state == StageState::Assigned {
        stage.state = StageState::Running;
        events.push(Event::RunChanged { run_id });
    }
    Ok(Outcome::Done)
}

pub(super) fn append_logs(
    state: &mut State,
    c: &AppendLogs,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    let mut acks: BTreeMap<(String, String, u32), LogAck> = BTreeMap::new();
    for chunk in &c.chunks {
        let Some(key) = &chunk.key else { continue };
        let slot = (key.run_id.clone(), key.stage.clone(), key.attempt);
        let live = stage_mut(state, &key.run_id, &key.stage)
            .ok()
            .and_then(|stage| live_attempt_mut(stage, key).ok());
        let ack = match live {
            None => LogAck {
                run_id: key.run_id.clone(),
                stage: key.stage.clone(),
                attempt: key.attempt,
                term: key.term,
                next_seq: 0,
                stale: true,
            },
            Some(attempt) => {
                if chunk.seq == attempt.log_next_seq {
                    attempt.log_next_seq += 1;
                    // Stored still encoded (the leader checked it decodes); reads decode it.
                    events.push(Event::LogAppended {
                        run_id: key.run_id.clone(),
                        stage: key.stage.clone(),
                        attempt: key.attempt,
                        seq: chunk.seq,
                        encoding: chunk.encoding,
                        data: chunk.data.clone(),
                    });
                }
                LogAck {
                    run_id: key.run_id.clone(),
                    stage: key.stage.clone(),
                    attempt: key.attempt,
                    term: key.term,
                    next_seq: attempt.log_next_seq,
                    stale: false,
                }
            }
        };
        acks.insert(slot, ack);
    }
    Ok(Outcome::LogAcks(acks.into_values().collect()))
}

pub(super) fn report_result(
    state: &mut State,
    c: &ReportResult,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    let key = c.key.as_ref().ok_or_else(|| StateError::InvalidArgument {
        field: "attempt".into(),
        message: "missing".into(),
    })?;
    let result = c
        .result
        .clone()
        .ok_or_else(|| StateError::InvalidArgument {
            field: "result".into(),
            message: "missing".into(),
        })?;
    let stage = stage_mut(state, &key.run_id, &key.stage)?;
    let attempt = live_attempt_mut(stage, key)?;
    attempt.finished_ms = at;
    if attempt.started_ms == 0 {
        attempt.started_ms = attempt.assigned_ms;
    }
    let ok = result.exit_code == 0 && !result.cancelled && result.errors.is_empty();
    let aborted = result.cancelled;
    let why = describe_failure(&result);
    attempt.result = Some(result);
    if ok {
        stage.state = StageState::Succeeded;
        stage.reason.clear();
        deploy::stage_finished(state, &key.run_id, &key.stage, true, at, events);
    } else if aborted {
        // The agent gave up (shutdown, lost workspace): not the stage's fault; run it again.
        attempt.end_reason = "cancelled by the agent".into();
        flow::queue(stage, at, "requeued: agent cancelled the attempt", events);
    } else {
        fail_attempt(state, key, &why, at, events);
    }
    flow::advance(state, &key.run_id, at, events);
    Ok(Outcome::Done)
}

fn describe_failure(r: &super::StageResult) -> String {
    let mut why = format!("exit code {}", r.exit_code);
    if !r.errors.is_empty() {
        why = format!("{why}: {}", r.errors.join("; "));
    }
    why
}

/// Counts a failure against `retries`: requeue or fail the stage (and roll back if asked).
fn fail_attempt(state: &mut State, key: &AttemptKey, why: &str, at: i64, events: &mut Vec<Event>) {
    let retries = state
        .runs
        .get(&key.run_id)
        .and_then(|run| state.stage_spec(run, &key.stage))
        .map_or(0, |s| s.retries);
    let Ok(stage) = stage_mut(state, &key.run_id, &key.stage) else {
        return;
    };
    stage.failures += 1;
    if stage.failures <= retries {
        let reason = format!(
            "attempt {} failed ({why}); retry {}/{retries}",
            key.attempt, stage.failures
        );
        flow::queue(stage, at, &reason, events);
    } else {
        stage.state = StageState::Failed;
        stage.reason = why.to_string();
        deploy::stage_finished(state, &key.run_id, &key.stage, false, at, events);
    }
}

pub(super) fn expire(
    state: &mut State,
    c: &ExpireAttempt,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    let key = c.key.as_ref().ok_or_else(|| StateError::InvalidArgument {
        field: "attempt".into(),
        message: "missing".into(),
    })?;
    let run_id = key.run_id.clone();
    let stage = stage_mut(state, &key.run_id, &key.stage)?;
    let attempt = live_attempt_mut(stage, key)?;
    attempt.end_reason = c.reason.clone();
    attempt.finished_ms = at;
    events.push(Event::CancelAttempt {
        agent: attempt.agent.clone(),
        run_id: run_id.clone(),
        stage: key.stage.clone(),
        attempt: key.attempt,
        term: attempt.term,
        reason: c.reason.clone(),
    });
    if c.timed_out {
        fail_attempt(state, key, &c.reason, at, events);
    } else {
        flow::queue(stage, at, &format!("requeued: {}", c.reason), events);
    }
    flow::advance(state, &run_id, at, events);
    Ok(Outcome::Done)
}

fn stage_mut<'a>(
    state: &'a mut State,
    run_id: &str,
    stage: &str,
) -> Result<&'a mut Stage, StateError> {
    let run: &mut Run = state
        .runs
        .get_mut(run_id)
        .ok_or_else(|| StateError::NotFound(format!("run {run_id:?} does not exist")))?;
    run.stage_mut(stage)
        .ok_or_else(|| StateError::NotFound(format!("run {run_id} has no stage {stage:?}")))
}

/// The stage's live attempt, if `key` names it and its holder.
fn live_attempt_mut<'a>(
    stage: &'a mut Stage,
    key: &AttemptKey,
) -> Result<&'a mut Attempt, StateError> {
    let name = stage.name.clone();
    let live = stage.state.is_live();
    match stage.attempts.last_mut() {
        // Claims from the coordinator itself (expiry) name no agent.
        Some(a) if live && a.number == key.attempt && key.agent.is_empty() => Ok(a),
        Some(a) if live && a.number == key.attempt && a.agent != key.agent => {
            Err(StateError::Stale(format!(
                "attempt {} of {}/{name} belongs to agent {}, not {}",
                key.attempt, key.run_id, a.agent, key.agent
            )))
        }
        Some(a) if live && a.number == key.attempt && a.term != key.term => {
            Err(StateError::Stale(format!(
                "attempt {} of {}/{name}: fencing token term {} does not match the grant's term {}",
                key.attempt, key.run_id, key.term, a.term
            )))
        }
        Some(a) if live && a.number == key.attempt => Ok(a),
        _ => Err(StateError::Stale(format!(
            "attempt {} of {}/{name} is no longer live",
            key.attempt, key.run_id
        ))),
    }
}
