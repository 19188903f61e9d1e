//! Incidents opened by failed monitors and resolved by the rollback's health check, and by hand.

use super::super::command::*;
use super::super::testkit::*;
use super::super::{
    DeploymentStatus, Outcome, Resolution, Run, RunKind, RunState, StageState, StateError,
};

/// Releases v1 (monitor passes), then v2, whose monitor fails with its deciding check
/// `offset` ms after the monitor command's predecessor (assigned +10, result applied +30);
/// returns (the v2 run, the rollback run, the check time).
fn v2_fails(k: &mut Kit, offset: i64) -> (String, String, i64) {
    for (rev, code) in [("v1", 0), ("v2", 1)] {
        let run = k.start_run_with("svc", rev, 0);
        k.run_stage(&run, "build", "a1", exit(0));
        k.run_stage(&run, "deploy", "a1", exit(0));
        if code != 0 {
            let check_at = k.now.saturating_add(offset);
            k.run_stage(&run, "monitor", "a1", checked(code, check_at));
            let rb = rollback_run(k).id.clone();
            return (run, rb, check_at);
        }
        let t = k.now;
        k.run_stage(&run, "monitor", "a1", checked(0, t));
    }
    unreachable!()
}

fn rollback_run(k: &Kit) -> &Run {
    k.state
        .runs
        .values()
        .find(|r| r.kind == RunKind::Rollback)
        .expect("a rollback run")
}

#[test]
fn a_failed_monitor_opens_an_incident_at_its_check_and_starts_a_rollback_with_a_health_check() {
    let mut k = Kit::new(&monitored_pipeline());
    // The check ran between the start (+20) and the result (+30).
    let (v2, rb, check_at) = v2_fails(&mut k, 25);
    let i = &k.state.incidents[0];
    assert_eq!(k.state.incidents.len(), 1);
    assert_eq!(i.environment, "production");
    assert_eq!(
        i.opened_ms, check_at,
        "opened at the failed check, not at apply time"
    );
    assert_eq!(i.opened_by, "monitor");
    assert_eq!(
        (i.run_id.as_str(), i.stage.as_str()),
        (v2.as_str(), "monitor")
    );
    assert_eq!(i.deployment, 2, "v2's deployment is the suspected cause");
    assert_eq!(i.rollback_run, rb);
    assert!(i.is_open());
    let run = rollback_run(&k);
    let names: Vec<&str> = run.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["deploy", "monitor"]);
    let check = run
        .rollback
        .as_ref()
        .and_then(|p| p.check.as_ref())
        .expect("check");
    assert_eq!(check.needs, ["deploy"]);
    assert_eq!(check.monitor.as_ref().map(|m| m.duration_ms), Some(0));
    assert_eq!(run.stages[1].state, StageState::Pending);
}

#[test]
fn the_rollback_resolves_the_incident_when_its_health_check_passes() {
    let mut k = Kit::new(&monitored_pipeline());
    let (_, rb, _) = v2_fails(&mut k, 25);
    k.run_stage(&rb, "deploy", "a1", exit(0));
    // Deployed but not yet checked: still open; v2 is already marked rolled back.
    assert!(k.state.incidents[0].is_open());
    assert_eq!(k.state.deployments[1].status, DeploymentStatus::RolledBack);
    let passed_at = k.now + 25;
    k.run_stage(&rb, "monitor", "a1", checked(0, passed_at));
    let i = &k.state.incidents[0];
    assert_eq!(i.resolution, Some(Resolution::Rollback));
    assert_eq!(i.resolved_ms, passed_at);
    assert_eq!(i.resolved_by, rb);
    assert_eq!(i.restored_by_deployment, 3);
    assert_eq!(k.state.runs[&rb].state, RunState::Succeeded);
    let current = k.state.current_deployment("production").expect("current");
    assert_eq!((current.id, current.revision.as_str()), (3, "v1"));
}

#[test]
fn a_failing_health_check_leaves_the_incident_open() {
    let mut k = Kit::new(&monitored_pipeline());
    let (_, rb, _) = v2_fails(&mut k, 25);
    k.run_stage(&rb, "deploy", "a1", exit(0));
    let t = k.now + 15;
    k.run_stage(&rb, "monitor", "a1", checked(1, t));
    assert_eq!(k.state.runs[&rb].state, RunState::Failed);
    assert!(k.state.incidents[0].is_open());
    assert_eq!(
        k.state.incidents.len(),
        1,
        "a rollback's failed check opens no new incident"
    );
    assert_eq!(
        k.state
            .runs
            .values()
            .filter(|r| r.kind == RunKind::Rollback)
            .count(),
        1,
        "and starts no rollback of the rollback"
    );
}

#[test]
fn a_check_time_outside_the_attempt_is_clamped_to_it() {
    let mut k = Kit::new(&monitored_pipeline());
    // An agent clock far ahead: the incident opens when the result was applied.
    v2_fails(&mut k, i64::MAX / 2);
    let applied = k.state.runs.values().find(|r| r.revision == "v2").map(|r| {
        r.stage("monitor")
            .and_then(|s| s.attempts.last())
            .map(|a| a.finished_ms)
    });
    assert_eq!(Some(k.state.incidents[0].opened_ms), applied.flatten());
}

#[test]
fn a_failed_monitor_without_rollback_opens_an_incident_only() {
    let mut spec = monitored_pipeline();
    spec.stages[2].on_failure = cd_common::spec::OnFailure::Fail;
    let mut k = Kit::new(&spec);
    v2_fails_no_rollback(&mut k);
    assert_eq!(k.state.incidents.len(), 1);
    assert!(k.state.incidents[0].rollback_run.is_empty());
    assert!(k.state.runs.values().all(|r| r.kind == RunKind::Release));
}

fn v2_fails_no_rollback(k: &mut Kit) {
    for (rev, code) in [("v1", 0), ("v2", 1)] {
        let run = k.start_run_with("svc", rev, 0);
        k.run_stage(&run, "build", "a1", exit(0));
        k.run_stage(&run, "deploy", "a1", exit(0));
        let check_at = k.now + 25;
        k.run_stage(&run, "monitor", "a1", checked(code, check_at));
    }
}

#[test]
fn incidents_open_and_resolve_by_hand() {
    let mut k = Kit::new(&monitored_pipeline());
    let run = k.start_run_with("svc", "v1", 0);
    k.run_stage(&run, "build", "a1", exit(0));
    k.run_stage(&run, "deploy", "a1", exit(0));
    let open = |env: &str, reason: &str| {
        Kind::OpenIncident(OpenIncident {
            environment: env.into(),
            reason: reason.into(),
            identity: "alice".into(),
        })
    };
    let err = k
        .apply(open("production", " "))
        .result
        .expect_err("no reason");
    assert!(matches!(err, StateError::InvalidArgument { ref field, .. } if field == "reason"));
    let err = k
        .apply(open("staging", "down"))
        .result
        .expect_err("unknown env");
    assert!(matches!(err, StateError::NotFound(_)), "{err}");
    let opened_at = k.now + 10;
    let id = match k.ok(open("production", "latency")) {
        Outcome::Incident(id) => id,
        o => panic!("unexpected {o:?}"),
    };
    let i = &k.state.incidents[0];
    assert_eq!(
        (id, i.opened_ms, i.opened_by.as_str()),
        (1, opened_at, "alice")
    );
    assert_eq!(i.deployment, 1);
    let resolve = |id| {
        Kind::ResolveIncident(ResolveIncident {
            id,
            identity: "bob".into(),
            note: "restarted".into(),
        })
    };
    let err = k.apply(resolve(7)).result.expect_err("unknown id");
    assert!(matches!(err, StateError::NotFound(_)));
    let resolved_at = k.now + 10;
    k.ok(resolve(1));
    let i = &k.state.incidents[0];
    assert_eq!(i.resolution, Some(Resolution::Manual));
    assert_eq!(
        (i.resolved_ms, i.resolved_by.as_str()),
        (resolved_at, "bob")
    );
    assert_eq!(i.note, "restarted");
    let err = k.apply(resolve(1)).result.expect_err("twice");
    assert!(matches!(err, StateError::FailedPrecondition(_)));
}

#[test]
fn a_snapshot_written_before_incidents_existed_still_loads() {
    let mut k = Kit::new(&monitored_pipeline());
    v2_fails(&mut k, 25);
    let bytes = k.state.to_snapshot().expect("encodes");
    let back = super::super::State::from_snapshot(&bytes).expect("decodes");
    assert_eq!(back, k.state);
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    let state = json["state"].as_object_mut().expect("state");
    state.remove("incidents");
    for run in state["runs"].as_object_mut().expect("runs").values_mut() {
        if let Some(plan) = run["rollback"].as_object_mut() {
            plan.remove("check");
        }
    }
    let old = serde_json::to_vec(&json).expect("json");
    let loaded = super::super::State::from_snapshot(&old).expect("old form loads");
    assert!(loaded.incidents.is_empty());
}
