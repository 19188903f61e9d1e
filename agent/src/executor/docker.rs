//! The Docker backend: each attempt runs `sh -c <command>` in a container of the stage's image,
//! with the attempt's workspace (made exactly as for a host process) bind-mounted at
//! `/workspace`.
//!
//! The container is the unit of control. Its output is read by attaching to it before it starts
//! (the engine connects the streams before it answers the attach, so nothing is missed; following
//! the log API instead can lose the last lines of a short-lived container on engines such as
//! 20.10), and cut into the same pieces as a host process's pipes. A slow reader holds the
//! container's writes back, as a pipe would. Its end is the engine's `wait`; the exit code and
//! the OOM killer's verdict come from inspecting it.
//! Cancellation is the engine's `stop` with the kill grace as timeout (the image's stop signal,
//! SIGTERM by default, then SIGKILL). Every container carries `conveyor.*` labels naming the
//! agent and attempt: `destroy` removes what is left of an attempt by those labels, and an agent
//! starting after a crash removes every container labelled with its name.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    AttachContainerOptions, CreateImageOptions, ListContainersOptions,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::docker_calls::{describe, final_state, read_output, remove, short, stop, wait_stopped};
use super::docker_config::{self, LABEL_AGENT, Pull};
use super::process::ProcessExecutor;
use super::{ExecError, Execution, Executor, Exit, OutputPiece, StageSpec, Workspace};
use crate::format_ms;

/// Output pieces buffered between the output reader and the stage task.
const OUTPUT_QUEUE: usize = 64;
/// How long output may still be read after a cancel once the container has stopped.
const DRAIN_GRACE: Duration = Duration::from_secs(3);
/// How long output may still be read once the container has stopped, at most.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// A pull that reports no progress for this long has failed.
const PULL_IDLE: Duration = Duration::from_secs(120);
/// The longest a pull may take.
const PULL_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Runs stages in containers of the local Docker engine. Workspaces are laid out as for host
/// processes, under `root`.
#[derive(Debug, Clone)]
pub struct DockerExecutor {
    docker: Docker,
    files: ProcessExecutor,
    agent: String,
}

/// What the engine said about itself when the agent connected.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub version: String,
    pub api_version: String,
}

impl DockerExecutor {
    /// Connects to the local engine (`/var/run/docker.sock`) and checks that it answers within
    /// `timeout`. The error is one line saying why the engine cannot be used.
    pub async fn connect(
        agent: &str,
        root: impl Into<std::path::PathBuf>,
        timeout: Duration,
    ) -> Result<(Self, EngineInfo), String> {
        let socket = docker_config::DOCKER_SOCKET;
        let docker = Docker::connect_with_local_defaults().map_err(|e| match e {
            DockerError::SocketNotFoundError(path) => format!("socket {path} not found"),
            e => format!("cannot use the socket {socket}: {}", describe(&e)),
        })?;
        // bollard 0.21 sends unversioned request paths, so the engine answers in its own API
        // version: this works with engines older than bollard's stubs (20.10 speaks 1.41).
        let version = match tokio::time::timeout(timeout, docker.version()).await {
            Err(_) => {
                return Err(format!(
                    "the engine at {socket} did not answer within {}",
                    duration_text(timeout)
                ));
            }
            Ok(Err(e)) => {
                return Err(format!(
                    "the engine at {socket} cannot be reached: {}",
                    describe(&e)
                ));
            }
            Ok(Ok(version)) => version,
        };
        let info = EngineInfo {
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
        };
        let executor = Self {
            docker,
            files: ProcessExecutor::new(root),
            agent: agent.to_string(),
        };
        Ok((executor, info))
    }

    /// Force-removes every container labelled with this agent's name: what a previous run of the
    /// agent (crashed, killed) left behind. Returns how many were removed.
    pub async fn remove_orphans(&self) -> Result<usize, String> {
        let labels = HashMap::from([(LABEL_AGENT.to_string(), self.agent.clone())]);
        self.remove_labelled(&labels).await
    }

    /// Force-removes every container (running or not) carrying all of `labels`.
    async fn remove_labelled(&self, labels: &HashMap<String, String>) -> Result<usize, String> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(docker_config::label_filter(labels)),
            ..Default::default()
        };
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| format!("cannot list containers: {}", describe(&e)))?;
        let mut removed = 0;
        for id in containers.into_iter().filter_map(|c| c.id) {
            match remove(&self.docker, &id).await {
                Ok(()) => removed += 1,
                Err(e) => warn!(container = %short(&id), error = %e, "cannot remove a container"),
            }
        }
        Ok(removed)
    }

    /// Makes sure `image` is present as `pull` asks.
    async fn ensure_image(&self, image: &str, pull: Pull) -> Result<(), ExecError> {
        if pull != Pull::Always {
            match self.docker.inspect_image(image).await {
                Ok(_) => return Ok(()),
                Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => {
                    return Err(ExecError::Docker(format!(
                        "cannot look up image {image}: {}",
                        describe(&e)
                    )));
                }
            }
            if pull == Pull::Never {
                return Err(ExecError::Docker(format!(
                    "image {image} is not present on this agent's Docker engine and image_pull is \
                     never, so it is not pulled"
                )));
            }
        }
        self.pull(image).await
    }

    /// Pulls `image`, failing when the engine reports an error, when no progress arrives for
    /// `PULL_IDLE`, or after `PULL_LIMIT`.
    async fn pull(&self, image: &str) -> Result<(), ExecError> {
        info!(image, "pulling image");
        let options = CreateImageOptions {
            from_image: Some(docker_config::pull_reference(image)),
            ..Default::default()
        };
        let mut progress = Box::pin(self.docker.create_image(Some(options), None, None));
        let deadline = Instant::now() + PULL_LIMIT;
        let failed = |why: String| ExecError::Docker(format!("cannot pull image {image}: {why}"));
        loop {
            let idle_until = (Instant::now() + PULL_IDLE).min(deadline);
            match tokio::time::timeout_at(idle_until, progress.next()).await {
                Ok(None) => return Ok(()),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(failed(describe(&e))),
                Err(_) if Instant::now() >= deadline => {
                    return Err(failed(format!(
                        "not done after {}",
                        duration_text(PULL_LIMIT)
                    )));
                }
                Err(_) => {
                    return Err(failed(format!(
                        "no progress for {}",
                        duration_text(PULL_IDLE)
                    )));
                }
            }
        }
    }

    async fn start_container(
        &self,
        spec: &StageSpec,
        workspace: &Workspace,
    ) -> Result<DockerExecution, ExecError> {
        if spec.image.is_empty() {
            return Err(ExecError::Unsupported(
                "the Docker executor needs an image".into(),
            ));
        }
        let pull = Pull::parse(&spec.container.image_pull)?;
        give_workspace_to(&spec.container.user, workspace.path());
        let body = docker_config::create_body(spec, workspace, &self.agent)?;
        self.ensure_image(&spec.image, pull).await?;
        let created = self
            .docker
            .create_container(None, body)
            .await
            .map_err(|e| {
                ExecError::Docker(format!(
                    "cannot create a container of {}: {}",
                    spec.image,
                    describe(&e)
                ))
            })?;
        for warning in &created.warnings {
            warn!(image = %spec.image, warning = %warning, "the engine warned about the container");
        }
        // From here on the guard removes the container unless `wait` does it first.
        let guard = ContainerGuard {
            docker: self.docker.clone(),
            id: Some(created.id.clone()),
        };
        let attach = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let attached = self
            .docker
            .attach_container(&created.id, Some(attach))
            .await
            .map_err(|e| {
                ExecError::Docker(format!(
                    "cannot attach to the container of {}: {}",
                    spec.image,
                    describe(&e)
                ))
            })?;
        self.docker
            .start_container(&created.id, None)
            .await
            .map_err(|e| {
                ExecError::Docker(format!(
                    "cannot start the container of {}: {}",
                    spec.image,
                    describe(&e)
                ))
            })?;
        debug!(container = %short(&created.id), image = %spec.image, "container started");
        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
        let stop_reading = CancellationToken::new();
        let follower = read_output(attached, tx, stop_reading.clone());
        Ok(DockerExecution {
            docker: self.docker.clone(),
            id: created.id,
            guard,
            output: Some(rx),
            reader: tokio::spawn(follower.in_current_span()),
            stop_reading,
            memory_bytes: spec.container.memory_bytes,
        })
    }
}

impl Executor for DockerExecutor {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn prepare<'a>(&'a self, spec: &'a StageSpec) -> BoxFuture<'a, Result<Workspace, ExecError>> {
        self.files.prepare(spec)
    }

    fn start<'a>(
        &'a self,
        spec: &'a StageSpec,
        workspace: &'a Workspace,
    ) -> BoxFuture<'a, Result<Box<dyn Execution>, ExecError>> {
        Box::pin(async move {
            let execution = self.start_container(spec, workspace).await?;
            Ok(Box::new(execution) as Box<dyn Execution>)
        })
    }

    fn destroy(&self, workspace: Workspace) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async move {
            let labels = docker_config::attempt_labels(&self.agent, workspace.key());
            match self.remove_labelled(&labels).await {
                Ok(0) => {}
                Ok(n) => debug!(containers = n, "removed the attempt's containers"),
                Err(e) => warn!(error = %e, "cannot remove the attempt's containers"),
            }
            self.files.destroy(workspace).await
        })
    }
}

/// Force-removes the container when dropped unless it was removed already: a start that failed
/// after create, or an execution dropped before `wait` finished.
struct ContainerGuard {
    docker: Docker,
    id: Option<String>,
}

impl ContainerGuard {
    /// Removes the container now.
    async fn remove(&mut self) {
        if let Some(id) = self.id.take()
            && let Err(e) = remove(&self.docker, &id).await
        {
            warn!(container = %short(&id), error = %e, "cannot remove the container");
        }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let docker = self.docker.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(
                async move {
                    if let Err(e) = remove(&docker, &id).await {
                        warn!(container = %short(&id), error = %e, "cannot remove the container");
                    }
                }
                .in_current_span(),
            );
        }
    }
}

/// One running container.
struct DockerExecution {
    docker: Docker,
    id: String,
    guard: ContainerGuard,
    output: Option<mpsc::Receiver<OutputPiece>>,
    reader: JoinHandle<()>,
    stop_reading: CancellationToken,
    memory_bytes: u64,
}

impl Execution for DockerExecution {
    fn take_output(&mut self) -> Option<mpsc::Receiver<OutputPiece>> {
        self.output.take()
    }

    fn wait(
        self: Box<Self>,
        cancel: CancellationToken,
        grace: Duration,
    ) -> BoxFuture<'static, Result<Exit, ExecError>> {
        Box::pin(async move {
            let DockerExecution {
                docker,
                id,
                mut guard,
                reader,
                stop_reading,
                memory_bytes,
                ..
            } = *self;
            let ended = tokio::select! {
                ended = wait_stopped(&docker, &id) => Some(ended),
                _ = cancel.cancelled() => None,
            };
            let terminated = ended.is_none();
            let stopped = match ended {
                Some(ended) => ended,
                None => stop(&docker, &id, grace).await,
            };
            if let Err(e) = stopped {
                stop_reading.cancel();
                return Err(e);
            }
            drain(reader, stop_reading, &cancel).await;
            let state = final_state(&docker, &id, memory_bytes).await;
            guard.remove().await;
            let (code, oom_killed) = state?;
            Ok(Exit {
                code: Some(code),
                signal: None,
                terminated,
                oom_killed,
            })
        })
    }
}

/// Waits for the output reader to take the rest of the output. The stream ends by itself once the
/// container has stopped; a cancel leaves it `DRAIN_GRACE` more, and `DRAIN_LIMIT` bounds the
/// wait in any case (an engine that never closes the stream).
async fn drain(mut reader: JoinHandle<()>, stop: CancellationToken, cancel: &CancellationToken) {
    tokio::select! {
        _ = &mut reader => return,
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(DRAIN_LIMIT) => {
            warn!(limit = ?DRAIN_LIMIT, "the container's output did not end after it stopped");
        }
    }
    if tokio::time::timeout(DRAIN_GRACE, &mut reader)
        .await
        .is_err()
    {
        debug!("output still flowing after the cancel; stopping the output reader");
        stop.cancel();
        let _ = reader.await;
    }
}

/// `timeout` as text for messages (`2m`, `500ms`).
fn duration_text(timeout: Duration) -> String {
    format_ms(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
}

/// A stage that runs as a numeric `uid[:gid]` gets its workspace chowned to it, so it can write
/// there (the agent made it, usually as root). Names cannot be resolved outside the image, so
/// they keep the agent's ownership; a failed chown (an agent that is not root) is logged and
/// the stage runs anyway.
fn give_workspace_to(user: &str, dir: &std::path::Path) {
    let mut parts = user.splitn(2, ':');
    let Some(Ok(uid)) = parts
        .next()
        .filter(|u| !u.is_empty())
        .map(str::parse::<u32>)
    else {
        return;
    };
    let gid = match parts.next().map(str::parse::<u32>) {
        Some(Ok(g)) => Some(g),
        Some(Err(_)) => return,
        None => None,
    };
    if let Err(e) = chown_tree(dir, uid, gid) {
        warn!(user, dir = %dir.display(), error = %e, "cannot hand the workspace to the stage's user");
    }
}

fn chown_tree(path: &std::path::Path, uid: u32, gid: Option<u32>) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), gid)?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}
