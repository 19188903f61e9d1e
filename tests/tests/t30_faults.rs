//! Faults with real processes: an agent killed mid-stage has its stage requeued to another
//! agent after the lease; a coordinator killed mid-run and restarted on its data dir finishes
//! the run with no lost or duplicated log line or result.

use std::time::Duration;

use cd_tests::*;

const FLAKY: &str = r#"
name: flaky
stages:
  - name: work
    run: |
      echo "attempt $CD_ATTEMPT on $CD_AGENT"
      if [ "$CD_ATTEMPT" = 1 ]; then
        sleep 300 & echo $! >> "$PIDS"
        wait
      fi
      echo finished
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agents_stage_is_requeued_to_another_agent() -> anyhow::Result<()> {
    let mut s = Single::start(
        &["agent-a", "agent-b"],
        &["--lease", "2s"],
        &["--heartbeat", "300ms"],
    )
    .await?;
    let mut c = s.client().await?;
    apply_pipeline(&mut c, FLAKY, s.tmp.path()).await?;
    let pid_file = s.path("pids");
    let id = start_run(&mut c, "flaky", &[("PIDS", &pid_file.to_string_lossy())]).await?;
    let run = s
        .wait_run(&id, Duration::from_secs(30), |r| {
            stage_is(r, "work", StageState::Running)
        })
        .await?;
    let victim = stage(&run, "work").attempts[0].agent.clone();
    let orphan = eventually(
        "the first attempt's sleep to start",
        Duration::from_secs(20),
        || async {
            std::fs::read_to_string(&pid_file)
                .ok()?
                .trim()
                .parse::<i32>()
                .ok()
        },
    )
    .await?;
    s.agents
        .iter_mut()
        .find(|a| a.name == victim)
        .expect("victim agent")
        .proc
        .kill9();

    let run = s.wait_final(&id, Duration::from_secs(60)).await?;
    // The killed agent's orphaned child is ours to clean up.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(orphan),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    let work = stage(&run, "work");
    assert_eq!(work.attempts.len(), 2, "{}", describe(Some(&run)));
    assert!(
        work.attempts[0].end_reason.contains("lease"),
        "{:?}",
        work.attempts[0]
    );
    assert!(
        work.attempts[0].result.is_none(),
        "the lost attempt has no result"
    );
    assert_ne!(work.attempts[1].agent, victim);
    let log = String::from_utf8(logs(&mut c, &id, "work").await?)?;
    assert_eq!(log.matches("finished").count(), 1, "{log}");
    Ok(())
}

const CHATTY: &str = r#"
name: chatty
stages:
  - name: count
    run: |
      i=1
      while [ $i -le 400 ]; do echo "line $i"; i=$((i+1)); sleep 0.01; done
  - name: after
    needs: [count]
    run: echo after-done
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_mid_run_finishes_it_after_restart_without_losing_logs()
-> anyhow::Result<()> {
    let mut s = Single::start(&["agent-1"], &[], &["--heartbeat", "300ms"]).await?;
    let mut c = s.client().await?;
    apply_pipeline(&mut c, CHATTY, s.tmp.path()).await?;
    let id = start_run(&mut c, "chatty", &[]).await?;
    let endpoint = s.coord.endpoint.clone();
    let op = s.op.clone();
    eventually(
        "some log lines to be stored",
        Duration::from_secs(30),
        || {
            let (endpoint, op, id) = (endpoint.clone(), op.clone(), id.clone());
            async move {
                let mut c = client(&endpoint, &op).await.ok()?;
                let text = String::from_utf8(logs(&mut c, &id, "count").await.ok()?).ok()?;
                text.contains("line 30\n").then_some(())
            }
        },
    )
    .await?;
    s.coord.kill9();
    s.coord.restart()?;

    let run = s.wait_final(&id, Duration::from_secs(90)).await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    let count = stage(&run, "count");
    assert_eq!(
        count.attempts.len(),
        1,
        "the stage ran once: {}",
        describe(Some(&run))
    );
    assert!(count.attempts[0].result.is_some());
    assert_eq!(stage(&run, "after").attempts.len(), 1);

    let mut c = s.client().await?;
    let text = String::from_utf8(logs(&mut c, &id, "count").await?)?;
    let expected: String = (1..=400).map(|i| format!("line {i}\n")).collect();
    assert_eq!(text, expected, "logs lost or duplicated across the restart");
    Ok(())
}
