//! The leader killed with SIGKILL again and again while 20+ runs are in flight: every run ends,
//! every stage's outcome is recorded exactly once, every log equals what the stage printed,
//! and a cancel and an approval given before the kills are kept.
//!
//! `CD_FAILOVER_KILLS` sets the number of kills (default 10); the soak in BENCHMARKS.md/README
//! runs more.

use std::time::Duration;

use cd_proto::v1 as pb;
use cd_tests::cluster::Cluster;
use cd_tests::*;

const BUSY: &str = r#"
name: busy
stages:
  - name: one
    run: |
      i=1
      while [ $i -le 60 ]; do echo "$CD_RUN_ID one $i"; i=$((i+1)); sleep 0.02; done
  - name: two
    needs: [one]
    run: |
      i=1
      while [ $i -le 60 ]; do echo "$CD_RUN_ID two $i"; i=$((i+1)); sleep 0.02; done
"#;

const GATED: &str = r#"
name: gated
stages:
  - name: build
    run: echo built
  - name: ship
    needs: [build]
    gate: { approvals: 1 }
    run: echo shipped
"#;

fn expected(run: &str, stage: &str) -> String {
    (1..=60).map(|i| format!("{run} {stage} {i}\n")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_killed_repeatedly_loses_nothing() -> anyhow::Result<()> {
    let kills: usize = std::env::var("CD_FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut c = Cluster::start(
        3,
        &["agent-1", "agent-2"],
        &[],
        &["--heartbeat", "300ms", "--slots", "6"],
    )
    .await?;
    let mut leader = c.leader_control().await?;
    apply_pipeline(&mut leader, BUSY, c.tmp.path()).await?;
    apply_pipeline(&mut leader, GATED, c.tmp.path()).await?;

    // A gated run, approved before the kills.
    let gated = start_run(&mut leader, "gated", &[]).await?;
    wait_run_any(&c.urls(), &c.op, &gated, Duration::from_secs(60), |r| {
        stage_is(r, "ship", StageState::AwaitingApproval)
    })
    .await?;
    leader
        .approve(pb::ApproveRequest {
            run_id: gated.clone(),
            stage: "ship".into(),
            comment: "before the kills".into(),
        })
        .await?;
    // Runs in flight, one of them cancelled before the kills.
    let mut runs = Vec::new();
    for _ in 0..24 {
        runs.push(start_run(&mut leader, "busy", &[]).await?);
    }
    let cancelled = runs.remove(0);
    leader
        .cancel_run(pb::CancelRunRequest {
            run_id: cancelled.clone(),
            reason: "before the kills".into(),
        })
        .await?;

    for k in 0..kills {
        let old = c.leader(Duration::from_secs(30)).await?;
        c.kill9(old);
        let new = c
            .leader(Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("kill {k}: {e}"))?;
        assert_ne!(new, old);
        // A write commits under the new leader before the old one comes back.
        let mut l = c.control(new).await?;
        apply_pipeline(
            &mut l,
            &format!("name: marker-{k}\nstages:\n  - name: a\n    run: 'true'\n"),
            c.tmp.path(),
        )
        .await?;
        c.spawn(old)?;
        // The restarted node must be back in the quorum before the next kill.
        let mark = c
            .status(new)
            .await?
            .nodes
            .iter()
            .find(|n| n.id == new)
            .map_or(0, |n| n.commit);
        eventually(
            &format!("node {old} to catch up after kill {k}"),
            Duration::from_secs(30),
            || async {
                let s = c.status(old).await.ok()?;
                (s.nodes.iter().find(|n| n.id == old)?.applied >= mark).then_some(())
            },
        )
        .await?;
    }

    let mut leader = c.leader_control().await?;
    for id in &runs {
        let run = c.wait_final(id, Duration::from_secs(180)).await?;
        assert_eq!(
            run.state,
            RunState::Succeeded as i32,
            "{}",
            describe(Some(&run))
        );
        for st in &run.stages {
            let with_result: Vec<&pb::Attempt> =
                st.attempts.iter().filter(|a| a.result.is_some()).collect();
            assert_eq!(
                with_result.len(),
                1,
                "{id}/{}: outcome recorded exactly once: {}",
                st.name,
                describe(Some(&run))
            );
            let ok = with_result[0];
            let mut s = leader
                .follow_logs(pb::FollowLogsRequest {
                    run_id: id.clone(),
                    stage: st.name.clone(),
                    attempt: ok.number,
                    follow: false,
                })
                .await?
                .into_inner();
            let mut text = Vec::new();
            while let Some(chunk) = s.message().await? {
                text.extend_from_slice(&chunk.data);
            }
            assert_eq!(
                String::from_utf8(text)?,
                expected(id, &st.name),
                "{id}/{} log",
                st.name
            );
        }
    }
    let run = c.wait_final(&cancelled, Duration::from_secs(30)).await?;
    assert_eq!(
        run.state,
        RunState::Cancelled as i32,
        "the cancel survived: {}",
        describe(Some(&run))
    );
    let run = c.wait_final(&gated, Duration::from_secs(60)).await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "the approval survived: {}",
        describe(Some(&run))
    );
    assert_eq!(stage(&run, "ship").approvals.len(), 1);
    c.wait_converged(Duration::from_secs(30)).await?;
    Ok(())
}
