//! The `cd-agent` binary: parses flags, sets up TLS and tracing, and runs the agent until
//! SIGINT or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cd_agent::AgentConfig;
use cd_common::tls::TlsPaths;
use clap::Parser;

/// Conveyor build agent: connects to the coordinator cluster over mutual TLS, runs the stages it
/// is assigned in fresh workspaces, streams their logs and reports their results.
#[derive(Debug, Parser)]
#[command(name = "cd-agent", version, about, long_about = None)]
struct Args {
    /// Agent name shown by `cdctl agents`; must match the name in the agent's certificate
    /// [default: this machine's hostname]
    #[arg(long, env = "CD_AGENT_NAME")]
    name: Option<String>,

    /// Coordinator addresses, comma-separated, tried in order; a follower's leader hint is
    /// followed
    #[arg(
        long,
        env = "CD_ENDPOINT",
        value_delimiter = ',',
        default_value = "https://127.0.0.1:7400"
    )]
    endpoint: Vec<String>,

    /// PEM file of the cluster's CA; the coordinator's certificate must be signed by it
    #[arg(long, env = "CD_CA")]
    ca: PathBuf,

    /// PEM file of this agent's certificate (role `agent`)
    #[arg(long, env = "CD_CERT")]
    cert: PathBuf,

    /// PEM file of this agent's private key
    #[arg(long, env = "CD_KEY")]
    key: PathBuf,

    /// Labels stages can ask for, comma-separated (e.g. linux,gpu)
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,

    /// How many stages run at the same time
    #[arg(long, default_value_t = 2)]
    slots: u32,

    /// Directory for workspaces (work-dir/workspaces/<run>/<stage>/<attempt>); cleared of old
    /// workspaces on start, one agent per directory
    #[arg(long, default_value = "./cd-agent-work")]
    work_dir: PathBuf,

    /// Interval between heartbeats that keep this agent's leases alive (e.g. 2s, 500ms)
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    heartbeat: Duration,

    /// Time a cancelled stage gets between SIGTERM and SIGKILL (e.g. 5s)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    kill_grace: Duration,

    /// Log as JSON lines instead of text (filter with RUST_LOG, default info)
    #[arg(long)]
    log_json: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    cd_common::duration::parse_duration_ms(text).map(Duration::from_millis)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cd-agent".to_string())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cd_common::tls::install_crypto_provider();
    let args = Args::parse();
    cd_common::telemetry::init_tracing(args.log_json);
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line, not a debug dump.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = TlsPaths {
        ca: args.ca,
        cert: args.cert,
        key: args.key,
    };
    let name = args.name.unwrap_or_else(hostname);
    let mut config = AgentConfig::new(name, args.endpoint, tls, args.work_dir);
    config.labels = args.labels.into_iter().filter(|l| !l.is_empty()).collect();
    config.slots = args.slots;
    config.heartbeat_interval = args.heartbeat;
    config.kill_grace = args.kill_grace;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
    };
    cd_agent::run(config, shutdown)
        .await
        .context("cd-agent stopped with an error")
}
