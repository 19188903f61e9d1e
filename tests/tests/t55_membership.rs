//! Membership: a wiped follower rejoins by snapshot, a node added with `cluster add` catches up
//! and is promoted to voter, and removing the leader hands leadership over first.

use std::time::Duration;

use cd_proto::v1 as pb;
use cd_tests::cluster::Cluster;
use cd_tests::*;

async fn write_pipelines(c: &Cluster, n: usize) -> anyhow::Result<()> {
    let mut leader = c.leader_control().await?;
    for i in 0..n {
        apply_pipeline(
            &mut leader,
            &format!("name: p{i}\nstages:\n  - name: a\n    run: 'echo {i}'\n"),
            c.tmp.path(),
        )
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_follower_rejoins_by_snapshot() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, &[], &["--snapshot-every", "20"], &[]).await?;
    let leader = c.leader(Duration::from_secs(30)).await?;
    let victim = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader)
        .expect("a follower");
    c.wipe(victim)?;
    // Enough entries that the leader compacts past everything the wiped node could have.
    write_pipelines(&c, 60).await?;
    c.spawn(victim)?;
    let digest = match c.wait_converged(Duration::from_secs(20)).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("VICTIM {victim}:\n{}", c.log(victim));
            eprintln!("LEADER {leader}:\n{}", c.log(leader));
            return Err(e);
        }
    };
    assert!(!digest.is_empty());
    assert!(
        c.log(victim).contains("installed snapshot"),
        "the wiped node caught up by snapshot"
    );
    let mut stale = tonic::Request::new(pb::ListPipelinesRequest {});
    stale.metadata_mut().insert("cd-stale", "true".parse()?);
    let n = c
        .control(victim)
        .await?
        .list_pipelines(stale)
        .await?
        .into_inner()
        .pipelines
        .len();
    assert_eq!(n, 60);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_added_node_catches_up_and_becomes_a_voter() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, &[], &["--snapshot-every", "20"], &[]).await?;
    write_pipelines(&c, 30).await?;
    let url = c.add_joining_node(4)?;
    let leader = c.leader(Duration::from_secs(30)).await?;
    c.admin(leader)
        .await?
        .add_node(pb::AddNodeRequest {
            id: 4,
            address: url.clone(),
            ..Default::default()
        })
        .await?;
    c.spawn(4)?;
    let promoted = eventually(
        "node 4 to be promoted to voter",
        Duration::from_secs(20),
        || async {
            let s = c
                .status(c.leader(Duration::from_secs(10)).await.ok()?)
                .await
                .ok()?;
            s.nodes
                .iter()
                .any(|n| n.id == 4 && n.voter && n.address == url)
                .then_some(())
        },
    )
    .await;
    if promoted.is_err() {
        eprintln!("NODE4:\n{}", c.log(4));
        eprintln!("LEADER:\n{}", c.log(leader));
        eprintln!("STATUS: {:?}", c.status(leader).await);
    }
    promoted?;
    c.wait_converged(Duration::from_secs(60)).await?;
    // The new member takes part in commits: writes still succeed and reach it.
    write_pipelines(&c, 5).await?;
    c.wait_converged(Duration::from_secs(60)).await?;
    // Adding it again is refused clearly.
    let again = c
        .admin(leader)
        .await?
        .add_node(pb::AddNodeRequest {
            id: 4,
            address: url,
            ..Default::default()
        })
        .await;
    assert_eq!(
        again.map(|_| ()).expect_err("duplicate add").code(),
        tonic::Code::AlreadyExists
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_the_leader_hands_leadership_over_first() -> anyhow::Result<()> {
    let c = Cluster::start(3, &[], &[], &[]).await?;
    let old = c.leader(Duration::from_secs(30)).await?;
    let answer = c
        .admin(old)
        .await?
        .remove_node(pb::RemoveNodeRequest { id: old })
        .await;
    let status = answer.expect_err("the leader sends the caller to its successor");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let hint = status
        .metadata()
        .get("cd-leader")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let new = c
        .nodes
        .iter()
        .find(|n| n.url == hint)
        .map(|n| n.id)
        .expect("hint names a member");
    assert_ne!(new, old);
    let s = c
        .admin(new)
        .await?
        .remove_node(pb::RemoveNodeRequest { id: old })
        .await?
        .into_inner();
    assert!(s.nodes.iter().all(|n| n.id != old), "{s:?}");
    // The remaining two commit on their own, and the removed node does not lead.
    let mut leader = c.control(new).await?;
    apply_pipeline(
        &mut leader,
        "name: after\nstages:\n  - name: a\n    run: 'true'\n",
        c.tmp.path(),
    )
    .await?;
    let removed = c.status(old).await?;
    let me = removed
        .nodes
        .iter()
        .find(|n| n.id == old)
        .map(|n| n.role.clone())
        .unwrap_or_default();
    assert_ne!(me, "leader");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cdctl_shows_the_cluster_and_moves_leadership() -> anyhow::Result<()> {
    let c = Cluster::start(3, &[], &[], &[]).await?;
    let old = c.leader(Duration::from_secs(30)).await?;
    let out = c
        .cdctl()
        .args(["-o", "json", "cluster", "status"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let nodes = status
        .as_array()
        .or_else(|| status["nodes"].as_array())
        .expect("a list of nodes")
        .clone();
    assert_eq!(nodes.len(), 3, "{status}");
    let leaders: Vec<u64> = nodes
        .iter()
        .filter(|n| n["role"] == "leader")
        .filter_map(|n| n["id"].as_u64())
        .collect();
    assert_eq!(leaders, vec![old], "{status}");

    let target = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != old)
        .expect("a follower");
    let moved = c
        .cdctl()
        .args(["cluster", "transfer-leader", &target.to_string()])
        .output()?;
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    assert_eq!(c.leader(Duration::from_secs(30)).await?, target);

    let digest = c.cdctl().args(["cluster", "digest"]).output()?;
    assert!(
        digest.status.success(),
        "{}",
        String::from_utf8_lossy(&digest.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_peer_service_accepts_only_coordinator_certificates() -> anyhow::Result<()> {
    use cd_proto::raft_v1::MessageBatch;
    use cd_proto::raft_v1::raft_peer_client::RaftPeerClient;
    let c = Cluster::start(3, &[], &[], &[]).await?;
    let leader = c.leader(Duration::from_secs(30)).await?;
    let cfg = cd_common::tls::client_tls(&c.op, "localhost")?;
    let ch = tonic::transport::Endpoint::from_shared(c.node(leader).url.clone())?
        .tls_config(cfg)?
        .connect()
        .await?;
    let err = RaftPeerClient::new(ch)
        .send(MessageBatch {
            from: 9,
            messages: vec![],
        })
        .await
        .expect_err("an operator may not speak Raft");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("coordinator"), "{}", err.message());
    Ok(())
}
