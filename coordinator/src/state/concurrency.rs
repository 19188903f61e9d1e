//! Who may run and deploy now: a pipeline's `concurrency` (runs beyond it wait, queued, and
//! are admitted oldest first) and per-environment deploy locks (a deploying stage waits while
//! another run holds its environment; the lock is released when that run's deploying stages
//! and everything downstream of them are final, or the run ends). With `on_new_run:
//! supersede`, the newest waiting run cancels older ones of its pipeline that wait for the
//! same thing, as "superseded by <run>". Everything here is decided in apply, from state only.

use std::collections::BTreeSet;

use cd_common::spec::OnNewRun;

use super::{Event, RunState, State, flow, runs};

fn on_new_run(state: &State, pipeline: &str) -> OnNewRun {
    state
        .pipelines
        .get(pipeline)
        .and_then(|p| p.latest())
        .map_or(OnNewRun::Queue, |v| v.spec.on_new_run)
}

fn limit(state: &State, pipeline: &str) -> Option<u32> {
    state
        .pipelines
        .get(pipeline)
        .and_then(|p| p.latest())
        .and_then(|v| v.spec.concurrency)
}

/// Admitted (not queued) running release runs of `pipeline`, oldest first.
fn admitted(state: &State, pipeline: &str) -> Vec<String> {
    let mut ids: Vec<(u64, String)> = state
        .active
        .iter()
        .filter_map(|id| state.runs.get(id))
        .filter(|r| r.pipeline == pipeline && !r.queued && r.kind == super::RunKind::Release)
        .map(|r| (r.seq, r.id.clone()))
        .collect();
    ids.sort();
    ids.into_iter().map(|(_, id)| id).collect()
}

/// Why a new run of `pipeline` must wait, or `None` when a slot is free.
pub(super) fn must_queue(state: &State, pipeline: &str) -> Option<String> {
    let n = limit(state, pipeline)?;
    let running = admitted(state, pipeline);
    (running.len() >= n as usize).then(|| {
        format!(
            "queued: concurrency {n} reached (running: {})",
            running.join(", ")
        )
    })
}

/// Queued runs of `pipeline`, oldest first.
fn queued(state: &State, pipeline: &str) -> Vec<String> {
    let mut ids: Vec<(u64, String)> = state
        .active
        .iter()
        .filter_map(|id| state.runs.get(id))
        .filter(|r| r.pipeline == pipeline && r.queued)
        .map(|r| (r.seq, r.id.clone()))
        .collect();
    ids.sort();
    ids.into_iter().map(|(_, id)| id).collect()
}

fn supersede(state: &mut State, victims: Vec<String>, by: &str, at: i64, events: &mut Vec<Event>) {
    for id in victims {
        // Only running runs are cancelled; an error means it ended meanwhile.
        if runs::cancel(state, &id, format!("superseded by {by}"), at, events).is_ok()
            && let Some(r) = state.runs.get_mut(&id)
        {
            r.superseded_by = by.to_string();
        }
    }
}

/// A run `new` was just queued: under `supersede`, older queued runs of its pipeline go.
pub(super) fn supersede_queued(state: &mut State, new: &str, at: i64, events: &mut Vec<Event>) {
    let Some(pipeline) = state.runs.get(new).map(|r| r.pipeline.clone()) else {
        return;
    };
    if on_new_run(state, &pipeline) != OnNewRun::Supersede {
        return;
    }
    let victims: Vec<String> = queued(state, &pipeline)
        .into_iter()
        .filter(|id| id != new)
        .collect();
    supersede(state, victims, new, at, events);
}

/// After `run_id` moved: supersede older runs waiting for the environments it started waiting
/// for, release its locks that are done, wake the runs waiting for them, and admit queued runs
/// if it ended.
pub(super) fn settle(
    state: &mut State,
    run_id: &str,
    ended: bool,
    newly_waiting: &[String],
    at: i64,
    events: &mut Vec<Event>,
) {
    let Some(pipeline) = state.runs.get(run_id).map(|r| r.pipeline.clone()) else {
        return;
    };
    if !newly_waiting.is_empty() && on_new_run(state, &pipeline) == OnNewRun::Supersede {
        for env in newly_waiting {
            supersede_waiting(state, &pipeline, env, at, events);
        }
    }
    let released = release_locks(state, run_id, ended);
    for env in released {
        wake(state, &env, at, events);
    }
    if ended {
        admit(state, &pipeline, at, events);
    }
}

/// Runs of `pipeline` with a stage waiting for `env`, oldest first.
fn waiting_for(state: &State, pipeline: Option<&str>, env: &str) -> Vec<String> {
    let mut ids: Vec<(u64, String)> = state
        .active
        .iter()
        .filter_map(|id| state.runs.get(id))
        .filter(|r| pipeline.is_none_or(|p| r.pipeline == p))
        .filter(|r| {
            r.stages
                .iter()
                .any(|s| s.waiting_for == env && !s.state.is_final())
        })
        .map(|r| (r.seq, r.id.clone()))
        .collect();
    ids.sort();
    ids.into_iter().map(|(_, id)| id).collect()
}

/// The newest run of `pipeline` waiting for `env` stays; older waiting ones are superseded.
fn supersede_waiting(
    state: &mut State,
    pipeline: &str,
    env: &str,
    at: i64,
    events: &mut Vec<Event>,
) {
    let mut waiting = waiting_for(state, Some(pipeline), env);
    let Some(newest) = waiting.pop() else {
        return;
    };
    supersede(state, waiting, &newest, at, events);
}

/// Removes the locks `run_id` holds and no longer needs; returns their environments.
fn release_locks(state: &mut State, run_id: &str, ended: bool) -> Vec<String> {
    let held: Vec<String> = state
        .env_locks
        .iter()
        .filter(|(_, holder)| *holder == run_id)
        .map(|(env, _)| env.clone())
        .collect();
    let mut released = Vec::new();
    for env in held {
        let done = ended
            || state
                .runs
                .get(run_id)
                .is_none_or(|r| r.state != RunState::Running || deploy_done(state, r, &env));
        if done {
            state.env_locks.remove(&env);
            released.push(env);
        }
    }
    released
}

/// Every stage of `run` deploying to `env`, and every stage downstream of one, is final.
fn deploy_done(state: &State, run: &super::Run, env: &str) -> bool {
    let deploying: BTreeSet<&str> = run
        .stages
        .iter()
        .filter(|s| {
            state
                .stage_spec(run, &s.name)
                .and_then(|spec| spec.environment.as_deref())
                == Some(env)
        })
        .map(|s| s.name.as_str())
        .collect();
    run.stages.iter().all(|s| {
        let involved = deploying.contains(s.name.as_str())
            || flow::upstream(&state.pipelines, run, &s.name)
                .iter()
                .any(|u| deploying.contains(u.as_str()));
        !involved || s.state.is_final()
    })
}

/// The oldest run waiting for `env` takes it (by advancing; it then holds the lock).
fn wake(state: &mut State, env: &str, at: i64, events: &mut Vec<Event>) {
    for id in waiting_for(state, None, env) {
        if state.env_locks.contains_key(env) {
            return;
        }
        flow::advance(state, &id, at, events);
    }
}

/// Admits the oldest queued runs of `pipeline` while slots are free.
fn admit(state: &mut State, pipeline: &str, at: i64, events: &mut Vec<Event>) {
    let n = limit(state, pipeline).map_or(usize::MAX, |n| n as usize);
    for id in queued(state, pipeline) {
        if admitted(state, pipeline).len() >= n {
            return;
        }
        if let Some(r) = state.runs.get_mut(&id) {
            r.queued = false;
            r.reason.clear();
        }
        flow::advance(state, &id, at, events);
    }
}
