//! Harness for tests that start the real `cd-coordinator`, `cd-agent` and `cdctl` binaries on
//! 127.0.0.1 with temp dirs, random ports and real mutual TLS.
//!
//! Processes are killed when their handle drops, so a failing test leaves nothing behind.
//! Waiting is done on watch streams or by polling a condition with a deadline, never by
//! sleeping for a guessed time.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cd_common::certs::{self, Role};
use cd_common::tls::TlsPaths;
use cd_proto::v1 as pb;
use cd_proto::v1::control_service_client::ControlServiceClient;
use tonic::transport::{Channel, Endpoint};

pub use cd_proto::v1::{RunState, StageState};

/// The directory cargo put this workspace's binaries in (target/debug or target/release).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Tests live in target/<profile>/deps/, binaries such as cd-bench in target/<profile>/.
    let dir = exe.parent().expect("executable has a directory");
    if dir.ends_with("deps") {
        dir.parent()
            .map(Path::to_path_buf)
            .expect("target/<profile>")
    } else {
        dir.to_path_buf()
    }
}

/// Path of one of the workspace's binaries; they are built by `cargo test --workspace`
/// because each binary crate has integration tests of its own.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` (cargo test --workspace builds it)",
        p.display()
    );
    p
}

/// A cluster CA with certificates for nodes, agents and operators, issued on demand.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn new(dir: &Path) -> Result<Certs> {
        std::fs::create_dir_all(dir)?;
        certs::init_ca(dir, certs::DEFAULT_TRUST_DOMAIN)?;
        Ok(Certs {
            dir: dir.to_path_buf(),
        })
    }

    /// Issues (once) and returns the files of `name` in role `role`.
    pub fn tls(&self, role: Role, name: &str) -> TlsPaths {
        let paths = TlsPaths::in_dir(&self.dir, name);
        if !paths.cert.exists() {
            certs::issue(&self.dir, &self.dir, role, name, &[], 30).expect("issue certificate");
        }
        paths
    }

    /// As `tls`, with extra DNS names or IP addresses in the certificate.
    pub fn tls_with_sans(&self, role: Role, name: &str, sans: &[String]) -> TlsPaths {
        let paths = TlsPaths::in_dir(&self.dir, name);
        if !paths.cert.exists() {
            certs::issue(&self.dir, &self.dir, role, name, sans, 30).expect("issue certificate");
        }
        paths
    }

    pub fn operator(&self) -> TlsPaths {
        self.tls(Role::Operator, "operator")
    }

    /// A client certificate signed by this CA with exactly `uris` as URI SANs and the given
    /// validity (offsets from now, in seconds), for tests of refused identities.
    pub fn custom(&self, stem: &str, uris: &[&str], from_s: i64, until_s: i64) -> TlsPaths {
        let now = time::OffsetDateTime::now_utc();
        certs::issue_unchecked(
            &self.dir,
            &self.dir,
            stem,
            uris,
            now + time::Duration::seconds(from_s),
            now + time::Duration::seconds(until_s),
        )
        .expect("issue custom certificate");
        TlsPaths::in_dir(&self.dir, stem)
    }
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for exit: an error (not a hung test) if the process has not exited
    /// within 30 s, since a clean shutdown that never ends is a bug.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "process {} did not exit within 30 s of SIGTERM (log: {})",
                    self.pid(),
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `cd-coordinator serve` process.
pub struct Coordinator {
    pub proc: Proc,
    pub endpoint: String,
    pub addr: String,
    pub data_dir: PathBuf,
    tls: TlsPaths,
    extra: Vec<String>,
    /// Environment for the next start (e.g. FAILPOINTS); cleared by `restart_clean`.
    pub env: Vec<(String, String)>,
}

impl Coordinator {
    /// Starts a node on a free port of 127.0.0.1. `extra` are further `serve` flags.
    pub fn start(data_dir: &Path, certs: &Certs, extra: &[&str]) -> Result<Coordinator> {
        Self::start_with_env(data_dir, certs, extra, &[])
    }

    /// As `start`, with extra environment variables for the process (e.g. FAILPOINTS).
    pub fn start_with_env(
        data_dir: &Path,
        certs: &Certs,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Coordinator> {
        let tls = certs.tls(Role::Coordinator, "node-1");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (proc, endpoint) = spawn_coordinator(data_dir, &tls, "127.0.0.1:0", &extra, &env)?;
        let addr = endpoint.trim_start_matches("https://").to_string();
        Ok(Coordinator {
            proc,
            endpoint,
            addr,
            data_dir: data_dir.to_path_buf(),
            tls,
            extra,
            env,
        })
    }

    /// Restarts without the extra environment (e.g. after a failpoint crash).
    pub fn restart_clean(&mut self) -> Result<()> {
        self.env.clear();
        self.restart()
    }

    /// Kills the node with SIGKILL (no snapshot, no clean shutdown).
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts the node again on the same data dir and port.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill9();
        let (proc, endpoint) = spawn_coordinator(
            &self.data_dir,
            &self.tls,
            &self.addr,
            &self.extra,
            &self.env,
        )?;
        anyhow::ensure!(
            endpoint == self.endpoint,
            "restarted on {endpoint}, not {}",
            self.endpoint
        );
        self.proc = proc;
        Ok(())
    }

    pub async fn client(&self, tls: &TlsPaths) -> Result<ControlServiceClient<Channel>> {
        client(&self.endpoint, tls).await
    }
}

pub(crate) fn spawn_coordinator(
    data_dir: &Path,
    tls: &TlsPaths,
    listen: &str,
    extra: &[String],
    env: &[(String, String)],
) -> Result<(Proc, String)> {
    spawn_coordinator_via(&[], data_dir, tls, listen, extra, env)
}

/// As `spawn_coordinator`, run through `wrapper` (e.g. `ip netns exec NS`, which execs it).
pub fn spawn_coordinator_via(
    wrapper: &[String],
    data_dir: &Path,
    tls: &TlsPaths,
    listen: &str,
    extra: &[String],
    env: &[(String, String)],
) -> Result<(Proc, String)> {
    std::fs::create_dir_all(data_dir)?;
    let log = data_dir.join("coordinator.log");
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(bin("cd-coordinator"));
            c
        }
        None => Command::new(bin("cd-coordinator")),
    };
    let mut child = cmd
        .arg("serve")
        .arg("--listen")
        .arg(listen)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--ca")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.cert)
        .arg("--key")
        .arg(&tls.key)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("spawning cd-coordinator")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let proc = Proc {
        child,
        log: log.clone(),
    };
    let first = lines.next().transpose()?.unwrap_or_default();
    let endpoint = match first.strip_prefix("listening on ") {
        Some(e) => e.trim().to_string(),
        None => bail!(
            "coordinator did not start (stdout {first:?}); log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((proc, endpoint))
}

/// A `cd-agent` process.
pub struct Agent {
    pub proc: Proc,
    pub name: String,
}

impl Agent {
    pub fn start(
        name: &str,
        endpoint: &str,
        tls: &TlsPaths,
        work_dir: &Path,
        extra: &[&str],
    ) -> Result<Agent> {
        std::fs::create_dir_all(work_dir)?;
        let log = work_dir.join(format!("{name}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(bin("cd-agent"))
            .arg("--name")
            .arg(name)
            .arg("--endpoint")
            .arg(endpoint)
            .arg("--ca")
            .arg(&tls.ca)
            .arg("--cert")
            .arg(&tls.cert)
            .arg("--key")
            .arg(&tls.key)
            .arg("--work-dir")
            .arg(work_dir)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawning cd-agent")?;
        Ok(Agent {
            proc: Proc { child, log },
            name: name.to_string(),
        })
    }
}

/// A gRPC client over mutual TLS.
pub async fn client(endpoint: &str, tls: &TlsPaths) -> Result<ControlServiceClient<Channel>> {
    let cfg = cd_common::tls::client_tls(tls, "localhost")?;
    let channel = Endpoint::from_shared(endpoint.to_string())?
        .tls_config(cfg)?
        .connect_timeout(Duration::from_secs(5))
        // A call that hangs fails the test instead of blocking it forever.
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    Ok(ControlServiceClient::new(channel))
}

/// Polls `cond` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Follows `WatchRun` until `pred` holds for the run, reconnecting if the stream breaks
/// (a coordinator restart). Fails after `timeout`.
pub async fn wait_run(
    endpoint: &str,
    tls: &TlsPaths,
    run_id: &str,
    timeout: Duration,
    pred: impl Fn(&pb::Run) -> bool,
) -> Result<pb::Run> {
    wait_run_any(&[endpoint.to_string()], tls, run_id, timeout, pred).await
}

/// As `wait_run`, trying each endpoint in turn (a cluster: only the leader answers).
pub async fn wait_run_any(
    endpoints: &[String],
    tls: &TlsPaths,
    run_id: &str,
    timeout: Duration,
    pred: impl Fn(&pb::Run) -> bool,
) -> Result<pb::Run> {
    let deadline = Instant::now() + timeout;
    let mut last: Option<pb::Run> = None;
    let mut turn = 0usize;
    loop {
        let endpoint = &endpoints[turn % endpoints.len()];
        turn += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "timed out waiting for run {run_id}; last seen: {}",
                describe(last.as_ref())
            );
        }
        let attempt = tokio::time::timeout(left, async {
            let mut c = client(endpoint, tls).await?;
            let mut s = c
                .watch_run(pb::WatchRunRequest {
                    run_id: run_id.into(),
                })
                .await?
                .into_inner();
            while let Some(run) = s.message().await? {
                if pred(&run) {
                    return Ok::<_, anyhow::Error>(Some(run));
                }
                last = Some(run);
            }
            Ok(None)
        })
        .await;
        match attempt {
            Ok(Ok(Some(run))) => return Ok(run),
            // Stream ended without the condition (run final) or broke: look again.
            Ok(Ok(None)) => {
                if let Some(r) = &last
                    && r.state != RunState::Running as i32
                {
                    bail!(
                        "run {run_id} ended without the awaited condition: {}",
                        describe(Some(r))
                    );
                }
            }
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => bail!(
                "timed out waiting for run {run_id}; last seen: {}",
                describe(last.as_ref())
            ),
        }
    }
}

/// Waits until the run is final.
pub async fn wait_final(
    endpoint: &str,
    tls: &TlsPaths,
    run_id: &str,
    timeout: Duration,
) -> Result<pb::Run> {
    wait_run(endpoint, tls, run_id, timeout, |r| {
        r.state != RunState::Running as i32
    })
    .await
}

/// One line per stage, for failure messages.
pub fn describe(run: Option<&pb::Run>) -> String {
    let Some(run) = run else {
        return "nothing".into();
    };
    let mut s = format!(
        "{} {:?} {}",
        run.id,
        RunState::try_from(run.state).ok(),
        run.reason
    );
    for st in &run.stages {
        s.push_str(&format!(
            "\n  {} {:?} attempts={} {}",
            st.name,
            StageState::try_from(st.state).ok(),
            st.attempts.len(),
            st.reason
        ));
    }
    s
}

pub fn stage<'a>(run: &'a pb::Run, name: &str) -> &'a pb::Stage {
    run.stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("run {} has no stage {name}", run.id))
}

pub fn stage_is(run: &pb::Run, name: &str, state: StageState) -> bool {
    run.stages
        .iter()
        .any(|s| s.name == name && s.state == state as i32)
}

/// All stored log bytes of a stage (every attempt, in order).
pub async fn logs(
    c: &mut ControlServiceClient<Channel>,
    run_id: &str,
    stage: &str,
) -> Result<Vec<u8>> {
    let mut s = c
        .follow_logs(pb::FollowLogsRequest {
            run_id: run_id.into(),
            stage: stage.into(),
            attempt: 0,
            follow: false,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.message().await? {
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

pub async fn apply_pipeline(
    c: &mut ControlServiceClient<Channel>,
    yaml: &str,
    base_dir: &Path,
) -> Result<pb::Pipeline> {
    let r = c
        .apply_pipeline(pb::ApplyPipelineRequest {
            spec_yaml: yaml.into(),
            file_name: "test.yaml".into(),
            base_dir: base_dir.to_string_lossy().into_owned(),
        })
        .await?
        .into_inner();
    r.pipeline.ok_or_else(|| anyhow!("no pipeline returned"))
}

pub async fn start_run(
    c: &mut ControlServiceClient<Channel>,
    pipeline: &str,
    params: &[(&str, &str)],
) -> Result<String> {
    let r = c
        .start_run(pb::StartRunRequest {
            pipeline: pipeline.into(),
            revision: "test".into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            trigger: "test".into(),
            commit_at_ms: 0,
        })
        .await?
        .into_inner();
    Ok(r.id)
}

/// Every run of `pipeline` (first page of up to 1000).
pub async fn list_runs(
    c: &mut ControlServiceClient<Channel>,
    pipeline: &str,
) -> Result<Vec<pb::Run>> {
    Ok(c.list_runs(pb::ListRunsRequest {
        pipeline: pipeline.into(),
        page_size: 1000,
        page_token: String::new(),
    })
    .await?
    .into_inner()
    .runs)
}

/// A `cdctl` command pointed at `endpoint` with the operator's certificate.
pub fn cdctl(endpoint: &str, tls: &TlsPaths) -> Command {
    let mut c = Command::new(bin("cdctl"));
    c.env("CD_ENDPOINT", endpoint)
        .env("CD_CA", &tls.ca)
        .env("CD_CERT", &tls.cert)
        .env("CD_KEY", &tls.key)
        .env_remove("CD_CERT_DIR")
        .stdin(Stdio::null());
    c
}

/// The workspace root (for examples/).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .expect("workspace root")
}

/// Whether a process is still running. A zombie (exited, not yet reaped — orphans whose
/// reaper never waits stay so) counts as gone.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// One coordinator and some agents in a temp dir, ready when every agent is connected.
pub struct Single {
    pub tmp: tempfile::TempDir,
    pub certs: Certs,
    pub coord: Coordinator,
    pub agents: Vec<Agent>,
    pub op: TlsPaths,
}

impl Single {
    pub async fn start(
        agent_names: &[&str],
        coord_extra: &[&str],
        agent_extra: &[&str],
    ) -> Result<Single> {
        let tmp = tempfile::Builder::new().prefix("cd-test-").tempdir()?;
        let certs = Certs::new(&tmp.path().join("certs"))?;
        let coord = Coordinator::start(&tmp.path().join("node"), &certs, coord_extra)?;
        let op = certs.operator();
        let mut s = Single {
            tmp,
            certs,
            coord,
            agents: Vec::new(),
            op,
        };
        for name in agent_names {
            s.add_agent(name, agent_extra)?;
        }
        s.wait_agents(agent_names).await?;
        Ok(s)
    }

    pub fn add_agent(&mut self, name: &str, extra: &[&str]) -> Result<()> {
        let tls = self.certs.tls(Role::Agent, name);
        let work = self.tmp.path().join("agents").join(name);
        let a = Agent::start(name, &self.coord.endpoint, &tls, &work, extra)?;
        self.agents.push(a);
        Ok(())
    }

    /// Waits until the named agents are connected to the coordinator.
    pub async fn wait_agents(&self, names: &[&str]) -> Result<()> {
        let endpoint = self.coord.endpoint.clone();
        let op = self.op.clone();
        let logs: Vec<String> = self
            .agents
            .iter()
            .map(|a| a.proc.log.display().to_string())
            .collect();
        eventually(
            &format!("agents {names:?} to connect (logs in {logs:?})"),
            Duration::from_secs(30),
            || {
                let endpoint = endpoint.clone();
                let op = op.clone();
                async move {
                    let mut c = client(&endpoint, &op).await.ok()?;
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
                }
            },
        )
        .await
    }

    pub async fn client(&self) -> Result<ControlServiceClient<Channel>> {
        self.coord.client(&self.op).await
    }

    pub async fn wait_final(&self, run_id: &str, timeout: Duration) -> Result<pb::Run> {
        wait_final(&self.coord.endpoint, &self.op, run_id, timeout).await
    }

    pub async fn wait_run(
        &self,
        run_id: &str,
        timeout: Duration,
        pred: impl Fn(&pb::Run) -> bool,
    ) -> Result<pb::Run> {
        wait_run(&self.coord.endpoint, &self.op, run_id, timeout, pred).await
    }

    pub fn cdctl(&self) -> Command {
        cdctl(&self.coord.endpoint, &self.op)
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
}

pub mod cluster;
pub mod docker;
pub mod gitrepo;
pub mod netns;
