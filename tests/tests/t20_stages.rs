//! Stage control on a real agent: cancel kills the stage's whole process tree and reports it
//! as cancelled; a stage timeout fails the stage and stops its processes.

use std::path::Path;
use std::time::Duration;

use cd_tests::*;

fn pids(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

async fn all_gone(pids: &[i32]) -> anyhow::Result<()> {
    eventually(
        &format!("processes {pids:?} to exit"),
        Duration::from_secs(20),
        || async { pids.iter().all(|p| !alive(*p)).then_some(()) },
    )
    .await
}

const TREE: &str = r#"
name: tree
stages:
  - name: sleepy
    run: |
      sleep 300 & echo $! >> "$PIDS"
      sh -c 'sleep 300 & echo $! >> "$PIDS"; wait' &
      echo $! >> "$PIDS"
      echo started
      wait
"#;

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_the_whole_process_tree() -> anyhow::Result<()> {
    let s = Single::start(&["agent-1"], &[], &["--kill-grace", "2s"]).await?;
    let mut c = s.client().await?;
    apply_pipeline(&mut c, TREE, s.tmp.path()).await?;
    let pid_file = s.path("pids");
    let id = start_run(&mut c, "tree", &[("PIDS", &pid_file.to_string_lossy())]).await?;
    s.wait_run(&id, Duration::from_secs(30), |r| {
        stage_is(r, "sleepy", StageState::Running)
    })
    .await?;
    let started = eventually(
        "three processes to start",
        Duration::from_secs(20),
        || async {
            let p = pids(&pid_file);
            (p.len() == 3).then_some(p)
        },
    )
    .await?;
    assert!(started.iter().all(|p| alive(*p)));

    let out = s
        .cdctl()
        .args(["run", "cancel", &id, "--reason", "test"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = s.wait_final(&id, Duration::from_secs(30)).await?;
    assert_eq!(
        run.state,
        RunState::Cancelled as i32,
        "{}",
        describe(Some(&run))
    );
    assert_eq!(stage(&run, "sleepy").state, StageState::Cancelled as i32);
    assert!(stage(&run, "sleepy").reason.contains("test"));
    all_gone(&started).await
}

const SLOW: &str = r#"
name: slow
stages:
  - name: slow
    timeout: 1s
    run: |
      echo going to sleep
      sleep 300 & echo $! >> "$PIDS"
      wait
  - name: never
    needs: [slow]
    run: echo never
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_timeout_fails_the_stage_and_stops_it() -> anyhow::Result<()> {
    let s = Single::start(&["agent-1"], &[], &["--kill-grace", "1s"]).await?;
    let mut c = s.client().await?;
    apply_pipeline(&mut c, SLOW, s.tmp.path()).await?;
    let pid_file = s.path("pids");
    let id = start_run(&mut c, "slow", &[("PIDS", &pid_file.to_string_lossy())]).await?;
    let run = s.wait_final(&id, Duration::from_secs(30)).await?;
    assert_eq!(
        run.state,
        RunState::Failed as i32,
        "{}",
        describe(Some(&run))
    );
    let slow = stage(&run, "slow");
    assert_eq!(slow.state, StageState::Failed as i32);
    assert!(
        slow.reason.contains("timed out after 1s"),
        "{}",
        slow.reason
    );
    assert_eq!(stage(&run, "never").state, StageState::Skipped as i32);
    let started = pids(&pid_file);
    assert_eq!(started.len(), 1, "the stage started its sleep");
    all_gone(&started).await?;
    let log = String::from_utf8(logs(&mut c, &id, "slow").await?)?;
    assert!(log.contains("going to sleep"), "{log}");
    Ok(())
}
