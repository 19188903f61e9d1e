//! Dev mode: one node in a temp dir (or --data-dir) with generated certificates and a local
//! agent, and optionally one pipeline run followed live until it ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use cd_common::certs::{self, Role};
use cd_common::tls::TlsPaths;
use cd_coordinator::server::{Coordinator, CoordinatorConfig};
use cd_proto::v1 as pb;
use cd_proto::v1::control_service_client::ControlServiceClient;
use clap::Args;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

#[derive(Args)]
pub struct DevArgs {
    /// Keep data (and certificates) here instead of a temp dir removed on exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address for the gRPC API. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Apply this pipeline file, start a run and show its progress.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Parameters for the run (environment variables of every stage), repeatable.
    #[arg(long = "param", value_name = "K=V")]
    params: Vec<String>,
    /// Revision recorded on the run.
    #[arg(long, default_value = "dev")]
    revision: String,
    /// Exit when the run ends, with exit code 0 if it succeeded and 1 otherwise.
    #[arg(long, requires = "run")]
    once: bool,
    /// Stage slots of the built-in agent.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Lease of an assignment without a heartbeat.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    lease: Duration,
}

/// Certificates for the node, the built-in agent and the operator, made once per data dir.
fn dev_certs(dir: &Path) -> anyhow::Result<(TlsPaths, TlsPaths, TlsPaths)> {
    let ca = dir.join("ca.pem");
    if !ca.exists() {
        certs::init_ca(dir, certs::DEFAULT_TRUST_DOMAIN).context("creating the dev CA")?;
    }
    let make = |role: Role, name: &str| -> anyhow::Result<TlsPaths> {
        let paths = TlsPaths::in_dir(dir, name);
        if !paths.cert.exists() {
            certs::issue(dir, dir, role, name, &[], 365)
                .with_context(|| format!("issuing {name}"))?;
        }
        Ok(paths)
    };
    Ok((
        make(Role::Coordinator, "node-1")?,
        make(Role::Agent, "dev-agent")?,
        make(Role::Operator, "operator")?,
    ))
}

pub async fn run(args: DevArgs) -> anyhow::Result<u8> {
    let (data_dir, _temp) = match &args.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new().prefix("conveyor-dev-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let cert_dir = data_dir.join("certs");
    std::fs::create_dir_all(&cert_dir)?;
    let (node_tls, agent_tls, op_tls) = dev_certs(&cert_dir)?;
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let any = SocketAddr::new(args.listen.ip(), 0);
            eprintln!(
                "{} is in use; listening on a free port instead",
                args.listen
            );
            tokio::net::TcpListener::bind(any)
                .await
                .with_context(|| format!("cannot listen on {any}"))?
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {}", args.listen)),
    };
    let addr = listener.local_addr()?;
    let endpoint = format!("https://{addr}");
    let shutdown = crate::shutdown_on_signals();
    let mut cfg = CoordinatorConfig::new(data_dir.join("node"), node_tls);
    cfg.lease = args.lease;
    // Secrets work in dev mode too: a key made on first start, kept with the data.
    let key_file = data_dir.join("secret.key");
    if !key_file.exists() {
        let hex = cd_coordinator::secret_key::SecretKey::generate_hex()?;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_file)
            .and_then(|mut f| f.write_all(format!("{hex}\n").as_bytes()))
            .with_context(|| format!("cannot write {}", key_file.display()))?;
    }
    cfg.secret_key = Some(std::sync::Arc::new(
        cd_coordinator::secret_key::SecretKey::load(&key_file)?,
    ));
    let coordinator = Coordinator::start(cfg, listener, shutdown.clone())?;

    let agent_cfg = cd_agent::AgentConfig {
        name: "dev-agent".into(),
        labels: vec!["linux".into(), "dev".into()],
        slots: args.slots,
        endpoints: vec![endpoint.clone()],
        tls: agent_tls,
        work_dir: data_dir.join("agent"),
        heartbeat_interval: Duration::from_secs(2),
        kill_grace: Duration::from_secs(5),
    };
    let agent_stop = shutdown.clone();
    let agent =
        tokio::spawn(async move { cd_agent::run(agent_cfg, agent_stop.cancelled_owned()).await });

    eprintln!(
        "Conveyor dev coordinator on {endpoint} (data in {})",
        data_dir.display()
    );
    eprintln!("Point cdctl at it with:");
    eprintln!(
        "  export CD_ENDPOINT={endpoint} CD_CERT_DIR={}",
        cert_dir.display()
    );
    if args.data_dir.is_none() {
        eprintln!("(data is removed on exit; pass --data-dir to keep it)");
    }

    let mut code = 0;
    if let Some(file) = &args.run {
        match drive_run(&endpoint, &op_tls, file, &args, &shutdown).await {
            Ok(c) => code = c,
            Err(e) => {
                eprintln!("error: {e:#}");
                code = 1;
            }
        }
        if args.once {
            shutdown.cancel();
        }
    }
    if !args.once {
        eprintln!("Running; press Ctrl-C to stop.");
    }
    shutdown.cancelled().await;
    if let Ok(Err(e)) = agent.await {
        eprintln!("agent: {e}");
    }
    coordinator.wait().await?;
    Ok(code)
}

async fn connect(endpoint: &str, tls: &TlsPaths) -> anyhow::Result<ControlServiceClient<Channel>> {
    let cfg = cd_common::tls::client_tls(tls, "localhost")?;
    let channel = Endpoint::from_shared(endpoint.to_string())?
        .tls_config(cfg)?
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    Ok(ControlServiceClient::new(channel))
}

fn parse_params(params: &[String]) -> anyhow::Result<HashMap<String, String>> {
    params
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--param {p:?}: expected K=V"),
        })
        .collect()
}

/// Applies the pipeline, starts a run and prints each stage change until the run ends.
async fn drive_run(
    endpoint: &str,
    tls: &TlsPaths,
    file: &Path,
    args: &DevArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<u8> {
    let yaml =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let abs = std::fs::canonicalize(file)?;
    let base_dir = abs
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut client = connect(endpoint, tls).await?;
    let applied = client
        .apply_pipeline(pb::ApplyPipelineRequest {
            spec_yaml: yaml,
            file_name: file.display().to_string(),
            base_dir,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let pipeline = applied.pipeline.map(|p| p.name).unwrap_or_default();
    let run = client
        .start_run(pb::StartRunRequest {
            pipeline: pipeline.clone(),
            revision: args.revision.clone(),
            params: parse_params(&args.params)?,
            trigger: "dev".into(),
            commit_at_ms: 0,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    eprintln!("Run {} of pipeline {pipeline} started", run.id);
    let mut stream = client
        .watch_run(pb::WatchRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let mut seen: HashMap<String, (i32, usize)> = HashMap::new();
    let mut last = run;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(1),
            m = stream.message() => m,
        };
        match next {
            Ok(Some(r)) => {
                print_changes(&r, &mut seen);
                last = r;
            }
            Ok(None) => break,
            Err(s) => bail!("watching {}: {}", last.id, s.message()),
        }
    }
    let state = pb::RunState::try_from(last.state).unwrap_or(pb::RunState::Unspecified);
    let ok = state == pb::RunState::Succeeded;
    eprintln!(
        "Run {} {}{}",
        last.id,
        state
            .as_str_name()
            .trim_start_matches("RUN_STATE_")
            .to_lowercase(),
        if last.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", last.reason)
        }
    );
    Ok(if ok { 0 } else { 1 })
}

fn print_changes(run: &pb::Run, seen: &mut HashMap<String, (i32, usize)>) {
    for s in &run.stages {
        let now = (s.state, s.attempts.len());
        if seen.get(&s.name) == Some(&now) {
            continue;
        }
        seen.insert(s.name.clone(), now);
        let state = pb::StageState::try_from(s.state)
            .map(|st| {
                st.as_str_name()
                    .trim_start_matches("STAGE_STATE_")
                    .to_lowercase()
            })
            .unwrap_or_else(|_| "unknown".into());
        let mut line = format!("  {:<20} {state}", s.name);
        if let Some(a) = s.attempts.last() {
            line.push_str(&format!(" (attempt {} on {})", a.number, a.agent));
        }
        if !s.reason.is_empty() {
            line.push_str(&format!(" — {}", s.reason));
        }
        eprintln!("{line}");
    }
}
