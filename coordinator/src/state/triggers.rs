//! Runs started by triggers (git poll, webhook, schedule), deduplicated in apply: what fired
//! is recorded in the same step that starts the run, so proposing it twice (a new leader
//! polling again, a webhook delivered twice) starts one run.

use super::command::{StartRun, TriggerRun};
use super::{Event, Outcome, State, StateError, TriggerState, runs};

/// How many commits per pipeline are remembered for deduplication.
pub const RECENT_COMMITS: usize = 256;

pub(super) fn trigger_run(
    state: &mut State,
    c: &TriggerRun,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    let spec = &state
        .pipelines
        .get(&c.pipeline)
        .and_then(|p| p.latest())
        .ok_or_else(|| StateError::NotFound(format!("pipeline {:?} does not exist", c.pipeline)))?
        .spec;
    let configured = match c.source.as_str() {
        "git" => spec.trigger.git.is_some(),
        "webhook" => spec.trigger.webhook.is_some(),
        "schedule" => spec.trigger.schedule.is_some(),
        other => {
            return Err(StateError::InvalidArgument {
                field: "source".into(),
                message: format!("unknown trigger source {other:?} (git, webhook, schedule)"),
            });
        }
    };
    if !configured {
        return Err(StateError::FailedPrecondition(format!(
            "pipeline {} has no {} trigger",
            c.pipeline, c.source
        )));
    }
    let seen = state.triggers.entry(c.pipeline.clone()).or_default();
    if c.source == "schedule" {
        if c.fire_ms <= seen.last_fire_ms {
            return Ok(Outcome::AlreadyTriggered {
                run_id: seen.last_fire_run.clone(),
            });
        }
    } else {
        if c.revision.is_empty() {
            return Err(StateError::InvalidArgument {
                field: "revision".into(),
                message: "a commit trigger must name the commit".into(),
            });
        }
        if let Some((_, run_id)) = seen.commits.iter().find(|(sha, _)| *sha == c.revision) {
            return Ok(Outcome::AlreadyTriggered {
                run_id: run_id.clone(),
            });
        }
    }
    let start = StartRun {
        pipeline: c.pipeline.clone(),
        revision: c.revision.clone(),
        params: Default::default(),
        trigger: c.source.clone(),
        commit_at_ms: c.commit_at_ms,
    };
    let out = runs::start_run(state, &start, at, events)?;
    let run_id = match &out {
        Outcome::Run(id) => id.clone(),
        _ => String::new(),
    };
    let seen: &mut TriggerState = state.triggers.entry(c.pipeline.clone()).or_default();
    if c.source == "schedule" {
        seen.last_fire_ms = c.fire_ms;
        seen.last_fire_run = run_id;
    } else {
        seen.commits.push((c.revision.clone(), run_id));
        if seen.commits.len() > RECENT_COMMITS {
            let extra = seen.commits.len() - RECENT_COMMITS;
            seen.commits.drain(..extra);
        }
    }
    Ok(out)
}
