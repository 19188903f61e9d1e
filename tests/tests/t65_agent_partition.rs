//! An agent cut off from the cluster while running a stage (frozen with SIGSTOP: it can
//! neither heartbeat nor report): the stage is reassigned after the lease, and when the agent
//! comes back its late log and result are refused by fencing.

use std::time::Duration;

use cd_proto::v1 as pb;
use cd_tests::cluster::Cluster;
use cd_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const SLOW_FIRST: &str = r#"
name: fenced
stages:
  - name: work
    run: |
      echo "attempt $CD_ATTEMPT on $CD_AGENT"
      if [ "$CD_ATTEMPT" = 1 ]; then echo $$ > "$MARK"; sleep 3; fi
      echo "done $CD_ATTEMPT"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_agents_late_result_is_refused() -> anyhow::Result<()> {
    let c = Cluster::start(
        3,
        &["agent-a", "agent-b"],
        &["--lease", "2s"],
        &["--heartbeat", "300ms"],
    )
    .await?;
    let mut leader = c.leader_control().await?;
    apply_pipeline(&mut leader, SLOW_FIRST, c.tmp.path()).await?;
    let mark = c.path("mark");
    let id = start_run(&mut leader, "fenced", &[("MARK", &mark.to_string_lossy())]).await?;
    let run = wait_run_any(&c.urls(), &c.op, &id, Duration::from_secs(30), |r| {
        stage_is(r, "work", StageState::Running)
    })
    .await?;
    let holder = stage(&run, "work").attempts[0].agent.clone();
    eventually(
        "the first attempt to start its sleep",
        Duration::from_secs(20),
        || async { mark.exists().then_some(()) },
    )
    .await?;
    let agent = c
        .agents
        .iter()
        .find(|a| a.name == holder)
        .expect("holder agent");
    let pid = Pid::from_raw(agent.proc.pid());
    kill(pid, Signal::SIGSTOP)?;

    // The lease lapses; another agent runs attempt 2 to the end.
    let run = c.wait_final(&id, Duration::from_secs(60)).await;
    kill(pid, Signal::SIGCONT)?;
    let run = run?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    let work = stage(&run, "work");
    assert_eq!(work.attempts.len(), 2);
    assert!(
        work.attempts[0].end_reason.contains("lease"),
        "{:?}",
        work.attempts[0]
    );
    assert_ne!(work.attempts[1].agent, holder);

    // Back from the partition, the old holder's claims are refused and change nothing.
    eventually(
        "the returning agent to be told its attempt is stale",
        Duration::from_secs(30),
        || async {
            let log = agent.proc.log_text();
            (log.contains("refused the result as stale")
                || log.contains("reports the attempt stale"))
            .then_some(())
        },
    )
    .await?;
    let mut leader = c.leader_control().await?;
    let after = leader
        .get_run(pb::GetRunRequest { run_id: id.clone() })
        .await?
        .into_inner();
    assert_eq!(after, run, "a late claim changed the record");
    let first = logs_of_attempt(&mut leader, &id, "work", 1).await?;
    assert!(
        !first.contains("done 1"),
        "a late log line of the fenced attempt was stored: {first}"
    );
    Ok(())
}

async fn logs_of_attempt(
    c: &mut cd_proto::v1::control_service_client::ControlServiceClient<tonic::transport::Channel>,
    run: &str,
    stage: &str,
    attempt: u32,
) -> anyhow::Result<String> {
    let mut s = c
        .follow_logs(pb::FollowLogsRequest {
            run_id: run.into(),
            stage: stage.into(),
            attempt,
            follow: false,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.message().await? {
        out.extend_from_slice(&chunk.data);
    }
    Ok(String::from_utf8(out)?)
}
