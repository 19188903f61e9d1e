//! A real network cut: three coordinators in their own network namespaces; the leader's
//! links to the others are blackholed. The isolated node commits nothing and says so; the
//! majority elects and goes on; after healing every node reaches the same state digest.

use std::time::Duration;

use cd_common::certs::Role;
use cd_proto::v1 as pb;
use cd_proto::v1::cluster_service_client::ClusterServiceClient;
use cd_proto::v1::control_service_client::ControlServiceClient;
use cd_tests::netns::NetNs;
use cd_tests::*;
use tonic::transport::{Channel, Endpoint};

async fn channel(url: &str, tls: &cd_common::tls::TlsPaths) -> anyhow::Result<Channel> {
    let cfg = cd_common::tls::client_tls(tls, "localhost")?;
    Ok(Endpoint::from_shared(url.to_string())?
        .tls_config(cfg)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

async fn status(url: &str, tls: &cd_common::tls::TlsPaths) -> Option<pb::ClusterStatus> {
    let ch = channel(url, tls).await.ok()?;
    Some(
        ClusterServiceClient::new(ch)
            .status(pb::ClusterStatusRequest {})
            .await
            .ok()?
            .into_inner(),
    )
}

fn spec(name: &str) -> pb::ApplyPipelineRequest {
    pb::ApplyPipelineRequest {
        spec_yaml: format!("name: {name}\nstages:\n  - name: a\n    run: 'true'\n"),
        file_name: "p.yaml".into(),
        base_dir: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_network_cut_isolates_the_leader_and_heals() -> anyhow::Result<()> {
    let net = NetNs::create(3)?;
    let tmp = tempfile::Builder::new().prefix("cd-netcut-").tempdir()?;
    let certs = Certs::new(&tmp.path().join("certs"))?;
    let op = certs.operator();
    let urls: Vec<String> = (1..=3)
        .map(|k| format!("https://{}:7400", net.addr(k)))
        .collect();
    let initial: String = urls
        .iter()
        .enumerate()
        .map(|(i, u)| format!("{}={u}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for k in 1..=3 {
        let tls = certs.tls_with_sans(Role::Coordinator, &format!("node-{k}"), &[net.addr(k)]);
        let extra = vec![
            "--node-id".to_string(),
            k.to_string(),
            "--initial-cluster".into(),
            initial.clone(),
        ];
        let (p, url) = spawn_coordinator_via(
            &net.wrapper(k),
            &tmp.path().join(format!("node-{k}")),
            &tls,
            &format!("{}:7400", net.addr(k)),
            &extra,
            &[],
        )?;
        assert_eq!(url, urls[k - 1]);
        procs.push(p);
    }
    let leader = eventually("a leader", Duration::from_secs(30), || async {
        let s = status(&urls[0], &op).await?;
        (s.leader_id != 0).then_some(s.leader_id as usize)
    })
    .await?;
    let others: Vec<usize> = (1..=3).filter(|k| *k != leader).collect();
    for o in &others {
        net.cut(leader, *o)?;
    }

    let new = eventually(
        "the majority to elect a new leader",
        Duration::from_secs(30),
        || async {
            let a = status(&urls[others[0] - 1], &op).await?.leader_id as usize;
            let b = status(&urls[others[1] - 1], &op).await?.leader_id as usize;
            (a == b && a != 0 && a != leader).then_some(a)
        },
    )
    .await?;
    let mut majority = ControlServiceClient::new(channel(&urls[new - 1], &op).await?);
    majority.apply_pipeline(spec("during-cut")).await?;

    let mut minority = ControlServiceClient::new(channel(&urls[leader - 1], &op).await?);
    let refused = eventually(
        "the isolated node to refuse writes",
        Duration::from_secs(30),
        || {
            let mut m = minority.clone();
            async move {
                match m.apply_pipeline(spec("minority")).await {
                    Err(s) if s.code() == tonic::Code::Unavailable => Some(s),
                    _ => None,
                }
            }
        },
    )
    .await?;
    assert!(
        refused.message().contains("leader"),
        "{}",
        refused.message()
    );
    let seen = cd_tests::cluster::stale_pipeline_names(&mut minority).await?;
    assert!(
        seen.is_empty(),
        "the isolated node committed or learned something: {seen:?}"
    );

    for o in &others {
        net.heal(leader, *o)?;
    }
    let digests = eventually("all nodes to converge", Duration::from_secs(30), || async {
        let mut d = Vec::new();
        for u in &urls {
            let ch = channel(u, &op).await.ok()?;
            let r = ClusterServiceClient::new(ch)
                .state_digest(pb::StateDigestRequest {})
                .await
                .ok()?
                .into_inner();
            d.push((r.applied, r.digest));
        }
        d.iter().all(|x| *x == d[0]).then_some(d)
    })
    .await?;
    assert!(!digests[0].1.is_empty());
    let names = cd_tests::cluster::stale_pipeline_names(&mut minority).await?;
    assert_eq!(names, vec!["during-cut".to_string()]);
    drop(procs);
    Ok(())
}
