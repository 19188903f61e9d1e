//! Unit tests of deploy locks, `concurrency` and `on_new_run`, decided in apply.

use cd_common::spec::{OnNewRun, PipelineSpec};

use super::testkit::*;
use super::*;

/// build -> deploy (production) -> check.
fn deploy_spec(concurrency: Option<u32>, on_new_run: OnNewRun) -> PipelineSpec {
    let mut spec = ml_pipeline(0);
    let mut deploy = stage("deploy", &["build"]);
    deploy.environment = Some("production".into());
    spec.name = "web".into();
    spec.stages = vec![stage("build", &[]), deploy, stage("check", &["deploy"])];
    spec.concurrency = concurrency;
    spec.on_new_run = on_new_run;
    spec
}

fn state_of(k: &Kit, run: &str, stage: &str) -> StageState {
    k.state.runs[run].stage(stage).expect("stage").state
}

#[test]
fn two_runs_deploy_to_production_one_after_the_other() {
    let mut k = Kit::new(&deploy_spec(None, OnNewRun::Queue));
    let (r1, r2) = (k.start_run("web"), k.start_run("web"));
    k.run_stage(&r1, "build", "a1", exit(0));
    k.run_stage(&r2, "build", "a2", exit(0));
    assert_eq!(state_of(&k, &r1, "deploy"), StageState::Queued);
    assert_eq!(k.state.env_locks["production"], r1);
    let waiting = k.state.runs[&r2].stage("deploy").expect("stage").clone();
    assert_eq!(waiting.state, StageState::Pending);
    assert_eq!(waiting.waiting_for, "production");
    assert_eq!(
        waiting.reason,
        format!("waiting for environment production (deploying: {r1})")
    );
    // The lock covers the deploying stage and what runs downstream of it.
    k.run_stage(&r1, "deploy", "a1", exit(0));
    assert_eq!(state_of(&k, &r2, "deploy"), StageState::Pending);
    k.run_stage(&r1, "check", "a1", exit(0));
    assert_eq!(k.state.runs[&r1].state, RunState::Succeeded);
    assert_eq!(state_of(&k, &r2, "deploy"), StageState::Queued);
    assert_eq!(k.state.env_locks["production"], r2);
    k.run_stage(&r2, "deploy", "a1", exit(0));
    k.run_stage(&r2, "check", "a1", exit(0));
    assert!(k.state.env_locks.is_empty());
}

#[test]
fn a_failed_deploy_releases_the_lock() {
    let mut k = Kit::new(&deploy_spec(None, OnNewRun::Queue));
    let (r1, r2) = (k.start_run("web"), k.start_run("web"));
    k.run_stage(&r1, "build", "a1", exit(0));
    k.run_stage(&r2, "build", "a2", exit(0));
    k.run_stage(&r1, "deploy", "a1", exit(1));
    assert_eq!(k.state.runs[&r1].state, RunState::Failed);
    assert_eq!(state_of(&k, &r2, "deploy"), StageState::Queued);
}

#[test]
fn a_newer_run_waiting_for_production_supersedes_an_older_waiting_one() {
    let mut k = Kit::new(&deploy_spec(None, OnNewRun::Supersede));
    let (r1, r2, r3) = (k.start_run("web"), k.start_run("web"), k.start_run("web"));
    for r in [&r1, &r2, &r3] {
        k.run_stage(r, "build", "a1", exit(0));
    }
    // r1 deploys; r2 waited, then r3 arrived and superseded it.
    assert_eq!(state_of(&k, &r1, "deploy"), StageState::Queued);
    let old = &k.state.runs[&r2];
    assert_eq!(old.state, RunState::Cancelled);
    assert_eq!(old.reason, format!("superseded by {r3}"));
    assert_eq!(old.superseded_by, r3);
    assert_eq!(state_of(&k, &r3, "deploy"), StageState::Pending);
    // The deploying run is never superseded; r3 goes next.
    k.run_stage(&r1, "deploy", "a1", exit(0));
    k.run_stage(&r1, "check", "a1", exit(0));
    assert_eq!(k.state.runs[&r1].state, RunState::Succeeded);
    assert_eq!(state_of(&k, &r3, "deploy"), StageState::Queued);
}

#[test]
fn runs_beyond_concurrency_wait_queued_and_start_in_order() {
    let mut k = Kit::new(&deploy_spec(Some(1), OnNewRun::Queue));
    let (r1, r2, r3) = (k.start_run("web"), k.start_run("web"), k.start_run("web"));
    assert_eq!(state_of(&k, &r1, "build"), StageState::Queued);
    for r in [&r2, &r3] {
        let run = &k.state.runs[r];
        assert!(run.queued, "{r} should wait");
        assert_eq!(run.state, RunState::Running);
        assert_eq!(
            run.reason,
            format!("queued: concurrency 1 reached (running: {r1})")
        );
        assert_eq!(state_of(&k, r, "build"), StageState::Pending);
    }
    assert!(k.state.queued_stages().iter().all(|(r, _)| r.id == r1));
    for s in ["build", "deploy", "check"] {
        k.run_stage(&r1, s, "a1", exit(0));
    }
    assert!(!k.state.runs[&r2].queued);
    assert_eq!(state_of(&k, &r2, "build"), StageState::Queued);
    assert!(k.state.runs[&r3].queued);
    // Cancelling the running one admits the next.
    k.ok(Kind::CancelRun(command::CancelRun {
        run_id: r2.clone(),
        reason: String::new(),
    }));
    assert_eq!(state_of(&k, &r3, "build"), StageState::Queued);
}

#[test]
fn with_supersede_a_new_queued_run_replaces_the_older_queued_one() {
    let mut k = Kit::new(&deploy_spec(Some(1), OnNewRun::Supersede));
    let (r1, r2, r3) = (k.start_run("web"), k.start_run("web"), k.start_run("web"));
    assert_eq!(k.state.runs[&r2].state, RunState::Cancelled);
    assert_eq!(k.state.runs[&r2].reason, format!("superseded by {r3}"));
    assert_eq!(k.state.runs[&r1].state, RunState::Running);
    assert!(k.state.runs[&r3].queued);
}

#[test]
fn a_snapshot_written_before_these_fields_existed_still_loads() {
    let mut k = Kit::new(&deploy_spec(Some(1), OnNewRun::Supersede));
    let run = k.start_run("web");
    let mut v: serde_json::Value =
        serde_json::from_slice(&k.state.to_snapshot().expect("encodes")).expect("json");
    let state = v["state"].as_object_mut().expect("state");
    state.remove("triggers");
    state.remove("env_locks");
    for r in state["runs"].as_object_mut().expect("runs").values_mut() {
        let r = r.as_object_mut().expect("run");
        r.remove("queued");
        r.remove("superseded_by");
        for s in r["stages"].as_array_mut().expect("stages") {
            s.as_object_mut().expect("stage").remove("waiting_for");
        }
    }
    for p in state["pipelines"]
        .as_object_mut()
        .expect("pipelines")
        .values_mut()
    {
        for ver in p["versions"].as_array_mut().expect("versions") {
            let spec = ver["spec"].as_object_mut().expect("spec");
            for f in ["repository", "trigger", "concurrency", "on_new_run"] {
                spec.remove(f);
            }
        }
    }
    let old = State::from_snapshot(&serde_json::to_vec(&v).expect("encodes")).expect("loads");
    assert_eq!(old.runs[&run].stages.len(), 3);
    assert!(!old.runs[&run].queued);
    assert!(old.env_locks.is_empty() && old.triggers.is_empty());
    let spec = &old.pipelines["web"].versions[0].spec;
    assert_eq!((spec.concurrency, spec.on_new_run), (None, OnNewRun::Queue));
}
