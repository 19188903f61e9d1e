//! Concurrency over real processes: runs racing for production deploy one after the other
//! (the deploy script itself fails if another deploy holds the environment), a newer run
//! waiting for production supersedes an older waiting one, and `concurrency: 1` queues runs.

use std::time::Duration;

use cd_proto::v1 as pb;
use cd_tests::*;

/// build -> deploy (production). The deploy holds a directory as a real mutex for a while
/// and fails if it is already held: two deploys at once would fail a run.
fn pipeline(lock_dir: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
name: web
{extra}
env: {{ LOCK: "{}" }}
stages:
  - name: build
    run: echo built
  - name: deploy
    needs: [build]
    environment: production
    run: |
      mkdir "$LOCK" || {{ echo "another deploy holds production"; exit 1; }}
      sleep 1.5
      rmdir "$LOCK"
"#,
        lock_dir.join("production.lock").display()
    )
}

async fn start_runs(s: &Single, n: usize) -> anyhow::Result<Vec<String>> {
    let mut c = s.client().await?;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(start_run(&mut c, "web", &[]).await?);
    }
    Ok(ids)
}

/// Waits until some run's deploy stage waits for production, and returns that run.
async fn a_run_waits_for_production(s: &Single) -> anyhow::Result<String> {
    let c = s.client().await?;
    eventually(
        "a deploy waiting for production",
        Duration::from_secs(20),
        || {
            let mut c = c.clone();
            async move {
                list_runs(&mut c, "web")
                    .await
                    .ok()?
                    .into_iter()
                    .find(|r| stage(r, "deploy").waiting_for == "production")
                    .map(|r| r.id)
            }
        },
    )
    .await
}

/// (assigned, finished) of each run's deploy, sorted.
fn deploy_windows(runs: &[pb::Run]) -> Vec<(i64, i64)> {
    let mut w: Vec<(i64, i64)> = runs
        .iter()
        .flat_map(|r| stage(r, "deploy").attempts.iter())
        .map(|a| (a.assigned_ms, a.finished_ms))
        .collect();
    w.sort();
    w
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_racing_for_production_deploy_one_after_the_other() -> anyhow::Result<()> {
    let s = Single::start(&["agent-1"], &[], &["--slots", "4"]).await?;
    apply_pipeline(
        &mut s.client().await?,
        &pipeline(s.tmp.path(), ""),
        s.tmp.path(),
    )
    .await?;
    let ids = start_runs(&s, 2).await?;
    let waiting = a_run_waits_for_production(&s).await?;
    let mut runs = Vec::new();
    for id in &ids {
        let r = s.wait_final(id, Duration::from_secs(30)).await?;
        assert_eq!(
            r.state,
            RunState::Succeeded as i32,
            "{}",
            describe(Some(&r))
        );
        runs.push(r);
    }
    let w = deploy_windows(&runs);
    assert_eq!(w.len(), 2, "one deploy attempt each");
    assert!(w[0].1 <= w[1].0, "deploys overlapped: {w:?}");
    // The run that waited is shown as such while it waits, and deployed second.
    let second = runs.iter().find(|r| r.id == waiting).expect("waiting run");
    assert_eq!(stage(second, "deploy").attempts[0].assigned_ms, w[1].0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_run_waiting_for_production_supersedes_an_older_one() -> anyhow::Result<()> {
    let s = Single::start(&["agent-1"], &[], &["--slots", "4"]).await?;
    apply_pipeline(
        &mut s.client().await?,
        &pipeline(s.tmp.path(), "on_new_run: supersede"),
        s.tmp.path(),
    )
    .await?;
    let ids = start_runs(&s, 3).await?;
    let mut runs = Vec::new();
    for id in &ids {
        runs.push(s.wait_final(id, Duration::from_secs(30)).await?);
    }
    let superseded: Vec<&pb::Run> = runs
        .iter()
        .filter(|r| !r.superseded_by.is_empty())
        .collect();
    assert_eq!(superseded.len(), 1, "{runs:#?}");
    let old = superseded[0];
    assert_eq!(old.state, RunState::Cancelled as i32);
    assert_eq!(old.reason, format!("superseded by {}", old.superseded_by));
    let newer = runs
        .iter()
        .find(|r| r.id == old.superseded_by)
        .expect("superseding run");
    let seq = |id: &str| id.rsplit('-').next().and_then(|n| n.parse::<u32>().ok());
    assert!(
        seq(&newer.id) > seq(&old.id),
        "an older run never supersedes a newer one"
    );
    assert!(
        stage(old, "deploy").attempts.is_empty(),
        "it never deployed"
    );
    let done: Vec<pb::Run> = runs
        .iter()
        .filter(|r| r.superseded_by.is_empty())
        .cloned()
        .collect();
    for r in &done {
        assert_eq!(r.state, RunState::Succeeded as i32, "{}", describe(Some(r)));
    }
    let w = deploy_windows(&done);
    assert!(w[0].1 <= w[1].0, "deploys overlapped: {w:?}");
    // cdctl shows it.
    let out = s.cdctl().args(["run", "show", &old.id]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("superseded"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_beyond_concurrency_wait_queued_and_run_in_order() -> anyhow::Result<()> {
    let s = Single::start(&["agent-1"], &[], &["--slots", "4"]).await?;
    apply_pipeline(
        &mut s.client().await?,
        &pipeline(s.tmp.path(), "concurrency: 1"),
        s.tmp.path(),
    )
    .await?;
    let ids = start_runs(&s, 2).await?;
    let second = s
        .client()
        .await?
        .get_run(pb::GetRunRequest {
            run_id: ids[1].clone(),
        })
        .await?
        .into_inner();
    assert!(second.queued, "{second:?}");
    assert!(
        second.reason.starts_with("queued: concurrency 1"),
        "{}",
        second.reason
    );
    let out = s.cdctl().args(["run", "list"]).output()?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued"));
    let first = s.wait_final(&ids[0], Duration::from_secs(30)).await?;
    let second = s.wait_final(&ids[1], Duration::from_secs(30)).await?;
    for r in [&first, &second] {
        assert_eq!(r.state, RunState::Succeeded as i32, "{}", describe(Some(r)));
    }
    let build2 = &stage(&second, "build").attempts[0];
    assert!(
        build2.assigned_ms >= first.finished_ms,
        "the second started before the first ended"
    );
    Ok(())
}
