//! Real release processes for the benchmark: `cd-coordinator serve` and `cd-agent`, spawned
//! from the directory `cd-bench` itself was built into, listening and connecting on 127.0.0.1
//! only, with their data in a temp dir.
//!
//! `cd_tests::bin_dir()` assumes a test binary in `target/<profile>/deps/`; `cd-bench` is a
//! binary in `target/<profile>/`, so it finds its sibling binaries here instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use cd_common::certs::Role;
use cd_common::tls::TlsPaths;
use cd_proto::v1 as pb;
use cd_proto::v1::agent_service_client::AgentServiceClient;
use cd_proto::v1::control_service_client::ControlServiceClient;
use cd_tests::{Certs, Proc, eventually};
use tonic::transport::{Channel, Endpoint};

/// The directory holding `cd-bench` and the release `cd-coordinator` and `cd-agent`.
pub fn release_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating cd-bench")?;
    let mut dir = exe
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    if cfg!(debug_assertions) || dir.file_name().is_none_or(|n| n != "release") {
        bail!(
            "cd-bench measures release binaries: build with `cargo build --release --workspace` \
             and run ./target/release/cd-bench (this one runs from {})",
            dir.display()
        );
    }
    for name in ["cd-coordinator", "cd-agent"] {
        ensure!(
            dir.join(name).exists(),
            "{} is missing: run `cargo build --release --workspace`",
            dir.join(name).display()
        );
    }
    Ok(dir)
}

/// What every measurement shares: the binaries, one CA for the whole run, a scratch dir.
pub struct BenchEnv {
    pub bin: PathBuf,
    pub root: PathBuf,
    pub certs: Certs,
    pub op: TlsPaths,
}

impl BenchEnv {
    pub fn new(bin: PathBuf, root: PathBuf) -> Result<BenchEnv> {
        let certs = Certs::new(&root.join("certs"))?;
        let op = certs.operator();
        Ok(BenchEnv {
            bin,
            root,
            certs,
            op,
        })
    }

    /// A fresh coordinator with an empty data dir `name` under the scratch dir.
    pub fn coordinator(&self, name: &str) -> Result<Node> {
        let dir = self.root.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        Node::start(&dir, &self.certs)
    }

    pub async fn control(&self, node: &Node) -> Result<ControlServiceClient<Channel>> {
        cd_tests::client(&node.endpoint, &self.op).await
    }
}

/// One `cd-coordinator serve` on 127.0.0.1, with the agents started against it (all killed
/// on drop).
pub struct Node {
    pub proc: Proc,
    pub endpoint: String,
    pub dir: PathBuf,
    agents: Vec<Proc>,
}

impl Node {
    fn start(dir: &Path, certs: &Certs) -> Result<Node> {
        let tls = certs.tls(Role::Coordinator, "node-1");
        let (proc, endpoint) = spawn_coordinator(dir, &tls, "127.0.0.1:0", &[])?;
        Ok(Node {
            proc,
            endpoint,
            dir: dir.to_path_buf(),
            agents: Vec::new(),
        })
    }

    /// Starts a real `cd-agent` with one slot and waits until the coordinator lists it as
    /// connected.
    pub async fn start_agent(&mut self, env: &BenchEnv, name: &str) -> Result<()> {
        let work = self.dir.join("agents").join(name);
        let agent = spawn_agent(env, name, &self.endpoint, &work)?;
        let log = agent.log.clone();
        self.agents.push(agent);
        let c = env.control(self).await?;
        wait_agent(c, name, &log).await
    }
}

/// A client of the agent API at `endpoint` holding `name`'s agent certificate.
pub async fn agent_client(
    env: &BenchEnv,
    endpoint: &str,
    name: &str,
) -> Result<AgentServiceClient<Channel>> {
    let tls = env.certs.tls(Role::Agent, name);
    Ok(AgentServiceClient::new(channel(endpoint, &tls).await?))
}

/// A connected mutual-TLS channel to a coordinator (or an etcd member with the same
/// certificates), checking the server as `localhost`.
pub async fn channel(endpoint: &str, tls: &TlsPaths) -> Result<Channel> {
    let cfg = cd_common::tls::client_tls(tls, "localhost")?;
    Endpoint::from_shared(endpoint.to_string())?
        .tls_config(cfg)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

/// Spawns a real `cd-coordinator serve` on `listen` with its data and log in `dir` and
/// `extra` flags (the test harness's launcher); returns once it prints the URL it listens on,
/// which must be on loopback.
pub fn spawn_coordinator(
    dir: &Path,
    tls: &TlsPaths,
    listen: &str,
    extra: &[String],
) -> Result<(Proc, String)> {
    let env = [("RUST_LOG".to_string(), rust_log())];
    let (proc, endpoint) = cd_tests::spawn_coordinator_via(&[], dir, tls, listen, extra, &env)?;
    ensure!(
        endpoint.starts_with("https://127.0.0.1:"),
        "coordinator listens on {endpoint}, not on loopback"
    );
    Ok((proc, endpoint))
}

/// Spawns a real `cd-agent` named `name` with one slot, given `endpoints` (comma-separated),
/// working in `work` (its log there too).
pub fn spawn_agent(env: &BenchEnv, name: &str, endpoints: &str, work: &Path) -> Result<Proc> {
    let tls = env.certs.tls(Role::Agent, name);
    Ok(cd_tests::Agent::start(name, endpoints, &tls, work, &["--slots", "1"])?.proc)
}

/// Waits until the coordinator behind `c` lists agent `name` as connected.
pub async fn wait_agent(c: ControlServiceClient<Channel>, name: &str, log: &Path) -> Result<()> {
    eventually(
        &format!("agent {name} to connect (log {})", log.display()),
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            async move {
                let agents = c
                    .list_agents(pb::ListAgentsRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .agents;
                agents
                    .iter()
                    .any(|a| a.name == name && a.connected)
                    .then_some(())
            }
        },
    )
    .await
}

impl Node {
    /// Stops the processes and removes the data dir (after a measurement succeeded; a failed
    /// one keeps it for the logs).
    pub fn discard(mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    fn stop(&mut self) {
        // Agents first, so none reconnects to a dying coordinator; Proc's drop kills each.
        self.agents.clear();
        self.proc.kill9();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `n` distinct free ports on 127.0.0.1: all bound at once, then released (binding one at a
/// time can hand out the same port twice).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<Vec<_>>>()?)
}

/// Starts of a cluster when another process took one of its free ports in between.
pub const PORT_ATTEMPTS: usize = 3;

/// Whether `e` (or the log it quotes) says a listener's port was already in use.
pub fn port_taken(e: &anyhow::Error) -> bool {
    format!("{e:#}")
        .to_ascii_lowercase()
        .contains("address already in use")
}

/// CPU time (user + system, every thread, in seconds) process `pid` has used so far, from
/// `/proc/PID/stat` (in USER_HZ = 1/100 s ticks).
pub fn cpu_secs(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat has no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: field {} missing", i + 3))
    };
    Ok((tick(11)? + tick(12)?) / 100.0)
}

/// The processes log at `info` (what a deployment runs with) unless RUST_LOG says otherwise.
pub fn rust_log() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())
}
