//! Incidents: periods during which an environment was failing. A failed monitoring check opens
//! one (at the time of that check) and the automatic rollback's passing health check resolves
//! it; operators can open and resolve them by hand too.

use super::command::{OpenIncident, ResolveIncident};
use super::{Incident, Outcome, Resolution, State, StateError};

/// Longest `reason` / `note` kept, in bytes.
pub const MAX_TEXT: usize = 1024;

fn check_text(field: &str, text: &str, required: bool) -> Result<(), StateError> {
    let bad = |message: String| StateError::InvalidArgument {
        field: field.into(),
        message,
    };
    if required && text.trim().is_empty() {
        return Err(bad("required".into()));
    }
    if text.len() > MAX_TEXT {
        return Err(bad(format!(
            "{} bytes exceeds the limit of {MAX_TEXT} bytes",
            text.len()
        )));
    }
    Ok(())
}

/// The fields every new incident shares; the caller fills in the cause.
fn new_incident(state: &State, environment: &str, reason: &str, at: i64) -> Incident {
    Incident {
        id: state.incidents.len() as u64 + 1,
        environment: environment.to_string(),
        opened_ms: at,
        resolved_ms: 0,
        reason: reason.to_string(),
        opened_by: String::new(),
        deployment: state.current_deployment(environment).map_or(0, |d| d.id),
        run_id: String::new(),
        stage: String::new(),
        rollback_run: String::new(),
        resolution: None,
        resolved_by: String::new(),
        restored_by_deployment: 0,
        note: String::new(),
    }
}

pub(super) fn open_by_hand(
    state: &mut State,
    c: &OpenIncident,
    at: i64,
) -> Result<Outcome, StateError> {
    check_text("reason", &c.reason, true)?;
    if c.environment.is_empty() {
        return Err(StateError::InvalidArgument {
            field: "environment".into(),
            message: "required".into(),
        });
    }
    if !state
        .deployments
        .iter()
        .any(|d| d.environment == c.environment)
    {
        return Err(StateError::NotFound(format!(
            "environment {:?} has no deployments",
            c.environment
        )));
    }
    let mut incident = new_incident(state, &c.environment, &c.reason, at);
    incident.opened_by = c.identity.clone();
    let id = incident.id;
    state.incidents.push(incident);
    Ok(Outcome::Incident(id))
}

pub(super) fn resolve_by_hand(
    state: &mut State,
    c: &ResolveIncident,
    at: i64,
) -> Result<Outcome, StateError> {
    check_text("note", &c.note, false)?;
    let incident = incident_mut(state, c.id)?;
    if !incident.is_open() {
        return Err(StateError::FailedPrecondition(format!(
            "incident {} is already resolved",
            c.id
        )));
    }
    incident.resolution = Some(Resolution::Manual);
    incident.resolved_ms = at.max(incident.opened_ms);
    incident.resolved_by = c.identity.clone();
    incident.note = c.note.clone();
    Ok(Outcome::Incident(c.id))
}

fn incident_mut(state: &mut State, id: u64) -> Result<&mut Incident, StateError> {
    state
        .incidents
        .get_mut((id as usize).wrapping_sub(1))
        .ok_or_else(|| StateError::NotFound(format!("incident {id} does not exist")))
}

/// Opens the incident of a failed check of `run_id`/`stage` against `environment`, at
/// `opened_ms`; returns its id.
pub(super) fn open_for_failed_check(
    state: &mut State,
    environment: &str,
    run_id: &str,
    stage: &str,
    reason: &str,
    opened_ms: i64,
) -> u64 {
    let mut incident = new_incident(state, environment, reason, opened_ms);
    incident.opened_by = "monitor".into();
    incident.run_id = run_id.to_string();
    incident.stage = stage.to_string();
    let id = incident.id;
    state.incidents.push(incident);
    id
}

/// Links an incident to the rollback run started for it.
pub(super) fn link_rollback(state: &mut State, id: u64, rollback_run: &str) {
    if let Ok(incident) = incident_mut(state, id) {
        incident.rollback_run = rollback_run.to_string();
    }
}

/// The rollback run `run_id` restored service: resolve the open incidents it was started for.
pub(super) fn resolve_by_rollback(state: &mut State, run_id: &str, deployment: u64, at: i64) {
    for incident in state
        .incidents
        .iter_mut()
        .filter(|i| i.is_open() && i.rollback_run == run_id)
    {
        incident.resolution = Some(Resolution::Rollback);
        incident.resolved_ms = at.max(incident.opened_ms);
        incident.resolved_by = run_id.to_string();
        incident.restored_by_deployment = deployment;
    }
}

#[cfg(test)]
#[path = "incidents_tests.rs"]
mod tests;
