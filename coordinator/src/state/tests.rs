//! Unit tests of apply: stage lifecycle, fencing, logs, gates, cancel, deployments, rollback.

use super::command::*;
use super::testkit::*;
use super::*;

fn stage_state(k: &Kit, run: &str, stage: &str) -> StageState {
    k.state.runs[run]
        .stage(stage)
        .map(|s| s.state)
        .expect("stage exists")
}

#[test]
fn a_run_goes_to_production_and_records_the_deployment() {
    let mut k = Kit::new(&ml_pipeline(0));
    let run = k.start_run("ml");
    assert_eq!(run, "ml-1");
    assert_eq!(stage_state(&k, &run, "build"), StageState::Queued);
    assert_eq!(stage_state(&k, &run, "acceptance"), StageState::Pending);
    k.run_stage(&run, "build", "a1", exit(0));
    k.run_stage(&run, "acceptance", "a2", with_accuracy(0.95));
    assert_eq!(stage_state(&k, &run, "deploy"), StageState::Queued);
    let gate = k.state.runs[&run]
        .stage("deploy")
        .and_then(|s| s.gate.clone())
        .expect("gate decision stored");
    assert_eq!(gate.outcome, GateOutcome::Pass);
    assert!(
        gate.reasons
            .iter()
            .any(|r| r.contains("no production baseline")),
        "{gate:?}"
    );
    k.run_stage(&run, "deploy", "a1", exit(0));
    k.run_stage(&run, "monitor", "a1", exit(0));
    let r = &k.state.runs[&run];
    assert_eq!(r.state, RunState::Succeeded);
    assert!(!k.state.active.contains(&run));
    let d = k.state.current_deployment("production").expect("deployed");
    assert_eq!(d.run_id, run);
    assert_eq!(d.metrics.get("accuracy"), Some(&0.95));
    assert_eq!(d.kind, RunKind::Release);
}

#[test]
fn a_regressed_model_is_stopped_at_the_gate_with_the_reason() {
    let mut k = Kit::new(&ml_pipeline(0));
    let good = k.start_run("ml");
    for (s, r) in [
        ("build", exit(0)),
        ("acceptance", with_accuracy(0.95)),
        ("deploy", exit(0)),
        ("monitor", exit(0)),
    ] {
        k.run_stage(&good, s, "a1", r);
    }
    let bad = k.start_run("ml");
    k.run_stage(&bad, "build", "a1", exit(0));
    k.run_stage(&bad, "acceptance", "a1", with_accuracy(0.92));
    let s = k.state.runs[&bad].stage("deploy").expect("deploy");
    assert_eq!(s.state, StageState::GateFailed);
    assert!(s.reason.contains("regressed"), "{}", s.reason);
    assert!(
        s.reason.contains("ml-1"),
        "names the production run: {}",
        s.reason
    );
    assert_eq!(stage_state(&k, &bad, "monitor"), StageState::Skipped);
    assert_eq!(k.state.runs[&bad].state, RunState::Failed);
    assert_eq!(
        k.state
            .current_deployment("production")
            .map(|d| d.run_id.as_str()),
        Some("ml-1")
    );
}

#[test]
fn a_missing_metric_waits_for_an_operator_and_approval_releases_it() {
    let mut k = Kit::new(&ml_pipeline(0));
    let run = k.start_run("ml");
    k.run_stage(&run, "build", "a1", exit(0));
    k.run_stage(&run, "acceptance", "a1", exit(0));
    let s = k.state.runs[&run].stage("deploy").expect("deploy");
    assert_eq!(s.state, StageState::AwaitingApproval);
    assert_eq!(
        s.gate.as_ref().map(|g| g.outcome),
        Some(GateOutcome::Inconclusive)
    );
    k.ok(Kind::Approve(Approve {
        run_id: run.clone(),
        stage: "deploy".into(),
        identity: "op".into(),
        comment: String::new(),
    }));
    assert_eq!(stage_state(&k, &run, "deploy"), StageState::Queued);
    let again = k.apply(Kind::Approve(Approve {
        run_id: run.clone(),
        stage: "deploy".into(),
        identity: "op".into(),
        comment: String::new(),
    }));
    assert!(matches!(
        again.result,
        Err(StateError::FailedPrecondition(_))
    ));
}

#[test]
fn required_approvals_wait_and_rejection_fails_the_gate() {
    let mut k = Kit::new(&ml_pipeline(1));
    let run = k.start_run("ml");
    k.run_stage(&run, "build", "a1", exit(0));
    k.run_stage(&run, "acceptance", "a1", with_accuracy(0.95));
    let s = k.state.runs[&run].stage("deploy").expect("deploy");
    assert_eq!(s.state, StageState::AwaitingApproval);
    assert_eq!(
        s.gate.as_ref().map(|g| g.outcome),
        Some(GateOutcome::WaitingApproval)
    );
    let empty = k.apply(Kind::Reject(Reject {
        run_id: run.clone(),
        stage: "nope".into(),
        identity: "op".into(),
        reason: "x".into(),
    }));
    assert!(matches!(empty.result, Err(StateError::NotFound(_))));
    k.ok(Kind::Reject(Reject {
        run_id: run.clone(),
        stage: "deploy".into(),
        identity: "op".into(),
        reason: "not today".into(),
    }));
    let s = k.state.runs[&run].stage("deploy").expect("deploy");
    assert_eq!(s.state, StageState::GateFailed);
    assert!(s.reason.contains("not today"));
    assert_eq!(k.state.runs[&run].state, RunState::Failed);
}

#[test]
fn retries_requeue_then_fail_and_skip_downstream() {
    let mut spec = ml_pipeline(0);
    spec.stages[0].retries = 1;
    let mut k = Kit::new(&spec);
    let run = k.start_run("ml");
    k.run_stage(&run, "build", "a1", exit(2));
    let s = k.state.runs[&run].stage("build").expect("build");
    assert_eq!(s.state, StageState::Queued);
    assert!(s.reason.contains("retry 1/1"), "{}", s.reason);
    k.run_stage(&run, "build", "a2", exit(3));
    assert_eq!(stage_state(&k, &run, "build"), StageState::Failed);
    assert_eq!(stage_state(&k, &run, "acceptance"), StageState::Skipped);
    assert_eq!(stage_state(&k, &run, "monitor"), StageState::Skipped);
    assert_eq!(k.state.runs[&run].state, RunState::Failed);
    assert_eq!(
        k.state.runs[&run].stage("build").map(|s| s.attempts.len()),
        Some(2)
    );
}

#[test]
fn stale_and_foreign_claims_are_refused() {
    let mut k = Kit::new(&ml_pipeline(0));
    let run = k.start_run("ml");
    k.ok(Kind::AssignStage(AssignStage {
        run_id: run.clone(),
        stage: "build".into(),
        attempt: 1,
        agent: "a1".into(),
        lease_until_ms: k.now + 100,
        term: 1,
    }));
    let twice = k.apply(Kind::AssignStage(AssignStage {
        run_id: run.clone(),
        stage: "build".into(),
        attempt: 2,
        agent: "a2".into(),
        lease_until_ms: k.now + 100,
        term: 1,
    }));
    assert!(matches!(
        twice.result,
        Err(StateError::FailedPrecondition(_))
    ));
    let foreign = k.apply(Kind::ReportResult(ReportResult {
        key: Some(Kit::key(&run, "build", 1, "a2")),
        result: Some(exit(0)),
    }));
    assert!(matches!(foreign.result, Err(StateError::Stale(_))));
    // The right agent with an older fencing token (an earlier grant's term) is refused too.
    let mut old_token = Kit::key(&run, "build", 1, "a1");
    old_token.term = 0;
    let fenced = k.apply(Kind::ReportResult(ReportResult {
        key: Some(old_token),
        result: Some(exit(0)),
    }));
    assert!(matches!(fenced.result, Err(StateError::Stale(ref m)) if m.contains("fencing token")));
    k.ok(Kind::ExpireAttempt(ExpireAttempt {
        key: Some(Kit::key(&run, "build", 1, "a1")),
        timed_out: false,
        reason: "lease".into(),
    }));
    let s = k.state.runs[&run].stage("build").expect("build");
    assert_eq!(s.state, StageState::Queued);
    assert_eq!(s.failures, 0, "a lapsed lease is not the stage's failure");
    let late = k.apply(Kind::ReportResult(ReportResult {
        key: Some(Kit::key(&run, "build", 1, "a1")),
        result: Some(exit(0)),
    }));
    assert!(matches!(late.result, Err(StateError::Stale(_))));
    assert_eq!(stage_state(&k, &run, "build"), StageState::Queued);
}

#[test]
fn a_timeout_counts_as_a_failure_and_tells_the_agent_to_stop() {
    let mut k = Kit::new(&ml_pipeline(0));
    let run = k.start_run("ml");
    k.ok(Kind::AssignStage(AssignStage {
        run_id: run.clone(),
        stage: "build".into(),
        attempt: 1,
        agent: "a1".into(),
        lease_until_ms: k.now + 100,
        term: 1,
    }));
    let a = k.apply(Kind::ExpireAttempt(ExpireAttempt {
        key: Some(Kit::key(&run, "build", 1, "a1")),
        timed_out: true,
        reason: "timed out after 2s".into(),
    }));
    assert!(
        a.events
            .iter()
            .any(|e| matches!(e, Event::CancelAttempt { agent, .. } if agent == "a1"))
    );
    let s = k.state.runs[&run].stage("build").expect("build");
    assert_eq!(s.state, StageState::Failed);
    assert_eq!(s.reason, "timed out after 2s");
}

#[test]
fn log_chunks_are_deduplicated_ordered_and_fenced() {
    let mut k = Kit::new(&ml_pipeline(0));
    let run = k.start_run("ml");
    k.ok(Kind::AssignStage(AssignStage {
        run_id: run.clone(),
        stage: "build".into(),
        attempt: 1,
        agent: "a1".into(),
        lease_until_ms: k.now + 100,
        term: 1,
    }));
    let chunk = |seq: u64, agent: &str| LogChunk {
        key: Some(Kit::key(&run, "build", 1, agent)),
        seq,
        data: vec![seq as u8],
        encoding: 0,
    };
    let a = k.apply(Kind::AppendLogs(AppendLogs {
        chunks: vec![
            chunk(0, "a1"),
            chunk(1, "a1"),
            chunk(1, "a1"),
            chunk(3, "a1"),
        ],
    }));
    let stored: Vec<u64> = a
        .events
        .iter()
        .filter_map(|e| match e {
            Event::LogAppended { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(stored, vec![0, 1], "duplicate dropped, gap not stored");
    assert!(
        matches!(a.result, Ok(Outcome::LogAcks(ref acks)) if acks.len() == 1 && acks[0].next_seq == 2 && !acks[0].stale)
    );
    let b = k.apply(Kind::AppendLogs(AppendLogs {
        chunks: vec![chunk(2, "a2")],
    }));
    assert!(matches!(b.result, Ok(Outcome::LogAcks(ref acks)) if acks[0].stale));
    assert!(b.events.is_empty());
}

#[test]
fn cancel_stops_live_attempts_and_ends_the_run() {
    let mut k = Kit::new(&ml_pipeline(0));
    let run = k.start_run("ml");
    k.ok(Kind::AssignStage(AssignStage {
        run_id: run.clone(),
        stage: "build".into(),
        attempt: 1,
        agent: "a2".into(),
        lease_until_ms: k.now + 100,
        term: 1,
    }));
    let a = k.apply(Kind::CancelRun(CancelRun {
        run_id: run.clone(),
        reason: "stop".into(),
    }));
    assert!(
        a.events
            .iter()
            .any(|e| matches!(e, Event::CancelAttempt { agent, attempt: 1, .. } if agent == "a2"))
    );
    assert_eq!(k.state.runs[&run].state, RunState::Cancelled);
    assert!(
        k.state.runs[&run]
            .stages
            .iter()
            .all(|s| s.state == StageState::Cancelled)
    );
    let again = k.apply(Kind::CancelRun(CancelRun {
        run_id: run.clone(),
        reason: String::new(),
    }));
    assert!(matches!(
        again.result,
        Err(StateError::FailedPrecondition(_))
    ));
    let late = k.apply(Kind::ReportResult(ReportResult {
        key: Some(Kit::key(&run, "build", 1, "a2")),
        result: Some(exit(0)),
    }));
    assert!(matches!(late.result, Err(StateError::Stale(_))));
}

fn release(k: &mut Kit, acc: f64) -> String {
    let run = k.start_run("ml");
    for (s, r) in [
        ("build", exit(0)),
        ("acceptance", with_accuracy(acc)),
        ("deploy", exit(0)),
        ("monitor", exit(0)),
    ] {
        k.run_stage(&run, s, "a1", r);
    }
    assert_eq!(k.state.runs[&run].state, RunState::Succeeded);
    run
}

#[test]
fn rollback_restores_the_previous_release_as_a_rollback() {
    let mut k = Kit::new(&ml_pipeline(0));
    let none = k.apply(Kind::Rollback(Rollback {
        environment: "production".into(),
        reason: String::new(),
    }));
    assert!(matches!(none.result, Err(StateError::NotFound(_))));
    let first = release(&mut k, 0.95);
    let only = k.apply(Kind::Rollback(Rollback {
        environment: "production".into(),
        reason: String::new(),
    }));
    assert!(
        matches!(only.result, Err(StateError::FailedPrecondition(ref m)) if m.contains("no earlier"))
    );
    let second = release(&mut k, 0.96);
    let rb = match k.ok(Kind::Rollback(Rollback {
        environment: "production".into(),
        reason: "bad".into(),
    })) {
        Outcome::Run(id) => id,
        o => panic!("{o:?}"),
    };
    let r = &k.state.runs[&rb];
    assert_eq!(r.kind, RunKind::Rollback);
    assert_eq!(r.stages.len(), 1);
    assert_eq!(
        k.state.stage_spec(r, "deploy").map(|s| s.run.as_str()),
        Some("./deploy.sh --rollback")
    );
    k.run_stage(&rb, "deploy", "a1", exit(0));
    let cur = k.state.current_deployment("production").expect("current");
    assert_eq!(cur.kind, RunKind::Rollback);
    assert_eq!(cur.run_id, rb);
    assert_eq!(
        cur.metrics.get("accuracy"),
        Some(&0.95),
        "restores the first release's figures"
    );
    let undone = k
        .state
        .deployments
        .iter()
        .find(|d| d.run_id == second)
        .expect("second");
    assert_eq!(undone.status, DeploymentStatus::RolledBack);
    let restored = k
        .state
        .deployments
        .iter()
        .find(|d| d.id == cur.restores)
        .expect("restored");
    assert_eq!(restored.run_id, first);
}

#[test]
fn a_failed_monitor_rolls_production_back_automatically() {
    let mut k = Kit::new(&ml_pipeline(0));
    release(&mut k, 0.95);
    let run = k.start_run("ml");
    for (s, r) in [
        ("build", exit(0)),
        ("acceptance", with_accuracy(0.95)),
        ("deploy", exit(0)),
    ] {
        k.run_stage(&run, s, "a1", r);
    }
    k.run_stage(&run, "monitor", "a1", exit(1));
    assert_eq!(k.state.runs[&run].state, RunState::Failed);
    let rb = k
        .state
        .runs
        .values()
        .find(|r| r.kind == RunKind::Rollback)
        .expect("rollback run started");
    assert!(rb.trigger.contains("monitor"), "{}", rb.trigger);
    assert_eq!(rb.stages[0].state, StageState::Queued);
}

#[test]
fn snapshots_round_trip() {
    let mut k = Kit::new(&ml_pipeline(0));
    release(&mut k, 0.95);
    k.start_run("ml");
    let bytes = k.state.to_snapshot().expect("encodes");
    assert_eq!(State::from_snapshot(&bytes).expect("decodes"), k.state);
    assert!(State::from_snapshot(b"{").is_err());
}

#[test]
fn a_failed_monitor_rolls_back_only_the_nearest_environment() {
    // build -> deploy-staging -> deploy -> monitor(rollback): staging is upstream too, but
    // only production (the nearest deploying stage) is rolled back.
    let mut spec = ml_pipeline(0);
    let mut staging = stage("deploy-staging", &["build"]);
    staging.environment = Some("staging".into());
    spec.stages.insert(1, staging);
    spec.stages[2].needs = vec!["deploy-staging".into()];
    let mut k = Kit::new(&spec);
    let full = [
        ("build", exit(0)),
        ("deploy-staging", exit(0)),
        ("acceptance", with_accuracy(0.95)),
        ("deploy", exit(0)),
    ];
    let first = k.start_run("ml");
    for (s, r) in full.clone() {
        k.run_stage(&first, s, "a1", r);
    }
    k.run_stage(&first, "monitor", "a1", exit(0));
    let second = k.start_run("ml");
    for (s, r) in full {
        k.run_stage(&second, s, "a1", r);
    }
    k.run_stage(&second, "monitor", "a1", exit(1));
    let rollbacks: Vec<&Run> = k
        .state
        .runs
        .values()
        .filter(|r| r.kind == RunKind::Rollback)
        .collect();
    assert_eq!(rollbacks.len(), 1, "{rollbacks:?}");
    assert_eq!(
        rollbacks[0]
            .rollback
            .as_ref()
            .map(|p| p.environment.as_str()),
        Some("production")
    );
}
