//! A replicated cluster of real coordinator processes: the example runs to production on 3 and
//! 5 nodes, followers point writes at the leader, a partitioned minority commits nothing, and
//! nodes converge to the same state digest after healing.

use std::time::Duration;

use cd_proto::v1 as pb;
use cd_tests::cluster::Cluster;
use cd_tests::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

async fn example_runs_on(nodes: u64) -> anyhow::Result<()> {
    let c = Cluster::start(
        nodes,
        &["agent-1", "agent-2"],
        &[],
        &["--heartbeat", "500ms"],
    )
    .await?;
    let apply = c
        .cdctl()
        .args(["pipeline", "apply", "-f"])
        .arg(workspace_root().join("examples/ml-model/pipeline.yaml"))
        .output()?;
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );
    let store = c.path("ml-store");
    let start = c
        .cdctl()
        .args(["run", "start", "ml-model", "--param"])
        .arg(format!("ML_STORE={}", store.display()))
        .output()?;
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    let id = String::from_utf8(start.stdout)?.trim().to_string();
    let run = c.wait_final(&id, RUN_TIMEOUT).await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    assert!(store.join("production/model.txt").exists());
    // Every node holds the same record.
    c.wait_converged(Duration::from_secs(30)).await?;
    for n in &c.nodes {
        let mut client = c.control(n.id).await?;
        let mut req = tonic::Request::new(pb::GetRunRequest { run_id: id.clone() });
        req.metadata_mut().insert("cd-stale", "true".parse()?);
        let r = client.get_run(req).await?.into_inner();
        assert_eq!(
            r.state,
            RunState::Succeeded as i32,
            "node {} disagrees",
            n.id
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_run_the_example_to_production() -> anyhow::Result<()> {
    example_runs_on(3).await
}

#[tokio::test(flavor = "multi_thread")]
async fn five_nodes_run_the_example_to_production() -> anyhow::Result<()> {
    example_runs_on(5).await
}

#[tokio::test(flavor = "multi_thread")]
async fn followers_redirect_writes_and_reads_to_the_leader() -> anyhow::Result<()> {
    let c = Cluster::start(3, &[], &[], &[]).await?;
    let leader = c.leader(Duration::from_secs(30)).await?;
    let follower = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader)
        .expect("a follower");
    let mut f = c.control(follower).await?;
    let err = f
        .list_pipelines(pb::ListPipelinesRequest {})
        .await
        .expect_err("a follower refuses linearizable reads");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let hint = err
        .metadata()
        .get("cd-leader")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(hint, c.node(leader).url);
    // A stale read is served by the follower itself.
    let mut req = tonic::Request::new(pb::ListPipelinesRequest {});
    req.metadata_mut().insert("cd-stale", "true".parse()?);
    assert!(f.list_pipelines(req).await.is_ok());
    // cdctl pointed at the follower first still applies through the leader.
    let out = cd_tests::cdctl(
        &format!("{},{}", c.node(follower).url, c.node(leader).url),
        &c.op,
    )
    .args(["pipeline", "apply", "-f"])
    .arg(workspace_root().join("examples/ml-model/pipeline.yaml"))
    .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_minority_commits_nothing_and_everyone_converges_after_healing()
-> anyhow::Result<()> {
    let c = Cluster::start(3, &[], &[], &[]).await?;
    let old = c.leader(Duration::from_secs(30)).await?;
    let others: Vec<u64> = c
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| *id != old)
        .collect();
    // Cut the leader off in both directions.
    c.set_faults(old, &others).await?;
    for id in &others {
        c.set_faults(*id, &[old]).await?;
    }
    // The majority elects a new leader and keeps committing.
    let new = eventually(
        "the majority to elect a new leader",
        Duration::from_secs(30),
        || async {
            let mut seen = Vec::new();
            for id in &others {
                seen.push(c.status(*id).await.ok()?.leader_id);
            }
            let l = seen[0];
            (l != 0 && l != old && seen.iter().all(|x| *x == l)).then_some(l)
        },
    )
    .await?;
    let mut leader = c.control(new).await?;
    apply_pipeline(
        &mut leader,
        "name: p\nstages:\n  - name: a\n    run: 'true'\n",
        c.tmp.path(),
    )
    .await?;
    // The old leader steps down (check-quorum) and refuses writes clearly.
    let mut minority = c.control(old).await?;
    let refused = eventually(
        "the isolated node to refuse writes",
        Duration::from_secs(30),
        || {
            let mut m = minority.clone();
            async move {
                let r = m
                    .apply_pipeline(pb::ApplyPipelineRequest {
                        spec_yaml: "name: q\nstages:\n  - name: a\n    run: 'true'\n".into(),
                        file_name: "q.yaml".into(),
                        base_dir: String::new(),
                    })
                    .await;
                match r {
                    Err(s) if s.code() == tonic::Code::Unavailable => Some(s),
                    _ => None,
                }
            }
        },
    )
    .await?;
    assert!(
        refused.message().contains("not the leader") || refused.message().contains("leader"),
        "{}",
        refused.message()
    );
    let seen = cd_tests::cluster::stale_pipeline_names(&mut minority).await?;
    assert!(
        seen.iter().all(|n| n != "q"),
        "the minority committed a write"
    );
    assert!(
        seen.iter().all(|n| n != "p"),
        "the cut-off node cannot have seen the majority's write yet"
    );
    // Heal: every node converges on the majority's history.
    for n in &c.nodes {
        c.set_faults(n.id, &[]).await?;
    }
    c.wait_converged(Duration::from_secs(30)).await?;
    let names = cd_tests::cluster::stale_pipeline_names(&mut minority).await?;
    assert_eq!(names, vec!["p".to_string()]);
    let _ = &mut leader;
    Ok(())
}
