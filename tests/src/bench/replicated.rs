//! The single-node figures again on a 3-node cluster (each measurement on a fresh cluster),
//! with every client talking to the leader, plus throughput under many concurrent clients.
//! A command now commits once the leader and one follower hold it durably: the leader's own
//! fdatasync and a follower's append + fdatasync + acknowledgement, over mutual TLS.

use anyhow::{Result, ensure};
use cd_proto::v1::control_service_client::ControlServiceClient;

use super::cluster::BenchCluster;
use super::node::{self, BenchEnv};
use super::report::Value;
use super::stats::percentile;
use super::{commit, dispatch, load, logs};

/// cluster commit: sequential `ApplyPipeline` of an unchanged spec through the leader.
pub async fn commit(
    env: &BenchEnv,
    rep: usize,
    warmup: usize,
    samples: usize,
) -> Result<Vec<Value>> {
    let cluster = BenchCluster::start(env, &format!("cluster-commit-{rep}")).await?;
    let (leader, _) = cluster.leader_first().await?;
    let mut c = cluster.control(leader).await?;
    let cpu_before = cluster.cpu_secs()?;
    let lat = commit::sequential(&mut c, warmup, samples).await?;
    let cpu = cluster.cpu_secs()? - cpu_before;
    cluster.discard();
    Ok(vec![
        Value::new("cluster commit p50", "µs", percentile(&lat, 50.0)),
        Value::new("cluster commit p99", "µs", percentile(&lat, 99.0)),
        Value::new(
            "cluster commit: CPU per commit, 3 nodes together",
            "µs",
            cpu * 1e6 / (1 + warmup + samples) as f64,
        ),
    ])
}

/// cluster throughput: `load.clients` concurrent callers re-applying the unchanged spec
/// through the leader over `load.connections` connections.
pub async fn throughput(env: &BenchEnv, rep: usize, load: load::Load) -> Result<Vec<Value>> {
    let cluster = BenchCluster::start(env, &format!("cluster-throughput-{rep}")).await?;
    let (leader, _) = cluster.leader_first().await?;
    let mut c = cluster.control(leader).await?;
    ensure!(
        commit::apply(&mut c).await?,
        "the first apply of bench-commit stored no version"
    );
    let url = cluster.url(leader);
    let op = env.op.clone();
    let cpu_before = cluster.cpu_secs()?;
    let r = load::run(
        load,
        move |_| {
            let (url, op) = (url.clone(), op.clone());
            async move { Ok(ControlServiceClient::new(node::channel(&url, &op).await?)) }
        },
        |mut c: ControlServiceClient<_>| async move {
            let changed = c
                .apply_pipeline(commit::request())
                .await?
                .into_inner()
                .changed;
            ensure!(
                !changed,
                "re-applying an unchanged spec stored a new version"
            );
            Ok(())
        },
    )
    .await?;
    let cpu = cluster.cpu_secs()? - cpu_before;
    cluster.discard();
    Ok(vec![
        Value::new("cluster throughput: commits/s", "commits/s", r.per_sec),
        Value::new("cluster throughput: latency p50 under load", "µs", r.p50),
        Value::new("cluster throughput: latency p99 under load", "µs", r.p99),
        Value::new(
            "cluster throughput: CPU per commit, 3 nodes together",
            "µs",
            cpu * 1e6 / r.calls as f64,
        ),
    ])
}

/// cluster dispatch: the single-node dispatch measurement against the leader.
pub async fn dispatch(
    env: &BenchEnv,
    rep: usize,
    warmup: usize,
    samples: usize,
) -> Result<Vec<Value>> {
    let cluster = BenchCluster::start(env, &format!("cluster-dispatch-{rep}")).await?;
    let (leader, _) = cluster.leader_first().await?;
    let values = dispatch::measure(
        env,
        &cluster.url(leader),
        &cluster.dir,
        "cluster ",
        warmup,
        samples,
    )
    .await?;
    cluster.discard();
    Ok(values)
}

/// cluster logs: one real `cd-agent` given all three URLs; the run is started on the leader.
pub async fn logs(env: &BenchEnv, rep: usize, lines: u64) -> Result<Vec<Value>> {
    let mut cluster = BenchCluster::start(env, &format!("cluster-logs-{rep}")).await?;
    cluster.start_agent(env, logs::AGENT).await?;
    let (_, urls) = cluster.leader_first().await?;
    let dir = cluster.dir.clone();
    let values = logs::measure(env, &urls, &dir, "cluster ", lines).await?;
    cluster.discard();
    Ok(values)
}
