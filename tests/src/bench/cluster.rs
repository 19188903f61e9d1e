//! A cluster of release `cd-coordinator` processes on 127.0.0.1 for the cluster figures: each
//! node has its own data dir and a fixed port (picked free at start, kept across restarts so
//! `--initial-cluster` stays true), and one CA for the run. Every process is killed on drop.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cd_common::certs::Role;
use cd_common::tls::TlsPaths;
use cd_proto::v1 as pb;
use cd_proto::v1::cluster_service_client::ClusterServiceClient;
use cd_proto::v1::control_service_client::ControlServiceClient;
use cd_tests::{Proc, eventually};
use tonic::transport::Channel;

use super::node::{self, BenchEnv};

/// Nodes in the benchmark cluster.
pub const NODES: u64 = 3;

pub struct ClusterNode {
    pub id: u64,
    pub url: String,
    listen: String,
    dir: PathBuf,
    tls: TlsPaths,
    proc: Option<Proc>,
}

pub struct BenchCluster {
    pub nodes: Vec<ClusterNode>,
    pub dir: PathBuf,
    op: TlsPaths,
    agents: Vec<Proc>,
}

impl BenchCluster {
    /// Starts `NODES` fresh nodes under `env.root/name` and returns once a leader is elected
    /// that a majority agrees on.
    pub async fn start(env: &BenchEnv, name: &str) -> Result<BenchCluster> {
        let mut attempt = 1;
        loop {
            match Self::try_start(env, name).await {
                Err(e) if attempt < node::PORT_ATTEMPTS && node::port_taken(&e) => {
                    eprintln!("  {name}: a port was taken before a node bound it; new ports");
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    async fn try_start(env: &BenchEnv, name: &str) -> Result<BenchCluster> {
        let dir = env.root.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let mut nodes = Vec::new();
        let ports = node::free_ports(NODES as usize)?;
        for (id, port) in (1..=NODES).zip(ports) {
            let listen = format!("127.0.0.1:{port}");
            nodes.push(ClusterNode {
                id,
                url: format!("https://{listen}"),
                listen,
                dir: dir.join(format!("node-{id}")),
                tls: env.certs.tls(Role::Coordinator, &format!("node-{id}")),
                proc: None,
            });
        }
        let mut c = BenchCluster {
            nodes,
            dir,
            op: env.op.clone(),
            agents: Vec::new(),
        };
        for id in 1..=NODES {
            c.spawn(id)?;
        }
        c.leader(Duration::from_secs(30)).await?;
        Ok(c)
    }

    fn node(&self, id: u64) -> &ClusterNode {
        self.nodes.iter().find(|n| n.id == id).expect("known node")
    }

    pub fn url(&self, id: u64) -> String {
        self.node(id).url.clone()
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// The node listening at `url`, if it is one of ours.
    pub fn id_of(&self, url: &str) -> Option<u64> {
        self.nodes
            .iter()
            .find(|n| n.url == url.trim_end_matches('/'))
            .map(|n| n.id)
    }

    /// Starts (or restarts, on the same data dir and port) node `id`.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        let initial = self
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.url))
            .collect::<Vec<_>>()
            .join(",");
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("known node");
        if let Some(mut p) = n.proc.take() {
            p.kill9();
        }
        let extra = [
            "--node-id".to_string(),
            id.to_string(),
            "--initial-cluster".into(),
            initial,
        ];
        let (proc, endpoint) = node::spawn_coordinator(&n.dir, &n.tls, &n.listen, &extra)
            .with_context(|| format!("starting node {id}"))?;
        ensure!(
            endpoint == n.url,
            "node {id} listens on {endpoint}, not {}",
            n.url
        );
        n.proc = Some(proc);
        Ok(())
    }

    /// SIGKILL, no warning, then reaps the process.
    pub fn kill9(&mut self, id: u64) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.id == id)
            && let Some(mut p) = n.proc.take()
        {
            p.kill9();
        }
    }

    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.proc.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// CPU seconds the running nodes have used so far, together.
    pub fn cpu_secs(&self) -> Result<f64> {
        let mut total = 0.0;
        for n in &self.nodes {
            if let Some(p) = &n.proc {
                total += node::cpu_secs(p.pid())?;
            }
        }
        Ok(total)
    }

    pub async fn control(&self, id: u64) -> Result<ControlServiceClient<Channel>> {
        cd_tests::client(&self.node(id).url, &self.op).await
    }

    async fn admin(&self, id: u64) -> Result<ClusterServiceClient<Channel>> {
        Ok(ClusterServiceClient::new(
            node::channel(&self.node(id).url, &self.op).await?,
        ))
    }

    async fn status(&self, id: u64) -> Result<pb::ClusterStatus> {
        let mut a = self.admin(id).await?;
        Ok(a.status(pb::ClusterStatusRequest {}).await?.into_inner())
    }

    /// Waits until a live node says it leads and a majority of all nodes name it.
    pub async fn leader(&self, timeout: Duration) -> Result<u64> {
        let live = self.live();
        eventually("a leader that a majority agrees on", timeout, || {
            let live = live.clone();
            async move {
                let mut views = Vec::new();
                for id in &live {
                    if let Ok(s) = self.status(*id).await {
                        let me = s.nodes.iter().find(|n| n.id == *id).map(|n| n.role.clone());
                        views.push((*id, s.leader_id, me));
                    }
                }
                let leader = views
                    .iter()
                    .find(|(_, _, role)| role.as_deref() == Some("leader"))?
                    .0;
                let agree = views.iter().filter(|(_, l, _)| *l == leader).count();
                (agree as u64 * 2 > NODES).then_some(leader)
            }
        })
        .await
    }

    /// The leader's URL first, then the others (for clients that follow the run anywhere).
    pub async fn leader_first(&self) -> Result<(u64, Vec<String>)> {
        let leader = self.leader(Duration::from_secs(30)).await?;
        let mut urls = vec![self.url(leader)];
        urls.extend(
            self.nodes
                .iter()
                .filter(|n| n.id != leader)
                .map(|n| n.url.clone()),
        );
        Ok((leader, urls))
    }

    /// Waits until every node runs and reports the same applied index and state digest.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<()> {
        ensure!(
            self.live().len() == self.nodes.len(),
            "not every node is running"
        );
        eventually(
            "every node to reach the same applied index and state digest",
            timeout,
            || async {
                let mut seen = Vec::new();
                for n in &self.nodes {
                    let d = self
                        .admin(n.id)
                        .await
                        .ok()?
                        .state_digest(pb::StateDigestRequest {})
                        .await
                        .ok()?
                        .into_inner();
                    seen.push((d.applied, d.digest));
                }
                let first = seen.first()?.clone();
                seen.iter().all(|s| *s == first).then_some(())
            },
        )
        .await
    }

    /// Starts a real `cd-agent` given every node's URL and waits until the leader lists it
    /// as connected.
    pub async fn start_agent(&mut self, env: &BenchEnv, name: &str) -> Result<()> {
        let work = self.dir.join("agents").join(name);
        let agent = node::spawn_agent(env, name, &self.urls().join(","), &work)?;
        let log = agent.log.clone();
        self.agents.push(agent);
        let leader = self.leader(Duration::from_secs(30)).await?;
        node::wait_agent(self.control(leader).await?, name, &log).await
    }

    /// Stops everything and removes the data dirs (after a measurement succeeded; a failed
    /// one keeps them for the logs).
    pub fn discard(mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn stop(&mut self) {
        self.agents.clear();
        for n in &mut self.nodes {
            if let Some(mut p) = n.proc.take() {
                p.kill9();
            }
        }
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
