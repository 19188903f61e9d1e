//! `cd-coordinator`: `serve` runs a node; `dev` runs a throwaway single node with its own
//! certificates and an agent in the same process (like `vault server -dev`).

mod dev;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use cd_common::tls::TlsPaths;
use cd_coordinator::server::{Coordinator, CoordinatorConfig};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "cd-coordinator",
    version,
    about = "Conveyor coordinator: stores pipeline state with Raft and schedules stages onto agents"
)]
struct Cli {
    /// Log as JSON lines (for log shippers) instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a coordinator node with certificates from `cdctl certs`.
    Serve(Box<ServeArgs>),
    /// Run a single throwaway node with generated certificates and a built-in agent; with
    /// --run, apply a pipeline, start it and show its progress.
    Dev(dev::DevArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Raft id of this node.
    #[arg(long, default_value_t = 1)]
    node_id: u64,
    /// Address for the gRPC API (agents and cdctl). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Directory for the Raft log, snapshots and logs (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Cluster CA certificate (PEM).
    #[arg(long, env = "CD_CA")]
    ca: PathBuf,
    /// This node's certificate (PEM), issued with `cdctl certs issue --role coordinator`.
    #[arg(long, env = "CD_NODE_CERT")]
    cert: PathBuf,
    /// This node's private key (PEM).
    #[arg(long, env = "CD_NODE_KEY")]
    key: PathBuf,
    /// How long an agent keeps a stage without a heartbeat before it is requeued.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    lease: std::time::Duration,
    /// Snapshot the state and compact the Raft log after this many entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Largest pipeline spec accepted, in bytes.
    #[arg(long, default_value_t = cd_common::spec::MAX_SPEC_BYTES)]
    max_spec_bytes: usize,
    /// Largest log chunk (and total result error text) an agent may send, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_log_chunk_bytes: usize,
    /// Writes (apply, start, cancel, approve, ...) per second per identity; 0: unlimited
    /// (the default, so benchmarks and bulk imports are not throttled unless asked).
    #[arg(long, default_value_t = 0.0)]
    write_rate: f64,
    /// Largest request metadata (all gRPC header names and values), in bytes.
    #[arg(long, default_value_t = 8 * 1024)]
    max_metadata_bytes: usize,
    /// Writes one identity may make in a burst above --write-rate.
    #[arg(long, default_value_t = 200)]
    write_burst: u32,
    /// Messages queued for one server stream (an agent's Attach, WatchRun, FollowLogs) before
    /// the coordinator waits for the client to read.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    max_stream_inflight: u32,
    /// How long a server stream's queue may stay full (the client not reading) before the
    /// stream is ended with RESOURCE_EXHAUSTED naming --max-stream-inflight.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    stream_stall_timeout: std::time::Duration,
    /// Every initial member as ID=URL, comma-separated, the same on every node, e.g.
    /// `1=https://10.0.0.1:7400,2=https://10.0.0.2:7400,3=https://10.0.0.3:7400`.
    /// Omit to run a cluster of one.
    #[arg(long, value_parser = parse_cluster)]
    initial_cluster: Option<BTreeMap<u64, String>>,
    /// Join a running cluster (run `cdctl cluster add ID URL` first); --initial-cluster then
    /// lists the current members and this node.
    #[arg(long)]
    join: bool,
    /// URL other nodes and clients use to reach this node (default: this node's entry in
    /// --initial-cluster, else https://<listen address>).
    #[arg(long)]
    advertise: Option<String>,
    /// Raft tick: heartbeats every 2 ticks, elections after 10-20 ticks without a leader.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    raft_tick: std::time::Duration,
    /// Serve Prometheus gauges (MTTR, MTBF, DORA per environment) at http://ADDR/metrics,
    /// plain HTTP, from this node's applied state. Off unless given.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// The window the /metrics figures cover, ending at scrape time; 0s for all history.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    metrics_window: std::time::Duration,
    /// Serve `POST /hooks/<pipeline>` for pipelines with `trigger.webhook` on this address
    /// (HTTPS with this node's certificate; no client certificate asked). Off by default.
    #[arg(long)]
    webhook_listen: Option<SocketAddr>,
    /// File holding the cluster's secret key: 32 random bytes as 64 hex characters (make one
    /// with `head -c 32 /dev/urandom | xxd -p -c 64`). Every coordinator of a cluster needs the
    /// same key. Without it `cdctl secret set` is refused and stages needing secrets fail.
    #[arg(long, env = "CD_SECRET_KEY_FILE", value_name = "PATH")]
    secret_key_file: Option<PathBuf>,
    /// Accept the SetFaults RPC, which drops raft messages to chosen nodes. For tests only.
    #[arg(long, hide = true)]
    enable_fault_injection: bool,
}

fn parse_cluster(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, url) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected ID=URL"))?;
        let id: u64 = id
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| format!("{part:?}: the id must be a positive integer"))?;
        if !url.starts_with("https://") {
            return Err(format!("{part:?}: the URL must start with https://"));
        }
        if out.insert(id, url.to_string()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if out.is_empty() {
        return Err("no members given".into());
    }
    Ok(out)
}

pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    cd_common::duration::parse_duration_ms(s).map(std::time::Duration::from_millis)
}

/// Cancels the token on SIGINT or SIGTERM.
pub(crate) fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut cfg = CoordinatorConfig::new(
        args.data_dir,
        TlsPaths {
            ca: args.ca,
            cert: args.cert,
            key: args.key,
        },
    );
    cfg.node_id = args.node_id;
    if let Some(c) = args.initial_cluster {
        anyhow::ensure!(
            c.contains_key(&args.node_id),
            "--initial-cluster does not list this node (--node-id {})",
            args.node_id
        );
        cfg.initial_cluster = c;
    }
    cfg.join = args.join;
    cfg.advertise = args.advertise;
    cfg.tick = args.raft_tick;
    cfg.fault_injection = args.enable_fault_injection;
    cfg.lease = args.lease;
    cfg.snapshot_every = args.snapshot_every;
    anyhow::ensure!(
        args.max_spec_bytes <= cd_common::spec::MAX_SPEC_BYTES,
        "--max-spec-bytes may not exceed the parser's own bound of {} bytes",
        cd_common::spec::MAX_SPEC_BYTES
    );
    cfg.limits.max_spec = args.max_spec_bytes;
    cfg.limits.max_log_chunk = args.max_log_chunk_bytes;
    anyhow::ensure!(
        args.write_rate >= 0.0 && args.write_rate.is_finite(),
        "--write-rate must be a number of writes per second, 0 or more"
    );
    cfg.limits.write_rate = args.write_rate;
    cfg.limits.write_burst = args.write_burst;
    cfg.limits.max_metadata = args.max_metadata_bytes;
    cfg.limits.max_stream_inflight = args.max_stream_inflight as usize;
    anyhow::ensure!(
        !args.stream_stall_timeout.is_zero(),
        "--stream-stall-timeout must be longer than 0"
    );
    cfg.limits.stream_stall = args.stream_stall_timeout;
    let metrics_listener = match args.metrics_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (--metrics-listen)"))?,
        ),
        None => None,
    };
    cfg.webhook_listen = args.webhook_listen;
    if let Some(path) = &args.secret_key_file {
        let key = cd_coordinator::secret_key::SecretKey::load(path)?;
        tracing::info!(key_id = ?key, "secrets enabled");
        cfg.secret_key = Some(std::sync::Arc::new(key));
    }
    let shutdown = shutdown_on_signals();
    let coordinator = Coordinator::start(cfg, listener, shutdown.clone())?;
    if let Some(l) = metrics_listener {
        tracing::info!(addr = %l.local_addr()?, "serving Prometheus metrics at /metrics");
        let window = i64::try_from(args.metrics_window.as_millis()).unwrap_or(i64::MAX);
        tokio::spawn(cd_coordinator::prometheus::serve(
            l,
            coordinator.node.clone(),
            window,
            shutdown,
        ));
    }
    // Tests and scripts read this line to learn the port.
    println!("listening on https://{addr}");
    tracing::info!(%addr, "coordinator serving");
    coordinator.wait().await?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    cd_common::tls::install_crypto_provider();
    // Reads FAILPOINTS when built with the `failpoints` feature (tests); otherwise nothing.
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let default_filter = if matches!(cli.cmd, Cmd::Dev(_)) {
        "warn"
    } else {
        "info"
    };
    cd_common::telemetry::init_tracing_with_default(cli.log_json, default_filter);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Serve(a) => serve(*a).await.map(|()| 0),
            Cmd::Dev(a) => dev::run(a).await,
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
