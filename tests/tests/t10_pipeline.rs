//! End to end through real binaries: the ml-model example reaches production through its
//! gate, a worse model is stopped there with the reason, approvals wait for `cdctl approve`,
//! and `cdctl rollback` restores the previous release.

use std::time::Duration;

use cd_proto::v1 as pb;
use cd_tests::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn example(file: &str) -> std::path::PathBuf {
    workspace_root().join("examples/ml-model").join(file)
}

fn apply_with_cdctl(s: &Single, file: &str) {
    let out = s
        .cdctl()
        .args(["pipeline", "apply", "-f"])
        .arg(example(file))
        .output()
        .expect("cdctl runs");
    assert!(
        out.status.success(),
        "cdctl pipeline apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cdctl_ok(s: &Single, args: &[&str]) -> String {
    let out = s.cdctl().args(args).output().expect("cdctl runs");
    assert!(
        out.status.success(),
        "cdctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn example_reaches_production_and_a_worse_model_is_stopped_at_the_gate() -> anyhow::Result<()>
{
    let s = Single::start(&["agent-1"], &[], &[]).await?;
    apply_with_cdctl(&s, "pipeline.yaml");
    let store = s.path("ml-store");
    let store = store.to_string_lossy();
    let mut c = s.client().await?;

    let good = start_run(&mut c, "ml-model", &[("ML_STORE", &store)]).await?;
    let run = s.wait_final(&good, RUN_TIMEOUT).await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    for st in &run.stages {
        assert_eq!(
            st.state,
            StageState::Succeeded as i32,
            "{}",
            describe(Some(&run))
        );
    }
    let gate = stage(&run, "deploy-production")
        .gate
        .clone()
        .expect("gate decision recorded");
    assert_eq!(gate.outcome, "pass");
    assert!(
        gate.reasons.iter().any(|r| r.starts_with("accuracy")),
        "{gate:?}"
    );
    let train_log = String::from_utf8(logs(&mut c, &good, "build").await?)?;
    assert!(train_log.contains("epoch"), "build log: {train_log}");

    let envs = c
        .list_environments(pb::ListEnvironmentsRequest {})
        .await?
        .into_inner()
        .environments;
    let prod = envs
        .iter()
        .find(|e| e.name == "production")
        .and_then(|e| e.current.clone())
        .expect("production deployed");
    assert_eq!(prod.run_id, good);
    let accuracy = *prod
        .metrics
        .get("accuracy")
        .expect("promoted with its accuracy");
    assert!(accuracy >= 0.9, "accuracy {accuracy}");

    let worse = start_run(
        &mut c,
        "ml-model",
        &[("ML_STORE", &store), ("MODEL_VARIANT", "worse")],
    )
    .await?;
    let run = s.wait_final(&worse, RUN_TIMEOUT).await?;
    assert_eq!(
        run.state,
        RunState::Failed as i32,
        "{}",
        describe(Some(&run))
    );
    let deploy = stage(&run, "deploy-production");
    assert_eq!(
        deploy.state,
        StageState::GateFailed as i32,
        "{}",
        describe(Some(&run))
    );
    assert!(
        deploy.reason.contains("accuracy") && deploy.reason.contains("below the floor 0.9"),
        "{}",
        deploy.reason
    );
    assert!(deploy.attempts.is_empty(), "a gated stage never ran");
    assert_eq!(stage(&run, "monitor").state, StageState::Skipped as i32);

    // The CLI shows the same record: the gate's reason, and production unchanged.
    let shown = cdctl_ok(&s, &["run", "show", &worse]);
    assert!(shown.contains("below the floor"), "run show: {shown}");
    let history: serde_json::Value = serde_json::from_str(&cdctl_ok(
        &s,
        &["-o", "json", "env", "history", "production"],
    ))?;
    let list = history
        .as_array()
        .or_else(|| history["deployments"].as_array())
        .expect("a list of deployments");
    assert_eq!(list.len(), 1, "{history}");
    let watch = s.cdctl().args(["run", "watch", &worse]).output()?;
    assert_eq!(
        watch.status.code(),
        Some(1),
        "watch of a failed run exits 1"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approval_gate_waits_for_cdctl_approve() -> anyhow::Result<()> {
    let s = Single::start(&["agent-1"], &[], &[]).await?;
    apply_with_cdctl(&s, "pipeline-approval.yaml");
    let store = s.path("ml-store");
    let start = s
        .cdctl()
        .args(["run", "start", "ml-model-approval", "--param"])
        .arg(format!("ML_STORE={}", store.display()))
        .output()?;
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    let id = String::from_utf8(start.stdout)?.trim().to_string();
    let run = s
        .wait_run(&id, RUN_TIMEOUT, |r| {
            stage_is(r, "deploy-production", StageState::AwaitingApproval)
        })
        .await?;
    let gate = stage(&run, "deploy-production")
        .gate
        .clone()
        .expect("gate decision");
    assert_eq!(gate.outcome, "waiting_approval");
    assert_eq!(run.state, RunState::Running as i32);

    let approved = s
        .cdctl()
        .args([
            "approve",
            &id,
            "deploy-production",
            "--comment",
            "looks good",
        ])
        .output()?;
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    let watch = s.cdctl().args(["run", "watch", &id]).output()?;
    assert_eq!(
        watch.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&watch.stderr)
    );
    let mut c = s.client().await?;
    let run = c
        .get_run(pb::GetRunRequest { run_id: id.clone() })
        .await?
        .into_inner();
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    let approvals = &stage(&run, "deploy-production").approvals;
    assert_eq!(approvals.len(), 1);
    assert!(
        approvals[0].identity.ends_with("/operator/operator"),
        "{:?}",
        approvals[0]
    );

    // Approving again is refused: the stage is no longer waiting.
    let again = s
        .cdctl()
        .args(["approve", &id, "deploy-production"])
        .output()?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not awaiting approval"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cdctl_rollback_restores_the_previous_release() -> anyhow::Result<()> {
    let s = Single::start(&["agent-1"], &[], &[]).await?;
    apply_with_cdctl(&s, "pipeline.yaml");
    let store = s.path("ml-store");
    let store_s = store.to_string_lossy();
    let mut c = s.client().await?;
    let first = start_run(&mut c, "ml-model", &[("ML_STORE", &store_s)]).await?;
    assert_eq!(
        s.wait_final(&first, RUN_TIMEOUT).await?.state,
        RunState::Succeeded as i32
    );
    let second = start_run(&mut c, "ml-model", &[("ML_STORE", &store_s)]).await?;
    assert_eq!(
        s.wait_final(&second, RUN_TIMEOUT).await?.state,
        RunState::Succeeded as i32
    );

    let rb = cdctl_ok(&s, &["rollback", "production", "--reason", "test"])
        .trim()
        .to_string();
    let run = s.wait_final(&rb, RUN_TIMEOUT).await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    assert_eq!(run.kind, "rollback");

    let history = c
        .environment_history(pb::EnvironmentHistoryRequest {
            environment: "production".into(),
        })
        .await?
        .into_inner()
        .deployments;
    let newest = &history[0];
    assert_eq!(newest.kind, "rollback");
    assert_eq!(newest.run_id, rb);
    let restored = history
        .iter()
        .find(|d| d.id == newest.restores)
        .expect("restored deployment");
    assert_eq!(restored.run_id, first);
    let undone = history
        .iter()
        .find(|d| d.run_id == second)
        .expect("second release");
    assert_eq!(undone.status, "rolled_back");
    // The example's own production slot now holds the first run's model again.
    let deployed = std::fs::read_to_string(store.join("production/deployed.txt"))?;
    assert!(deployed.contains(&format!("run={first}")), "{deployed}");
    Ok(())
}
