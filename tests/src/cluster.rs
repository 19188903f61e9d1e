//! A cluster of real `cd-coordinator` processes on 127.0.0.1 (fixed free ports, so
//! `--initial-cluster` can name them), with agents pointed at all of them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use cd_common::certs::Role;
use cd_common::tls::TlsPaths;
use cd_proto::v1 as pb;
use cd_proto::v1::cluster_service_client::ClusterServiceClient;
use cd_proto::v1::control_service_client::ControlServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::{Agent, Certs, Proc, eventually};

pub struct Node {
    pub id: u64,
    pub url: String,
    pub listen: String,
    pub data_dir: PathBuf,
    pub tls: TlsPaths,
    pub proc: Option<Proc>,
    pub join: bool,
    /// Extra environment for the process (e.g. FAILPOINTS), kept across restarts.
    pub env: Vec<(String, String)>,
}

pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub certs: Certs,
    pub op: TlsPaths,
    pub nodes: Vec<Node>,
    pub agents: Vec<Agent>,
    /// Flags every node gets besides the cluster ones.
    pub extra: Vec<String>,
}

/// A free port on 127.0.0.1 (bound and released; fine on loopback between tests).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn channel(url: &str, tls: &TlsPaths) -> Result<Channel> {
    let cfg = cd_common::tls::client_tls(tls, "localhost")?;
    Ok(Endpoint::from_shared(url.to_string())?
        .tls_config(cfg)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

impl Cluster {
    /// Starts `n` nodes and the named agents; returns once a leader is elected and every agent
    /// is connected.
    pub async fn start(
        n: u64,
        agents: &[&str],
        extra: &[&str],
        agent_extra: &[&str],
    ) -> Result<Cluster> {
        let tmp = tempfile::Builder::new().prefix("cd-cluster-").tempdir()?;
        let certs = Certs::new(&tmp.path().join("certs"))?;
        let op = certs.operator();
        let mut c = Cluster {
            tmp,
            certs,
            op,
            nodes: Vec::new(),
            agents: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for id in 1..=n {
            c.push_node(id, false)?;
        }
        for id in 1..=n {
            c.spawn(id)?;
        }
        c.leader(Duration::from_secs(30)).await?;
        for name in agents {
            let tls = c.certs.tls(Role::Agent, name);
            let work = c.tmp.path().join("agents").join(name);
            c.agents.push(Agent::start(
                name,
                &c.endpoints(),
                &tls,
                &work,
                agent_extra,
            )?);
        }
        c.wait_agents(agents).await?;
        Ok(c)
    }

    fn push_node(&mut self, id: u64, join: bool) -> Result<()> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        self.nodes.push(Node {
            id,
            url: format!("https://{listen}"),
            listen,
            data_dir: self.tmp.path().join(format!("node-{id}")),
            tls: self.certs.tls(Role::Coordinator, &format!("node-{id}")),
            proc: None,
            join,
            env: Vec::new(),
        });
        Ok(())
    }

    fn initial_cluster(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.url))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's URL, comma-separated (for agents and cdctl).
    pub fn endpoints(&self) -> String {
        self.urls().join(",")
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("known node")
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("known node")
    }

    /// Starts (or restarts) node `id` on its data dir and port.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        let initial = self.initial_cluster();
        let extra = self.extra.clone();
        let node = self.node_mut(id);
        if let Some(mut p) = node.proc.take() {
            p.kill9();
        }
        let mut args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--initial-cluster".into(),
            initial,
            "--enable-fault-injection".into(),
        ];
        if node.join {
            args.push("--join".into());
        }
        args.extend(extra);
        let (proc, endpoint) =
            crate::spawn_coordinator(&node.data_dir, &node.tls, &node.listen, &args, &node.env)
                .with_context(|| format!("starting node {id}"))?;
        anyhow::ensure!(
            endpoint == node.url,
            "node {id} listens on {endpoint}, not {}",
            node.url
        );
        node.proc = Some(proc);
        Ok(())
    }

    /// Restarts node `id` with extra environment variables (e.g. FAILPOINTS).
    pub fn spawn_with_env(&mut self, id: u64, env: &[(&str, &str)]) -> Result<()> {
        self.node_mut(id).env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn(id)
    }

    /// Moves leadership to node `id` (asking whoever leads), and waits until it leads.
    pub async fn make_leader(&self, id: u64, timeout: Duration) -> Result<()> {
        eventually(&format!("node {id} to lead"), timeout, || async move {
            let leader = self.leader(Duration::from_secs(10)).await.ok()?;
            if leader == id {
                return Some(());
            }
            let _ = self
                .admin(leader)
                .await
                .ok()?
                .transfer_leader(pb::TransferLeaderRequest { id })
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        })
        .await
    }

    /// Whether node `id`'s process has exited (and reaps it).
    pub fn exited(&mut self, id: u64) -> bool {
        match self.node_mut(id).proc.as_mut() {
            Some(p) => matches!(p.child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    pub fn kill9(&mut self, id: u64) {
        if let Some(mut p) = self.node_mut(id).proc.take() {
            p.kill9();
        }
    }

    /// Kills node `id` and deletes its data dir.
    pub fn wipe(&mut self, id: u64) -> Result<()> {
        self.kill9(id);
        let dir = self.node(id).data_dir.clone();
        std::fs::remove_dir_all(&dir).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        Ok(())
    }

    /// Adds node `id` to the configuration of the running cluster is the caller's job
    /// (`cdctl cluster add`); this only prepares and starts the process with --join.
    pub fn add_joining_node(&mut self, id: u64) -> Result<String> {
        self.push_node(id, true)?;
        Ok(self.node(id).url.clone())
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.node(id).data_dir.join("coordinator.log")).unwrap_or_default()
    }

    pub async fn admin(&self, id: u64) -> Result<ClusterServiceClient<Channel>> {
        Ok(ClusterServiceClient::new(
            channel(&self.node(id).url, &self.op).await?,
        ))
    }

    pub async fn control(&self, id: u64) -> Result<ControlServiceClient<Channel>> {
        Ok(ControlServiceClient::new(
            channel(&self.node(id).url, &self.op).await?,
        ))
    }

    pub async fn status(&self, id: u64) -> Result<pb::ClusterStatus> {
        Ok(self
            .admin(id)
            .await?
            .status(pb::ClusterStatusRequest {})
            .await?
            .into_inner())
    }

    /// Nodes whose process is running.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.proc.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Waits until a live node leads and a majority of live nodes agree on it.
    pub async fn leader(&self, timeout: Duration) -> Result<u64> {
        let live = self.live();
        eventually(
            "a leader that a majority of live nodes agree on",
            timeout,
            || {
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
                    (agree * 2 > self.nodes.len()).then_some(leader)
                }
            },
        )
        .await
    }

    /// A client on the current leader.
    pub async fn leader_control(&self) -> Result<ControlServiceClient<Channel>> {
        let id = self.leader(Duration::from_secs(30)).await?;
        self.control(id).await
    }

    pub async fn set_faults(&self, id: u64, drop_to: &[u64]) -> Result<()> {
        self.admin(id)
            .await?
            .set_faults(pb::SetFaultsRequest {
                drop_to: drop_to.to_vec(),
            })
            .await?;
        Ok(())
    }

    /// Waits until every live node reports the same applied index and state digest.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<String> {
        let live = self.live();
        eventually(
            "every live node to reach the same state digest",
            timeout,
            || {
                let live = live.clone();
                async move {
                    let mut seen = Vec::new();
                    for id in &live {
                        let d = self
                            .admin(*id)
                            .await
                            .ok()?
                            .state_digest(pb::StateDigestRequest {})
                            .await
                            .ok()?
                            .into_inner();
                        seen.push((d.applied, d.digest));
                    }
                    let first = seen.first()?.clone();
                    seen.iter().all(|s| *s == first).then_some(first.1)
                }
            },
        )
        .await
    }

    pub async fn wait_agents(&self, names: &[&str]) -> Result<()> {
        eventually(
            &format!("agents {names:?} to connect to the leader"),
            Duration::from_secs(30),
            || async {
                let mut c = self.leader_control().await.ok()?;
                let agents = c
                    .list_agents(pb::ListAgentsRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .agents;
                names
                    .iter()
                    .all(|n| agents.iter().any(|a| a.name == *n && a.connected))
                    .then_some(())
            },
        )
        .await
    }

    pub async fn wait_final(&self, run_id: &str, timeout: Duration) -> Result<pb::Run> {
        crate::wait_run_any(&self.urls(), &self.op, run_id, timeout, |r| {
            r.state != pb::RunState::Running as i32
        })
        .await
    }

    pub fn cdctl(&self) -> std::process::Command {
        crate::cdctl(&self.endpoints(), &self.op)
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
}

/// The pipeline names `client`'s node holds in its own applied state (a `cd-stale` read, so a
/// follower or a cut-off node answers for itself instead of pointing at the leader).
pub async fn stale_pipeline_names(
    client: &mut ControlServiceClient<Channel>,
) -> Result<Vec<String>> {
    let mut req = tonic::Request::new(pb::ListPipelinesRequest {});
    req.metadata_mut().insert("cd-stale", "true".parse()?);
    Ok(client
        .list_pipelines(req)
        .await?
        .into_inner()
        .pipelines
        .into_iter()
        .map(|p| p.name)
        .collect())
}
