//! etcd side by side: a 3-member etcd cluster (the `etcd` binary on PATH, e.g. Debian's
//! etcd-server) on 127.0.0.1 with its data in the scratch dir, driven through its gRPC KV API
//! by the same tonic client stack, connection count and load driver as Conveyor:
//! sequential `Put` latency from one client, and `Put`s per second from many. Both talk to
//! the leader (found with `Maintenance.Status`), as the Conveyor figures do. Each `Put`'s key
//! and value together are as large as the Raft command of the Conveyor commit figure.
//!
//! Two setups: plain HTTP/2 (no TLS anywhere), and mutual TLS on client and peer traffic with
//! certificates from the run's CA (what Conveyor always runs with). etcd keeps its defaults
//! otherwise (it fsyncs its WAL before acknowledging, as Conveyor fsyncs its Raft log).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cd_common::certs::Role;
use cd_common::tls::TlsPaths;
use cd_tests::{Proc, eventually};
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use super::node::{self, BenchEnv};
use super::report::Value;
use super::stats::{micros, percentile};
use super::{commit, load};

const MEMBERS: usize = 3;
const KEY: &[u8] = b"cd-bench/put";

#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    cluster_id: u64,
    #[prost(uint64, tag = "2")]
    member_id: u64,
    #[prost(int64, tag = "3")]
    revision: i64,
    #[prost(uint64, tag = "4")]
    raft_term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    version: String,
    #[prost(int64, tag = "3")]
    db_size: i64,
    #[prost(uint64, tag = "4")]
    leader: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Plain,
    MutualTls,
}

impl Security {
    /// How figure names call this setup.
    pub fn label(self) -> &'static str {
        match self {
            Security::Plain => "etcd (plain)",
            Security::MutualTls => "etcd (mTLS)",
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Security::Plain => "http",
            Security::MutualTls => "https",
        }
    }
}

/// The etcd binary, and its version line, or why it cannot run.
pub fn check(etcd: &str) -> Result<String> {
    let out = Command::new(etcd)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "running `{etcd} --version`: the etcd figures need etcd 3.x \
             (Debian: apt-get install etcd-server), or leave out --only etcd"
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find(|l| l.starts_with("etcd Version"))
        .ok_or_else(|| anyhow!("`{etcd} --version` printed no version: {text}"))?;
    Ok(version.trim().to_string())
}

struct EtcdCluster {
    procs: Vec<Proc>,
    client_urls: Vec<String>,
    dir: PathBuf,
}

impl EtcdCluster {
    fn start(env: &BenchEnv, etcd: &str, sec: Security, name: &str) -> Result<EtcdCluster> {
        let dir = env.root.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let scheme = sec.scheme();
        let ports = node::free_ports(2 * MEMBERS)?;
        let url = |p: &u16| format!("{scheme}://127.0.0.1:{p}");
        let client_urls: Vec<String> = ports[..MEMBERS].iter().map(url).collect();
        let peer_urls: Vec<String> = ports[MEMBERS..].iter().map(url).collect();
        let initial = peer_urls
            .iter()
            .enumerate()
            .map(|(i, u)| format!("e{}={u}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Vec::new();
        for i in 0..MEMBERS {
            let member = format!("e{}", i + 1);
            let log = dir.join(format!("{member}.log"));
            let mut cmd = Command::new(etcd);
            cmd.arg("--name")
                .arg(&member)
                .arg("--data-dir")
                .arg(dir.join(&member))
                .args(["--listen-client-urls", &client_urls[i]])
                .args(["--advertise-client-urls", &client_urls[i]])
                .args(["--listen-peer-urls", &peer_urls[i]])
                .args(["--initial-advertise-peer-urls", &peer_urls[i]])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", name])
                .args(["--logger", "zap", "--log-outputs", "stderr"]);
            if sec == Security::MutualTls {
                let tls = env.certs.tls(Role::Coordinator, &format!("etcd-{}", i + 1));
                for prefix in ["", "peer-"] {
                    cmd.arg(format!("--{prefix}cert-file"))
                        .arg(&tls.cert)
                        .arg(format!("--{prefix}key-file"))
                        .arg(&tls.key)
                        .arg(format!("--{prefix}trusted-ca-file"))
                        .arg(&tls.ca)
                        .arg(format!("--{prefix}client-cert-auth"));
                }
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .with_context(|| format!("spawning {etcd}"))?;
            procs.push(Proc { child, log });
        }
        Ok(EtcdCluster {
            procs,
            client_urls,
            dir,
        })
    }

    /// Whether a member's log says its port was in use.
    fn port_taken(&self) -> bool {
        self.procs.iter().any(|p| {
            p.log_text()
                .to_ascii_lowercase()
                .contains("address already in use")
        })
    }

    /// Whether a member has exited (e.g. it could not bind its port).
    fn exited(&self) -> bool {
        self.procs.iter().any(|p| !cd_tests::alive(p.pid()))
    }

    /// CPU seconds the members have used so far, together.
    fn cpu_secs(&self) -> Result<f64> {
        let mut total = 0.0;
        for p in &self.procs {
            total += node::cpu_secs(p.pid())?;
        }
        Ok(total)
    }

    fn discard(mut self) {
        for p in &mut self.procs {
            p.kill9();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A channel to one member; with mutual TLS, the client holds the operator certificate.
async fn connect(url: &str, op: &TlsPaths, sec: Security) -> Result<Channel> {
    let mut ep = Endpoint::from_shared(url.to_string())?.connect_timeout(Duration::from_secs(5));
    if sec == Security::MutualTls {
        ep = ep.tls_config(cd_common::tls::client_tls(op, "localhost")?)?;
    }
    ep.connect()
        .await
        .with_context(|| format!("connecting to etcd at {url}"))
}

async fn status(ch: Channel) -> Result<StatusResponse> {
    let mut g = Grpc::new(ch);
    g.ready()
        .await
        .map_err(|e| anyhow!("etcd not ready: {e}"))?;
    Ok(g.unary(
        tonic::Request::new(StatusRequest {}),
        PathAndQuery::from_static("/etcdserverpb.Maintenance/Status"),
        tonic_prost::ProstCodec::default(),
    )
    .await?
    .into_inner())
}

async fn put(mut g: Grpc<Channel>, value: Vec<u8>) -> Result<()> {
    g.ready()
        .await
        .map_err(|e| anyhow!("etcd not ready: {e}"))?;
    let r: tonic::Response<PutResponse> = g
        .unary(
            tonic::Request::new(PutRequest {
                key: KEY.to_vec(),
                value,
            }),
            PathAndQuery::from_static("/etcdserverpb.KV/Put"),
            tonic_prost::ProstCodec::default(),
        )
        .await?;
    if r.into_inner().header.is_none_or(|h| h.revision <= 0) {
        bail!("etcd answered a Put without a revision");
    }
    Ok(())
}

/// Waits until every member answers and they agree on a leader; returns the leader's URL.
async fn leader(env: &BenchEnv, cluster: &EtcdCluster, sec: Security) -> Result<String> {
    let logs: Vec<String> = cluster
        .procs
        .iter()
        .map(|p| p.log.display().to_string())
        .collect();
    eventually(
        &format!("etcd members to agree on a leader (logs {logs:?})"),
        Duration::from_secs(30),
        || async {
            let mut seen = Vec::new();
            if cluster.exited() {
                return Some(Err(anyhow!("an etcd member exited; logs: {logs:?}")));
            }
            for url in &cluster.client_urls {
                let ch = connect(url, &env.op, sec).await.ok()?;
                let s = status(ch).await.ok()?;
                seen.push((url.clone(), s.header?.member_id, s.leader));
            }
            let leader = seen.first()?.2;
            if leader == 0 || seen.iter().any(|(_, _, l)| *l != leader) {
                return None;
            }
            seen.into_iter()
                .find(|(_, id, _)| *id == leader)
                .map(|(url, _, _)| Ok(url))
        },
    )
    .await?
}

/// One repetition of one setup: a fresh etcd cluster, sequential latency, then throughput.
pub async fn run(
    env: &BenchEnv,
    etcd: &str,
    sec: Security,
    rep: usize,
    warmup: usize,
    samples: usize,
    load: load::Load,
) -> Result<Vec<Value>> {
    let name = format!(
        "etcd-{}-{rep}",
        match sec {
            Security::Plain => "plain",
            Security::MutualTls => "mtls",
        }
    );
    let mut attempt = 1;
    let (cluster, url) = loop {
        let cluster = EtcdCluster::start(env, etcd, sec, &name)?;
        match leader(env, &cluster, sec).await {
            Ok(url) => break (cluster, url),
            Err(e) if attempt < node::PORT_ATTEMPTS && cluster.port_taken() => {
                eprintln!("  {name}: a port was taken before a member bound it; new ports ({e})");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let value = vec![b'v'; commit::entry_bytes()?.saturating_sub(KEY.len()).max(1)];

    let g = Grpc::new(connect(&url, &env.op, sec).await?);
    let mut lat = Vec::with_capacity(samples);
    let seq_cpu_before = cluster.cpu_secs()?;
    for i in 0..warmup + samples {
        let t = Instant::now();
        put(g.clone(), value.clone()).await?;
        if i >= warmup {
            lat.push(micros(t.elapsed()));
        }
    }
    let seq_cpu = cluster.cpu_secs()? - seq_cpu_before;

    let op = env.op.clone();
    let cpu_before = cluster.cpu_secs()?;
    let r = load::run(
        load,
        move |_| {
            let (url, op) = (url.clone(), op.clone());
            async move { Ok(Grpc::new(connect(&url, &op, sec).await?)) }
        },
        move |g: Grpc<Channel>| put(g, value.clone()),
    )
    .await?;
    let cpu = cluster.cpu_secs()? - cpu_before;
    cluster.discard();
    let label = sec.label();
    Ok(vec![
        Value::new(format!("{label} put p50"), "µs", percentile(&lat, 50.0)),
        Value::new(format!("{label} put p99"), "µs", percentile(&lat, 99.0)),
        Value::new(
            format!("{label} put: CPU per put, 3 members together"),
            "µs",
            seq_cpu * 1e6 / (warmup + samples) as f64,
        ),
        Value::new(format!("{label} throughput: puts/s"), "puts/s", r.per_sec),
        Value::new(
            format!("{label} throughput: latency p50 under load"),
            "µs",
            r.p50,
        ),
        Value::new(
            format!("{label} throughput: latency p99 under load"),
            "µs",
            r.p99,
        ),
        Value::new(
            format!("{label} throughput: CPU per put, 3 members together"),
            "µs",
            cpu * 1e6 / r.calls as f64,
        ),
    ])
}
