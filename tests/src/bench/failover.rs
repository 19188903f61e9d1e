//! failover: how long writes are unavailable after the leader dies. On a fresh 3-node cluster,
//! per kill: find the leader, check a write through it succeeds, then start the clock and
//! SIGKILL it. A client loop then tries `ApplyPipeline` against the surviving nodes, following
//! the `cd-leader` hint of an UNAVAILABLE answer to the node it names (a hint naming the dead
//! node, a failed connection or a timeout moves on to the next survivor after a short pause).
//! The clock stops when the first write succeeds (it is committed: the reply comes after
//! apply). Then the killed node is restarted on its data dir and the next kill waits until all
//! three report the same applied index and state digest.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cd_proto::v1::control_service_client::ControlServiceClient;
use tonic::transport::{Channel, Endpoint};

use super::cluster::BenchCluster;
use super::commit;
use super::node::BenchEnv;
use super::report::Value;

/// Longest a write stays unavailable before the benchmark calls the failover failed.
const GIVE_UP: Duration = Duration::from_secs(20);
/// Per-call bound while the cluster elects.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause before trying again when no live leader was named.
const RETRY: Duration = Duration::from_millis(5);
/// Longest a restarted node may take to catch up.
const CATCH_UP: Duration = Duration::from_secs(60);

pub const WRITE: &str = "failover: SIGKILL leader -> first committed write (each kill)";
pub const HINT: &str = "failover: SIGKILL leader -> a survivor names the new leader";

/// One repetition: a fresh cluster, `kills` leader kills, one value per kill for each figure.
pub async fn run(env: &BenchEnv, rep: usize, kills: usize) -> Result<Vec<Value>> {
    let mut cluster = BenchCluster::start(env, &format!("failover-{rep}")).await?;
    let tls = cd_common::tls::client_tls(&env.op, "localhost")?;
    // Lazy channels, one per node: they reconnect by themselves after a restart.
    let mut clients = Vec::new();
    for url in cluster.urls() {
        let ch = Endpoint::from_shared(url.clone())?
            .tls_config(tls.clone())?
            .connect_timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        clients.push((url, ControlServiceClient::new(ch)));
    }
    let mut values = Vec::new();
    for kill in 1..=kills {
        cluster.wait_converged(CATCH_UP).await?;
        let leader = cluster.leader(Duration::from_secs(30)).await?;
        let idx = (leader - 1) as usize;
        // The leader accepts writes before the kill (and the channel to it is warm).
        commit::apply(&mut clients[idx].1)
            .await
            .with_context(|| format!("a write through leader {leader} before kill {kill}"))?;
        for (i, (_, c)) in clients.iter_mut().enumerate() {
            if i != idx {
                // Warm every survivor's channel too, so the loop pays no TLS handshake.
                let _ = tokio::time::timeout(CALL_TIMEOUT, commit::apply(c)).await;
            }
        }
        let t0 = Instant::now();
        cluster.kill9(leader);
        let (write, hint, attempts) = write_loop(&cluster, &mut clients, leader, t0)
            .await
            .with_context(|| format!("kill {kill} of leader {leader} (repetition {rep})"))?;
        eprintln!(
            "  kill {kill}: leader {leader} killed; new leader named after {} ms, first write after {} ms ({attempts} attempts)",
            hint.as_millis(),
            write.as_millis()
        );
        values.push(Value::new(WRITE, "ms", write.as_secs_f64() * 1e3));
        values.push(Value::new(HINT, "ms", hint.as_secs_f64() * 1e3));
        cluster.spawn(leader)?;
    }
    cluster.wait_converged(CATCH_UP).await?;
    cluster.discard();
    Ok(values)
}

/// Tries writes until one succeeds. Returns (first write, first hint naming a live leader,
/// attempts), times since `t0`.
async fn write_loop(
    cluster: &BenchCluster,
    clients: &mut [(String, ControlServiceClient<Channel>)],
    dead: u64,
    t0: Instant,
) -> Result<(Duration, Duration, usize)> {
    let survivors: Vec<usize> = (0..clients.len())
        .filter(|i| *i as u64 + 1 != dead)
        .collect();
    let mut turn = 0usize;
    let mut target = survivors[0];
    let mut hint: Option<Duration> = None;
    let mut attempts = 0usize;
    let mut last = String::new();
    loop {
        if t0.elapsed() > GIVE_UP {
            bail!(
                "no write succeeded within {GIVE_UP:?} of killing leader {dead} ({attempts} attempts; last answer: {last})"
            );
        }
        attempts += 1;
        let c = &mut clients[target].1;
        let r = tokio::time::timeout(CALL_TIMEOUT, c.apply_pipeline(commit::request())).await;
        match r {
            Ok(Ok(_)) => {
                let at = t0.elapsed();
                return Ok((at, hint.unwrap_or(at), attempts));
            }
            Ok(Err(status)) => {
                let named = status
                    .metadata()
                    .get("cd-leader")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|u| cluster.id_of(u));
                last = format!(
                    "{} {:?}: {}",
                    clients[target].0,
                    status.code(),
                    status.message()
                );
                match named {
                    Some(id) if id != dead && (id - 1) as usize != target => {
                        hint.get_or_insert_with(|| t0.elapsed());
                        target = (id - 1) as usize;
                        continue;
                    }
                    Some(id) if id != dead => {
                        // It names itself yet refused: the write raced its step-up; try again.
                        hint.get_or_insert_with(|| t0.elapsed());
                    }
                    _ => {
                        turn += 1;
                        target = survivors[turn % survivors.len()];
                    }
                }
            }
            Err(_) => {
                last = format!("{}: no answer within {CALL_TIMEOUT:?}", clients[target].0);
                turn += 1;
                target = survivors[turn % survivors.len()];
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}
