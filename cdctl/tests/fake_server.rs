//! Runs the `cdctl` binary against an in-process fake `ControlService` over mutual TLS, to
//! check what scripts rely on: stdout of `run start`, error lines and exit codes, the
//! endpoint list, the leader redirect, `run watch` exit codes, log ordering and paging,
//! `--stale` reads; and against fake `ClusterService` nodes sharing one fake cluster state:
//! `cluster status` merging, membership changes following `cd-leader`, and the retry while no
//! leader is known.

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use cd_common::certs::{DEFAULT_TRUST_DOMAIN, Role, init_ca, issue};
use cd_common::tls::{TlsPaths, install_crypto_provider, server_tls};
use cd_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use cd_proto::v1::control_service_server::{ControlService, ControlServiceServer};
use cd_proto::v1::*;
use futures::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Server;
use tonic::{Request, Response, Status};

type Calls = Arc<Mutex<Vec<String>>>;

#[derive(Clone)]
struct Fake {
    /// When set, every call is answered UNAVAILABLE naming this leader.
    leader: Option<String>,
    calls: Calls,
}

fn run(id: &str, state: RunState) -> Run {
    Run {
        id: id.into(),
        pipeline: "web".into(),
        pipeline_version: 1,
        state: state as i32,
        created_ms: 1_700_000_000_000,
        kind: "release".into(),
        stages: vec![Stage {
            name: "build".into(),
            state: if state == RunState::Running {
                StageState::Running as i32
            } else {
                StageState::Succeeded as i32
            },
            attempts: vec![
                Attempt {
                    number: 1,
                    agent: "agent-1".into(),
                    ..Default::default()
                },
                Attempt {
                    number: 2,
                    agent: "agent-2".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn chunk(attempt: u32, seq: u64, data: &str) -> LogChunk {
    LogChunk {
        attempt: Some(AttemptRef {
            run_id: "r-ok".into(),
            stage: "build".into(),
            attempt,
            ..Default::default()
        }),
        seq,
        data: data.as_bytes().to_vec(),
        encoding: 0,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Whether a request carries `cd-stale: true`.
fn is_stale(metadata: &MetadataMap) -> bool {
    metadata.get("cd-stale").is_some_and(|v| v == "true")
}

/// `UNAVAILABLE` naming `leader` in `cd-leader`, as a follower answers.
fn not_the_leader(leader: &str) -> Status {
    let mut status = Status::unavailable("not the leader");
    status
        .metadata_mut()
        .insert("cd-leader", MetadataValue::try_from(leader).unwrap());
    status
}

impl Fake {
    /// Records a write (with ` stale` if it carried `cd-stale`); a follower redirects it.
    fn check(&self, call: String, metadata: &MetadataMap) -> Result<(), Status> {
        self.record(call, metadata);
        match &self.leader {
            Some(leader) => Err(not_the_leader(leader)),
            None => Ok(()),
        }
    }

    /// Records a read; a follower serves it when it carries `cd-stale: true` (like the real
    /// coordinator) and redirects it otherwise.
    fn check_read(&self, call: String, metadata: &MetadataMap) -> Result<(), Status> {
        if is_stale(metadata) {
            self.record(call, metadata);
            return Ok(());
        }
        self.check(call, metadata)
    }

    fn record(&self, call: String, metadata: &MetadataMap) {
        let call = if is_stale(metadata) {
            format!("{call} stale")
        } else {
            call
        };
        self.calls.lock().unwrap().push(call);
    }
}

#[tonic::async_trait]
impl ControlService for Fake {
    async fn apply_pipeline(
        &self,
        request: Request<ApplyPipelineRequest>,
    ) -> Result<Response<ApplyPipelineResponse>, Status> {
        let meta = request.metadata().clone();
        let req = request.into_inner();
        self.check(format!("apply {} {}", req.file_name, req.base_dir), &meta)?;
        Ok(Response::new(ApplyPipelineResponse {
            pipeline: Some(Pipeline {
                name: "web".into(),
                version: 2,
                spec_yaml: req.spec_yaml,
                ..Default::default()
            }),
            changed: false,
        }))
    }
    async fn list_pipelines(
        &self,
        _: Request<ListPipelinesRequest>,
    ) -> Result<Response<ListPipelinesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_pipeline(
        &self,
        _: Request<GetPipelineRequest>,
    ) -> Result<Response<Pipeline>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn start_run(&self, request: Request<StartRunRequest>) -> Result<Response<Run>, Status> {
        let meta = request.metadata().clone();
        let req = request.into_inner();
        self.check(format!("start {}", req.pipeline), &meta)?;
        match req.pipeline.as_str() {
            "web" => Ok(Response::new(run("r-42", RunState::Running))),
            "bad" => Err(Status::invalid_argument("params.X: too long")),
            other => Err(Status::not_found(format!(
                "pipeline \"{other}\" does not exist"
            ))),
        }
    }
    async fn get_run(&self, request: Request<GetRunRequest>) -> Result<Response<Run>, Status> {
        let meta = request.metadata().clone();
        let req = request.into_inner();
        self.check_read(format!("get {}", req.run_id), &meta)?;
        Ok(Response::new(run(&req.run_id, RunState::Running)))
    }
    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        let meta = request.metadata().clone();
        let req = request.into_inner();
        self.check_read(format!("list {}", req.page_token), &meta)?;
        let (runs, next) = match req.page_token.as_str() {
            "" => (
                vec![run("r1", RunState::Running), run("r2", RunState::Failed)],
                "p2",
            ),
            "p2" => (vec![run("r3", RunState::Succeeded)], ""),
            _ => return Err(Status::invalid_argument("bad page_token")),
        };
        Ok(Response::new(ListRunsResponse {
            runs,
            next_page_token: next.into(),
        }))
    }
    async fn cancel_run(&self, _: Request<CancelRunRequest>) -> Result<Response<Run>, Status> {
        Err(Status::unimplemented("fake"))
    }
    type WatchRunStream = BoxStream<Run>;
    async fn watch_run(
        &self,
        request: Request<WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let meta = request.metadata().clone();
        let id = request.into_inner().run_id;
        self.check_read(format!("watch {id}"), &meta)?;
        let items = match id.as_str() {
            "r-ok" => vec![
                Ok(run(&id, RunState::Running)),
                Ok(run(&id, RunState::Succeeded)),
            ],
            "r-fail" => vec![
                Ok(run(&id, RunState::Running)),
                Ok(run(&id, RunState::Failed)),
            ],
            _ => vec![
                Ok(run(&id, RunState::Running)),
                Err(Status::unavailable("leader lost")),
            ],
        };
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }
    type FollowLogsStream = BoxStream<LogChunk>;
    async fn follow_logs(
        &self,
        request: Request<FollowLogsRequest>,
    ) -> Result<Response<Self::FollowLogsStream>, Status> {
        let meta = request.metadata().clone();
        let req = request.into_inner();
        self.check_read(format!("logs {} {}", req.stage, req.attempt), &meta)?;
        let items = vec![
            Ok(chunk(1, 1, "b1\n")),
            Ok(chunk(1, 0, "a1\n")),
            Ok(chunk(1, 1, "b1\n")),
            Ok(chunk(2, 0, "a2\n")),
        ];
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }
    async fn approve(&self, _: Request<ApproveRequest>) -> Result<Response<Run>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn reject(&self, _: Request<RejectRequest>) -> Result<Response<Run>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_agents(
        &self,
        _: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_environments(
        &self,
        _: Request<ListEnvironmentsRequest>,
    ) -> Result<Response<ListEnvironmentsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn environment_history(
        &self,
        _: Request<EnvironmentHistoryRequest>,
    ) -> Result<Response<EnvironmentHistoryResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn rollback(&self, _: Request<RollbackRequest>) -> Result<Response<Run>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn open_incident(
        &self,
        _: Request<cd_proto::v1::OpenIncidentRequest>,
    ) -> Result<Response<cd_proto::v1::Incident>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn resolve_incident(
        &self,
        _: Request<cd_proto::v1::ResolveIncidentRequest>,
    ) -> Result<Response<cd_proto::v1::Incident>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_incidents(
        &self,
        _: Request<cd_proto::v1::ListIncidentsRequest>,
    ) -> Result<Response<cd_proto::v1::ListIncidentsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_metrics(
        &self,
        _: Request<cd_proto::v1::GetMetricsRequest>,
    ) -> Result<Response<cd_proto::v1::Metrics>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_audit(
        &self,
        _: Request<cd_proto::v1::ListAuditRequest>,
    ) -> Result<Response<cd_proto::v1::ListAuditResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn revoke(
        &self,
        _: Request<cd_proto::v1::RevokeRequest>,
    ) -> Result<Response<cd_proto::v1::RevokeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn set_secret(
        &self,
        _: Request<cd_proto::v1::SetSecretRequest>,
    ) -> Result<Response<cd_proto::v1::SecretInfo>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn delete_secret(
        &self,
        _: Request<cd_proto::v1::DeleteSecretRequest>,
    ) -> Result<Response<cd_proto::v1::DeleteSecretResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_secrets(
        &self,
        _: Request<cd_proto::v1::ListSecretsRequest>,
    ) -> Result<Response<cd_proto::v1::ListSecretsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    certs: std::path::PathBuf,
}

fn certs() -> Cluster {
    install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    init_ca(&certs, DEFAULT_TRUST_DOMAIN).unwrap();
    issue(&certs, &certs, Role::Coordinator, "n1", &[], 1).unwrap();
    issue(&certs, &certs, Role::Operator, "operator", &[], 1).unwrap();
    Cluster { _dir: dir, certs }
}

/// A listener on a random port, and its URL.
async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    (listener, url)
}

/// Serves `fake` (and the cluster service of `node`, if any) on `listener`.
fn spawn(certs: &Path, listener: tokio::net::TcpListener, fake: Fake, node: Option<FakeNode>) {
    let tls = server_tls(&TlsPaths::in_dir(certs, "n1")).unwrap();
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(ControlServiceServer::new(fake))
            .add_optional_service(node.map(ClusterServiceServer::new))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
}

/// Serves `fake` on a random port; returns its URL.
async fn serve(certs: &Path, fake: Fake) -> String {
    let (listener, url) = listen().await;
    spawn(certs, listener, fake, None);
    url
}

/// A URL where nothing listens.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("https://127.0.0.1:{}", l.local_addr().unwrap().port())
}

fn fake() -> (Fake, Calls) {
    let calls = Calls::default();
    (
        Fake {
            leader: None,
            calls: calls.clone(),
        },
        calls,
    )
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cdctl(certs: &Path, endpoint: &str, args: &[&str]) -> Out {
    cdctl_env(certs, endpoint, args, &[]).await
}

async fn cdctl_env(certs: &Path, endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cdctl"))
        .args(args)
        .env_remove("CD_CA")
        .env_remove("CD_CERT")
        .env_remove("CD_KEY")
        .env_remove("CD_STALE")
        .env("CD_ENDPOINT", endpoint)
        .env("CD_CERT_DIR", certs)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_start_prints_only_the_id_and_errors_are_one_line() {
    let c = certs();
    let (f, _) = fake();
    let url = serve(&c.certs, f).await;

    let out = cdctl(&c.certs, &url, &["run", "start", "web", "--param", "A=1"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (0, "r-42\n", "")
    );

    let out = cdctl(&c.certs, &url, &["run", "start", "missing"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        "error: run start: not found: pipeline \"missing\" does not exist\n"
    );

    let out = cdctl(&c.certs, &url, &["run", "start", "bad"]).await;
    assert_eq!(out.code, 2);
    assert_eq!(
        out.stderr,
        "error: run start: invalid argument: params.X: too long\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_list_skips_a_dead_endpoint_and_follows_the_leader() {
    let c = certs();
    let (f, leader_calls) = fake();
    let leader = serve(&c.certs, f).await;
    let follower_calls = Calls::default();
    let follower = serve(
        &c.certs,
        Fake {
            leader: Some(leader.clone()),
            calls: follower_calls.clone(),
        },
    )
    .await;
    let dead = dead_url();

    let endpoints = format!("{dead},{follower}");
    let out = cdctl(&c.certs, &endpoints, &["run", "start", "web"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "r-42\n"),
        "{}",
        out.stderr
    );
    assert_eq!(*follower_calls.lock().unwrap(), ["start web"]);
    assert_eq!(*leader_calls.lock().unwrap(), ["start web"]);

    let out = cdctl(&c.certs, &dead, &["run", "show", "r-1"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with(&format!("error: connect to {dead}: ")),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_watch_exit_codes() {
    let c = certs();
    let (f, _) = fake();
    let url = serve(&c.certs, f).await;

    let out = cdctl(&c.certs, &url, &["run", "watch", "r-ok"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("build running (attempt 2 on agent-2)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap()
            .contains("run r-ok succeeded")
    );

    let out = cdctl(&c.certs, &url, &["run", "watch", "r-fail"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .lines()
            .last()
            .unwrap()
            .contains("run r-fail failed")
    );
    assert_eq!(out.stderr, "");

    let out = cdctl(&c.certs, &url, &["run", "watch", "r-broken"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        format!("error: run watch: the stream from {url} broke: unavailable: leader lost\n")
    );

    let out = cdctl(
        &c.certs,
        &url,
        &["run", "start", "web", "--watch", "-o", "json"],
    )
    .await;
    // The fake's watch of r-42 breaks after one update.
    assert_eq!(out.code, 1);
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    let first = &lines[0];
    assert_eq!(first["id"], "r-42");
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_are_raw_in_order_with_attempt_headers() {
    let c = certs();
    let (f, calls) = fake();
    let url = serve(&c.certs, f).await;
    let out = cdctl(&c.certs, &url, &["logs", "r-ok", "build"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "a1\nb1\na2\n");
    assert_eq!(out.stderr, "--- attempt 1 ---\n--- attempt 2 ---\n");
    assert_eq!(*calls.lock().unwrap(), ["get r-ok", "logs build 0"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_list_follows_pages_and_apply_sends_an_absolute_base_dir() {
    let c = certs();
    let (f, calls) = fake();
    let url = serve(&c.certs, f).await;

    let out = cdctl(&c.certs, &url, &["run", "list", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let ids: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r1", "r2", "r3"]);
    assert_eq!(runs[1]["state"], "failed");

    let out = cdctl(&c.certs, &url, &["run", "list", "--limit", "2"]).await;
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);

    let file = c.certs.join("web.yaml");
    std::fs::write(&file, "name: web\n").unwrap();
    let out = cdctl(
        &c.certs,
        &url,
        &["pipeline", "apply", "-f", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(
        out.stdout, "pipeline web version 2 (unchanged)\n",
        "{}",
        out.stderr
    );
    let dir = std::fs::canonicalize(&c.certs).unwrap();
    assert!(
        calls
            .lock()
            .unwrap()
            .contains(&format!("apply {} {}", file.display(), dir.display()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_follow_the_leader_unless_stale() {
    let c = certs();
    let (f, leader_calls) = fake();
    let leader = serve(&c.certs, f).await;
    let follower_calls = Calls::default();
    let follower = serve(
        &c.certs,
        Fake {
            leader: Some(leader.clone()),
            calls: follower_calls.clone(),
        },
    )
    .await;
    let take = |calls: &Calls| std::mem::take(&mut *calls.lock().unwrap());
    // The dead first endpoint is skipped for reads too.
    let endpoints = format!("{},{follower}", dead_url());

    // A linearizable read at a follower is redirected to the leader.
    let out = cdctl(&c.certs, &endpoints, &["run", "show", "r-1", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(take(&follower_calls), ["get r-1"]);
    assert_eq!(take(&leader_calls), ["get r-1"]);

    // --stale: every read carries cd-stale and the follower answers it itself.
    let out = cdctl(&c.certs, &endpoints, &["--stale", "logs", "r-ok", "build"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "a1\nb1\na2\n");
    assert_eq!(
        take(&follower_calls),
        ["get r-ok stale", "logs build 0 stale"]
    );
    assert!(take(&leader_calls).is_empty());

    let out = cdctl_env(
        &c.certs,
        &endpoints,
        &["run", "list", "-o", "json"],
        &[("CD_STALE", "true")],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(take(&follower_calls), ["list  stale", "list p2 stale"]);
    assert!(take(&leader_calls).is_empty());

    let out = cdctl(&c.certs, &follower, &["--stale", "run", "watch", "r-ok"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(take(&follower_calls), ["watch r-ok stale"]);

    // CD_STALE=false is off.
    let out = cdctl_env(
        &c.certs,
        &follower,
        &["run", "show", "r-1"],
        &[("CD_STALE", "false")],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(take(&follower_calls), ["get r-1"]);
    assert_eq!(take(&leader_calls), ["get r-1"]);

    // Writes never carry it, so they still go to the leader.
    let out = cdctl(&c.certs, &follower, &["--stale", "run", "start", "web"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "r-42\n"),
        "{}",
        out.stderr
    );
    assert_eq!(take(&follower_calls), ["start web"]);
    assert_eq!(take(&leader_calls), ["start web"]);
}

/// The state the fake coordinators share: who is a member where, who leads.
#[derive(Default)]
struct FakeCluster {
    members: BTreeMap<u64, String>,
    leader: u64,
    /// How many more writes every node answers UNAVAILABLE without a leader (an election).
    electing: u32,
    /// Each node's digest: (applied, digest).
    digests: BTreeMap<u64, (u64, String)>,
    /// Calls in order, as `n<id> <call>` (with ` stale` if the call carried cd-stale).
    calls: Vec<String>,
}

type Shared = Arc<Mutex<FakeCluster>>;

/// One fake coordinator's `ClusterService`.
#[derive(Clone)]
struct FakeNode {
    id: u64,
    shared: Shared,
}

impl FakeNode {
    fn record(&self, st: &mut FakeCluster, call: String, metadata: &MetadataMap) {
        let stale = if is_stale(metadata) { " stale" } else { "" };
        st.calls.push(format!("n{} {call}{stale}", self.id));
    }

    /// What this node says: itself in full; the leader also knows its peers' progress,
    /// followers show them as `unknown`.
    fn status(&self, st: &FakeCluster) -> ClusterStatus {
        let leading = st.leader == self.id;
        let nodes = st
            .members
            .iter()
            .map(|(&id, address)| {
                let base = NodeInfo {
                    id,
                    address: address.clone(),
                    voter: true,
                    ..Default::default()
                };
                if id == self.id {
                    NodeInfo {
                        role: if leading { "leader" } else { "follower" }.into(),
                        term: 7,
                        commit: 100,
                        applied: 100 - id,
                        ..base
                    }
                } else if leading {
                    NodeInfo {
                        role: "follower".into(),
                        lag: id,
                        last_contact_ms: 100 * id as i64,
                        ..base
                    }
                } else {
                    NodeInfo {
                        role: "unknown".into(),
                        ..base
                    }
                }
            })
            .collect();
        ClusterStatus {
            node_id: self.id,
            leader_id: st.leader,
            leader_address: st.members.get(&st.leader).cloned().unwrap_or_default(),
            nodes,
        }
    }

    /// A write: refused during an election, redirected by a follower.
    fn write(&self, st: &mut FakeCluster, call: String, meta: &MetadataMap) -> Result<(), Status> {
        self.record(st, call, meta);
        if st.electing > 0 {
            st.electing -= 1;
            return Err(Status::unavailable(
                "not the leader (no leader elected yet); retry",
            ));
        }
        if st.leader != self.id {
            return Err(not_the_leader(&st.members[&st.leader]));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl ClusterService for FakeNode {
    async fn status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let mut st = self.shared.lock().unwrap();
        self.record(&mut st, "status".into(), request.metadata());
        Ok(Response::new(self.status(&st)))
    }
    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let mut st = self.shared.lock().unwrap();
        let meta = request.metadata().clone();
        let req = request.into_inner();
        self.write(&mut st, format!("add {} {}", req.id, req.address), &meta)?;
        st.members.insert(req.id, req.address);
        Ok(Response::new(self.status(&st)))
    }
    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let mut st = self.shared.lock().unwrap();
        let meta = request.metadata().clone();
        let id = request.into_inner().id;
        self.write(&mut st, format!("remove {id}"), &meta)?;
        if id == self.id {
            // Like the real leader: hand leadership over, then name the new leader.
            let next = *st.members.keys().find(|&&m| m != id).unwrap();
            st.leader = next;
            return Err(not_the_leader(&st.members[&next]));
        }
        st.members.remove(&id);
        Ok(Response::new(self.status(&st)))
    }
    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let mut st = self.shared.lock().unwrap();
        let meta = request.metadata().clone();
        let id = request.into_inner().id;
        self.write(&mut st, format!("transfer {id}"), &meta)?;
        st.leader = id;
        Ok(Response::new(self.status(&st)))
    }
    async fn state_digest(
        &self,
        request: Request<StateDigestRequest>,
    ) -> Result<Response<StateDigestResponse>, Status> {
        let mut st = self.shared.lock().unwrap();
        self.record(&mut st, "digest".into(), request.metadata());
        let (applied, digest) = st.digests[&self.id].clone();
        Ok(Response::new(StateDigestResponse { applied, digest }))
    }
    async fn set_faults(
        &self,
        _: Request<SetFaultsRequest>,
    ) -> Result<Response<SetFaultsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Starts fake coordinators `running` (each with its cluster service) and adds `dead` members
/// whose address nothing listens on; `leader` leads. Returns the shared state and the URLs.
async fn fake_cluster(
    certs: &Path,
    running: &[u64],
    dead: &[u64],
    leader: u64,
) -> (Shared, BTreeMap<u64, String>) {
    let shared = Shared::default();
    let mut urls = BTreeMap::new();
    for &id in running {
        let (listener, url) = listen().await;
        urls.insert(id, url);
        let (f, _) = fake();
        let node = FakeNode {
            id,
            shared: shared.clone(),
        };
        spawn(certs, listener, f, Some(node));
    }
    for &id in dead {
        urls.insert(id, dead_url());
    }
    {
        let mut st = shared.lock().unwrap();
        st.members = urls.clone();
        st.leader = leader;
        for &id in running {
            st.digests.insert(id, (100, "d-100".into()));
        }
    }
    (shared, urls)
}

fn take_calls(shared: &Shared) -> Vec<String> {
    std::mem::take(&mut shared.lock().unwrap().calls)
}

fn json_rows(stdout: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_status_merges_every_node_and_notes_the_unreachable() {
    let c = certs();
    let (shared, urls) = fake_cluster(&c.certs, &[1, 2], &[3], 1).await;

    // Only the follower is given: the others are found through its member list.
    let out = cdctl(&c.certs, &urls[&2], &["cluster", "status", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows = json_rows(&out.stdout);
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    let leader = &rows[0];
    assert_eq!(leader["id"], 1);
    assert_eq!(leader["address"], urls[&1].as_str());
    assert_eq!(leader["role"], "leader");
    assert_eq!(leader["applied"], 99);
    assert_eq!(leader["lag"], 0);
    assert_eq!(leader["last_contact_ms"], serde_json::Value::Null);
    let follower = &rows[1];
    // Its own role/term/applied, the leader's lag and last contact.
    assert_eq!(follower["role"], "follower");
    assert_eq!(follower["term"], 7);
    assert_eq!(follower["applied"], 98);
    assert_eq!(follower["lag"], 2);
    assert_eq!(follower["last_contact_ms"], 200);
    assert_eq!(follower["error"], serde_json::Value::Null);
    let dead = &rows[2];
    assert_eq!(dead["id"], 3);
    assert_eq!(dead["role"], "unreachable");
    assert_eq!(dead["applied"], serde_json::Value::Null);
    assert_eq!(dead["lag"], 3);
    assert!(
        dead["error"].as_str().unwrap().starts_with("connect: "),
        "{dead}"
    );
    assert_eq!(
        out.stderr,
        format!("note: 1 of 3 nodes did not answer: node 3 ({})\n", urls[&3])
    );
    let mut calls = take_calls(&shared);
    calls.sort();
    assert_eq!(calls, ["n1 status", "n2 status"]);

    // Table mode, with an unknown dead endpoint first in the list: it gets a row of its own.
    let stranger = dead_url();
    let endpoints = format!("{stranger},{}", urls[&1]);
    let out = cdctl(&c.certs, &endpoints, &["--stale", "cluster", "status"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 5, "{}", out.stdout);
    assert_eq!(
        lines[0],
        [
            "ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "LAST", "CONTACT",
            "VOTER", "ERROR"
        ]
    );
    assert_eq!(
        lines[1],
        [
            "1",
            urls[&1].as_str(),
            "leader",
            "7",
            "100",
            "99",
            "0",
            "-",
            "yes",
            "-"
        ]
    );
    assert_eq!(
        lines[2][..7],
        ["2", urls[&2].as_str(), "follower", "7", "100", "98", "2"]
    );
    assert_eq!(lines[3][..3], ["3", urls[&3].as_str(), "unreachable"]);
    assert_eq!(lines[4][..3], ["-", stranger.as_str(), "unreachable"]);
    assert!(
        out.stderr
            .starts_with("note: 2 of 4 nodes did not answer: ")
    );
    // cluster status never carries cd-stale.
    assert!(take_calls(&shared).iter().all(|c| !c.ends_with("stale")));

    // Nobody answers: an error.
    let out = cdctl(&c.certs, &urls[&3], &["cluster", "status"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with(&format!(
            "error: cluster status: no node answered: {}: connect: ",
            urls[&3]
        )),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_add_and_remove_follow_the_leader() {
    let c = certs();
    let (shared, urls) = fake_cluster(&c.certs, &[1, 2, 3], &[], 1).await;
    // A dead endpoint first, then a follower.
    let endpoints = format!("{},{}", dead_url(), urls[&2]);
    let new_node = dead_url();

    let out = cdctl(&c.certs, &endpoints, &["cluster", "add", "4", &new_node]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let calls = take_calls(&shared);
    assert_eq!(
        calls[..2],
        [
            format!("n2 add 4 {new_node}"),
            format!("n1 add 4 {new_node}")
        ]
    );
    // Then the status of everyone but the leader, whose answer to the write is used.
    let mut rest = calls[2..].to_vec();
    rest.sort();
    assert_eq!(rest, ["n2 status", "n3 status"]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "node 4 added as a learner at {new_node}; the leader makes it a voter once it has \
             caught up"
        )
    );
    assert_eq!(lines[1], "");
    assert!(lines[2].starts_with("ID "));
    let row4: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("4 "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row4[..3], ["4", new_node.as_str(), "unreachable"]);
    assert!(
        out.stderr.contains(&format!("node 4 ({new_node})")),
        "{}",
        out.stderr
    );

    // Removing the leader through a follower: the follower names the leader, the leader hands
    // over and names the new leader (node 2), which removes it.
    let out = cdctl(
        &c.certs,
        &endpoints,
        &["cluster", "remove", "1", "-o", "json"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let calls = take_calls(&shared);
    assert_eq!(calls[..3], ["n2 remove 1", "n1 remove 1", "n2 remove 1"]);
    let rows = json_rows(&out.stdout);
    let ids: Vec<&serde_json::Value> = rows.iter().map(|r| &r["id"]).collect();
    // Node 1 is gone from the members; the dead endpoint has a row of its own.
    assert_eq!(
        ids,
        [
            &serde_json::json!(2),
            &serde_json::json!(3),
            &serde_json::json!(4),
            &serde_json::Value::Null
        ]
    );
    assert_eq!(rows[0]["role"], "leader");
    assert_eq!(shared.lock().unwrap().leader, 2);

    // transfer-leader at a node that no longer leads is redirected too.
    let out = cdctl(&c.certs, &urls[&3], &["cluster", "transfer-leader", "3"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("node 3 is the leader\n"),
        "{}",
        out.stdout
    );
    assert_eq!(take_calls(&shared)[..2], ["n3 transfer 3", "n2 transfer 3"]);

    // A server-side refusal is one error line.
    let out = cdctl(&c.certs, &urls[&3], &["cluster", "add", "0", &new_node]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = cdctl(&c.certs, &urls[&3], &["cluster", "add", "5", "ftp://x"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn unavailable_without_a_leader_is_retried_until_one_answers() {
    let c = certs();
    let (shared, urls) = fake_cluster(&c.certs, &[1, 2], &[], 1).await;
    shared.lock().unwrap().electing = 3;
    let endpoints = format!("{},{}", urls[&1], urls[&2]);
    let started = std::time::Instant::now();
    let out = cdctl(&c.certs, &endpoints, &["cluster", "transfer-leader", "2"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Three refusals, moving along the endpoint list between pauses, then the follower names
    // the leader.
    let calls = take_calls(&shared);
    assert_eq!(
        calls[..5],
        [
            "n1 transfer 2",
            "n2 transfer 2",
            "n1 transfer 2",
            "n2 transfer 2",
            "n1 transfer 2"
        ]
    );
    // Pauses of 100, 200 and 400 ms.
    assert!(started.elapsed() >= std::time::Duration::from_millis(700));
    assert_eq!(shared.lock().unwrap().leader, 2);

    // One endpoint: the same node is asked again.
    shared.lock().unwrap().electing = 2;
    let out = cdctl(&c.certs, &urls[&2], &["cluster", "transfer-leader", "1"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        take_calls(&shared)[..3],
        ["n2 transfer 1", "n2 transfer 1", "n2 transfer 1"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_digest_compares_nodes_at_the_same_index() {
    let c = certs();
    let (shared, urls) = fake_cluster(&c.certs, &[1, 2, 3], &[4], 1).await;
    let out = cdctl(&c.certs, &urls[&1], &["cluster", "digest"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ID", "ADDRESS", "APPLIED", "DIGEST", "ERROR"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["1", urls[&1].as_str(), "100", "d-100", "-"]
    );
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>()[..3],
        ["4", urls[&4].as_str(), "-"]
    );
    assert_eq!(
        *lines.last().unwrap(),
        "all 3 nodes agree: same digest at applied index 100"
    );
    assert!(out.stderr.starts_with("note: 1 of 4 nodes did not answer"));

    shared
        .lock()
        .unwrap()
        .digests
        .insert(3, (100, "d-other".into()));
    shared
        .lock()
        .unwrap()
        .digests
        .insert(2, (90, "d-90".into()));
    let out = cdctl(&c.certs, &urls[&1], &["cluster", "digest", "-o", "json"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["agree"], false);
    assert_eq!(v["groups"][0]["applied"], 90);
    assert_eq!(v["groups"][0]["agree"], true);
    assert_eq!(v["groups"][1]["applied"], 100);
    assert_eq!(v["groups"][1]["agree"], false);
    assert_eq!(v["nodes"][2]["digest"], "d-other");
}
