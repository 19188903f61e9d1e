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
        }),
        seq,
        data: data.as_bytes().to_vec(),
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
