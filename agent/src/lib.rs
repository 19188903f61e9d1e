//! `cd-agent`: a Conveyor build agent. It holds an `Attach` stream to the coordinator cluster,
//! runs each assigned stage in a fresh workspace (as a host process, or in a Docker container
//! when the stage names an image and the agent found a Docker engine at start), ships the output
//! as numbered log chunks, and reports the result once the log is acknowledged.
//!
//! Tasks and their links:
//!
//! ```text
//! attach loop --Assignment--> registry.try_begin --> stage task (one per attempt, own span)
//!             --Cancel------> registry.cancel                |  output    ^ cancel (stale ack)
//! heartbeat   --stale-------> registry.cancel                v            |
//!                                                       log shipper --PushLogs--> coordinator
//! ```
//!
//! Entry point: [`run`] with an [`AgentConfig`] and a shutdown future.

pub mod checkout;
pub mod config;
pub mod connection;
pub mod executor;
pub mod heartbeat;
pub mod logship;
pub mod monitor;
pub mod registry;
pub mod reports;
pub mod stage;
mod util;

#[cfg(test)]
mod test_support;

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cd_proto::v1::{AgentMessage, ConnectRequest, agent_message};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

pub use cd_common::duration::format_ms;
pub use config::AgentConfig;

use connection::Connection;
use executor::Backends;
use executor::docker::DockerExecutor;
use executor::process::ProcessExecutor;
use registry::{AttemptKey, CancelReason, Registry};
use stage::StageContext;

/// The agent's version, sent with `Attach`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The label an agent advertises when it can run container stages; the coordinator sends stages
/// with an image only to agents that have it.
pub const DOCKER_LABEL: &str = "docker";

/// How long the Docker engine gets to answer at start.
const DOCKER_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid endpoint {endpoint}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("work directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("work directory {0} is in use by another cd-agent")]
    WorkDirBusy(PathBuf),
}

/// Runs the agent until `shutdown` completes: then running stages are cancelled (and reported
/// as cancelled) with a bounded wait, and the function returns. Connection problems are retried
/// forever, never returned; errors are configuration and work-directory problems found at start.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    config.validate().map_err(AgentError::Config)?;
    // Unreadable certificate files will not fix themselves: refuse now rather than retrying
    // the connection forever.
    cd_common::tls::client_tls(&config.tls, "localhost")
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let _lock = lock_work_dir(&config.work_dir)?;
    // Absolute, so CD_WORKSPACE means the same thing inside the stage as here.
    let work_dir = std::path::absolute(&config.work_dir).map_err(|source| AgentError::WorkDir {
        path: config.work_dir.clone(),
        source,
    })?;
    let workspaces = work_dir.join("workspaces");
    // Containers first: an orphan may still be writing into its workspace.
    let docker = connect_docker(&config.name, &workspaces).await;
    clear_workspaces(&workspaces)?;
    let labels = advertised_labels(&config.labels, docker.is_ok());
    let conn = Arc::new(Connection::new(
        &config.name,
        &config.endpoints,
        config.tls.clone(),
    )?);

    let stop = CancellationToken::new();
    let registry = Arc::new(Registry::new());
    let (logs, shipper) = logship::spawn(conn.clone(), Default::default(), stop.clone());
    let heartbeat = tokio::spawn(
        heartbeat::heartbeat_loop(
            conn.clone(),
            registry.clone(),
            config.heartbeat_interval,
            stop.clone(),
        )
        .in_current_span(),
    );
    let ctx = Arc::new(StageContext {
        api: conn.clone(),
        logs,
        executor: Arc::new(Backends::new(ProcessExecutor::new(&workspaces), docker)),
        registry: registry.clone(),
        slots: Arc::new(Semaphore::new(config.slots as usize)),
        agent: config.name.clone(),
        kill_grace: config.kill_grace,
    });
    let tracker = TaskTracker::new();
    let request = ConnectRequest {
        agent: config.name.clone(),
        labels: labels.clone(),
        slots: config.slots,
        version: VERSION.to_string(),
    };
    let attach_stop = stop.child_token();
    let dispatch = {
        let (ctx, tracker) = (ctx.clone(), tracker.clone());
        move |message: AgentMessage| dispatch(&ctx, &tracker, message)
    };
    let attach = tokio::spawn(
        conn.clone()
            .attach_loop(request, dispatch, attach_stop.clone())
            .in_current_span(),
    );
    info!(agent = %config.name, endpoints = ?config.endpoints, slots = config.slots, ?labels, "agent started");

    shutdown.await;
    info!("shutting down: cancelling running stages");
    attach_stop.cancel();
    registry.close(CancelReason::Shutdown);
    tracker.close();
    if tokio::time::timeout(config.shutdown_wait(), tracker.wait())
        .await
        .is_err()
    {
        warn!(left = ?registry.live(), "stages did not finish reporting in time; leaving them");
    }
    stop.cancel();
    let _ = tokio::join!(attach, heartbeat, shipper);
    info!("agent stopped");
    Ok(())
}

/// Connects to the local Docker engine and removes the containers a previous run of this agent
/// left behind. `Err` is the reason container stages cannot run here; it is logged once.
async fn connect_docker(agent: &str, workspaces: &Path) -> Result<DockerExecutor, String> {
    match DockerExecutor::connect(agent, workspaces, DOCKER_PROBE_TIMEOUT).await {
        Ok((docker, engine)) => {
            info!(
                version = %engine.version,
                api = %engine.api_version,
                "Docker engine available; container stages run here"
            );
            match docker.remove_orphans().await {
                Ok(0) => {}
                Ok(n) => info!(containers = n, "removed containers left by a previous run"),
                Err(e) => warn!(error = %e, "cannot remove containers left by a previous run"),
            }
            Ok(docker)
        }
        Err(why) => {
            info!("Docker engine unavailable ({why}); container stages will not be scheduled here");
            Err(why)
        }
    }
}

/// The configured labels, with `docker` added when the engine is usable and dropped when not
/// (the coordinator must not send container stages to an agent that cannot run them).
fn advertised_labels(configured: &[String], docker: bool) -> Vec<String> {
    let mut labels: Vec<String> = configured
        .iter()
        .filter(|l| l.as_str() != DOCKER_LABEL)
        .cloned()
        .collect();
    if docker {
        labels.push(DOCKER_LABEL.to_string());
    } else if labels.len() < configured.len() {
        warn!("label {DOCKER_LABEL} dropped: this agent has no usable Docker engine");
    }
    labels
}

/// Handles one message from the assignment stream.
fn dispatch(ctx: &Arc<StageContext<Connection>>, tracker: &TaskTracker, message: AgentMessage) {
    match message.kind {
        Some(agent_message::Kind::Assignment(assignment)) => {
            let Some(key) = assignment.attempt.as_ref().map(AttemptKey::from) else {
                warn!("assignment without an attempt; ignored");
                return;
            };
            let Some(control) = ctx.registry.try_begin(&key) else {
                debug!(attempt = %key, "assignment already running or finished here; ignored");
                return;
            };
            let span =
                info_span!("attempt", run = %key.run_id, stage = %key.stage, attempt = key.attempt);
            span.in_scope(|| {
                info!(
                    command_bytes = assignment.command.len(),
                    "assignment received"
                )
            });
            tracker
                .spawn(stage::run_attempt(ctx.clone(), assignment, key, control).instrument(span));
        }
        Some(agent_message::Kind::Cancel(cancel)) => {
            let Some(key) = cancel.attempt.as_ref().map(AttemptKey::from) else {
                return;
            };
            if ctx
                .registry
                .cancel(&key, CancelReason::Server(cancel.reason.clone()))
            {
                info!(attempt = %key, reason = %cancel.reason, "cancel received");
            } else {
                debug!(attempt = %key, "cancel for an attempt not running here; ignored");
            }
        }
        None => debug!("empty agent message ignored"),
    }
}

/// Takes an exclusive lock on `work_dir/agent.lock`, so two agents never share (and clear) one
/// work directory. Held until the returned file is dropped.
fn lock_work_dir(work_dir: &Path) -> Result<File, AgentError> {
    let io = |source| AgentError::WorkDir {
        path: work_dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(work_dir).map_err(io)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(work_dir.join("agent.lock"))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(AgentError::WorkDirBusy(work_dir.to_path_buf()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Removes workspaces a previous run of the agent left behind.
fn clear_workspaces(workspaces: &Path) -> Result<(), AgentError> {
    let io = |source| AgentError::WorkDir {
        path: workspaces.to_path_buf(),
        source,
    };
    match std::fs::read_dir(workspaces) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                info!(path = %workspaces.display(), "removing workspaces left by a previous run");
            }
            std::fs::remove_dir_all(workspaces).map_err(io)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    std::fs::create_dir_all(workspaces).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_workspaces_are_cleared_and_the_work_dir_is_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("workspaces/r1/build/1");
        std::fs::create_dir_all(&old).expect("mkdir");
        std::fs::write(old.join("leftover"), b"x").expect("write");

        let lock = lock_work_dir(dir.path()).expect("first lock");
        assert!(matches!(
            lock_work_dir(dir.path()),
            Err(AgentError::WorkDirBusy(_))
        ));
        clear_workspaces(&dir.path().join("workspaces")).expect("clear");
        assert!(dir.path().join("workspaces").is_dir());
        assert!(!dir.path().join("workspaces/r1").exists());
        drop(lock);
        // A process another test forks in this binary holds a copy of the descriptor (and so
        // the flock) until it execs, a few microseconds; retry briefly rather than flake.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let relocked = loop {
            match lock_work_dir(dir.path()) {
                Err(AgentError::WorkDirBusy(_)) if std::time::Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                other => break other,
            }
        };
        assert!(relocked.is_ok(), "the lock is free once dropped");
    }

    #[test]
    fn the_docker_label_follows_the_engine() {
        let configured = vec!["linux".to_string(), "docker".to_string()];
        assert_eq!(advertised_labels(&configured, true), ["linux", "docker"]);
        assert_eq!(advertised_labels(&configured, false), ["linux"]);
        assert_eq!(advertised_labels(&[], true), ["docker"]);
    }
}
