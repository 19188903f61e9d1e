//! The Docker backend: each attempt runs `sh -c <command>` in a container of the stage's image,
//! with the attempt's workspace (made exactly as for a host process) bind-mounted at
//! `/workspace`.
//!
//! The container is the unit of control. Its output is followed through the engine's log API
//! (stdout and stderr cut into the same pieces as a host process's pipes); its end is the
//! engine's `wait`, and the exit code and the OOM killer's verdict come from inspecting it.
//! Cancellation is the engine's `stop` with the kill grace as timeout (the image's stop signal,
//! SIGTERM by default, then SIGKILL). Every container carries `conveyor.*` labels naming the
//! agent and attempt: `destroy` removes what is left of an attempt by those labels, and an agent
//! starting after a crash removes every container labelled with its name.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{
    CreateImageOptions, KillContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::docker_config::{self, LABEL_AGENT, Pull};
use super::lines::LineBuffer;
use super::process::ProcessExecutor;
use super::{
    ExecError, Execution, Executor, Exit, OutputPiece, OutputStream, StageSpec, Workspace,
};
use crate::format_ms;

/// Output pieces buffered between the log follower and the stage task.
const OUTPUT_QUEUE: usize = 64;
/// How long output may still be read after a cancel once the container has stopped.
const DRAIN_GRACE: Duration = Duration::from_secs(3);
/// A pull that reports no progress for this long has failed.
const PULL_IDLE: Duration = Duration::from_secs(120);
/// The longest a pull may take.
const PULL_LIMIT: Duration = Duration::from_secs(30 * 60);
/// Consecutive failed calls while waiting for the container before the attempt gives up.
const WAIT_FAILURES: u32 = 10;

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
        let docker = Docker::connect_with_local_defaults().map_err(|e| match e {
            DockerError::SocketNotFoundError(path) => format!("socket {path} not found"),
            e => describe(&e),
        })?;
        // bollard 0.21 sends unversioned request paths, so the engine answers in its own API
        // version: this works with engines older than bollard's stubs (20.10 speaks 1.41).
        let version = match tokio::time::timeout(timeout, docker.version()).await {
            Err(_) => {
                return Err(format!(
                    "the engine did not answer within {}",
                    duration_text(timeout)
                ));
            }
            Ok(Err(e)) => return Err(format!("the engine cannot be reached: {}", describe(&e))),
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
        let follower = follow_logs(
            self.docker.clone(),
            created.id.clone(),
            tx,
            stop_reading.clone(),
        );
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

/// Waits until the container is no longer running. The engine's `wait` is the signal; a broken
/// call is retried after checking the state, and the attempt fails only after repeated errors.
async fn wait_stopped(docker: &Docker, id: &str) -> Result<(), ExecError> {
    let mut failures = 0;
    loop {
        let waited = docker.wait_container(id, None).next().await;
        if let Some(Err(e)) = &waited
            && !matches!(e, DockerError::DockerContainerWaitError { .. })
        {
            debug!(error = %describe(e), "waiting for the container failed; checking its state");
        }
        match docker.inspect_container(id, None).await {
            Ok(r) => {
                let state = r.state.unwrap_or_default();
                let running = state.running.unwrap_or(false)
                    || matches!(
                        state.status,
                        Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::PAUSED)
                    );
                if !running {
                    return Ok(());
                }
                failures = 0;
            }
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Err(ExecError::Docker(format!(
                    "the container {} was removed while the stage ran",
                    short(id)
                )));
            }
            Err(e) => {
                failures += 1;
                if failures >= WAIT_FAILURES {
                    return Err(ExecError::Docker(format!(
                        "lost track of the container {}: {}",
                        short(id),
                        describe(&e)
                    )));
                }
                warn!(error = %describe(&e), "cannot inspect the container; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The engine's `stop` with `grace` as its timeout (stop signal, then SIGKILL), then waits until
/// the container is down. If `stop` itself fails the container is killed.
async fn stop(docker: &Docker, id: &str, grace: Duration) -> Result<(), ExecError> {
    let seconds =
        i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)).unwrap_or(i32::MAX);
    let options = StopContainerOptions {
        t: Some(seconds),
        signal: None,
    };
    // The call returns only once the container is down: allow for the whole grace period.
    let caller = docker.clone().with_timeout(grace + Duration::from_secs(60));
    if let Err(e) = caller.stop_container(id, Some(options)).await {
        warn!(error = %describe(&e), "stopping the container failed; killing it");
        let kill = KillContainerOptions {
            signal: "SIGKILL".into(),
        };
        if let Err(e) = docker.kill_container(id, Some(kill)).await {
            debug!(error = %describe(&e), "killing the container failed");
        }
    }
    wait_stopped(docker, id).await
}

/// Waits for the log follower to take the rest of the output. The stream ends by itself once the
/// container has stopped; only a cancel bounds the wait (a last `DRAIN_GRACE` to read).
async fn drain(mut reader: JoinHandle<()>, stop: CancellationToken, cancel: &CancellationToken) {
    tokio::select! {
        _ = &mut reader => return,
        _ = cancel.cancelled() => {}
    }
    if tokio::time::timeout(DRAIN_GRACE, &mut reader)
        .await
        .is_err()
    {
        debug!("output still flowing after the cancel; stopping the log follower");
        stop.cancel();
        let _ = reader.await;
    }
}

/// The exit code and whether the OOM killer struck, from inspecting the stopped container.
async fn final_state(
    docker: &Docker,
    id: &str,
    memory_bytes: u64,
) -> Result<(i32, bool), ExecError> {
    let inspect = || async {
        let r = docker.inspect_container(id, None).await.map_err(|e| {
            ExecError::Docker(format!(
                "cannot read the exit state of the container {}: {}",
                short(id),
                describe(&e)
            ))
        })?;
        let state = r.state.unwrap_or_default();
        let code = state.exit_code.unwrap_or(-1);
        let code = i32::try_from(code).unwrap_or(-1);
        Ok::<_, ExecError>((code, state.oom_killed.unwrap_or(false)))
    };
    let (code, oom) = inspect().await?;
    // The engine learns of an OOM kill from a separate event: a SIGKILLed container under a
    // memory limit is looked at once more.
    if !oom && memory_bytes > 0 && code == 128 + 9 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return inspect().await;
    }
    Ok((code, oom))
}

/// Follows the container's stdout and stderr from its start until it stops (or `stop` fires),
/// sending the same pieces a host process's pipes would give.
async fn follow_logs(
    docker: Docker,
    id: String,
    tx: mpsc::Sender<OutputPiece>,
    stop: CancellationToken,
) {
    let options = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut logs = Box::pin(docker.logs(&id, Some(options)));
    let (mut out, mut err) = (LineBuffer::default(), LineBuffer::default());
    let mut receiver_gone = false;
    loop {
        let item = tokio::select! {
            biased;
            item = logs.next() => item,
            _ = stop.cancelled() => break,
        };
        let (stream, bytes) = match item {
            None => break,
            Some(Err(e)) => {
                debug!(error = %describe(&e), "following the container's output failed");
                break;
            }
            Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                (OutputStream::Stdout, message)
            }
            Some(Ok(LogOutput::StdErr { message })) => (OutputStream::Stderr, message),
            Some(Ok(LogOutput::StdIn { .. })) => continue,
        };
        let lines = match stream {
            OutputStream::Stdout => &mut out,
            OutputStream::Stderr => &mut err,
        };
        for data in lines.push(&bytes) {
            if !receiver_gone && tx.send(OutputPiece { stream, data }).await.is_err() {
                receiver_gone = true;
            }
        }
    }
    for (stream, lines) in [(OutputStream::Stdout, out), (OutputStream::Stderr, err)] {
        if let Some(data) = lines.finish()
            && !receiver_gone
        {
            let _ = tx.send(OutputPiece { stream, data }).await;
        }
    }
}

/// Force-removes a container; one that is already gone counts as removed.
async fn remove(docker: &Docker, id: &str) -> Result<(), String> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(())
        | Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        // Removal already in progress (the engine answers 409).
        Err(DockerError::DockerResponseServerError {
            status_code: 409,
            message,
        }) if message.contains("already in progress") => Ok(()),
        Err(e) => Err(describe(&e)),
    }
}

/// The engine's own message for server errors; the whole cause chain for transport errors.
pub fn describe(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        DockerError::RequestTimeoutError => "the engine did not answer in time".into(),
        e => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text = format!("{text}: {cause_text}");
                }
                source = cause.source();
            }
            text
        }
    }
}

/// The short form of a container id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `timeout` as text for messages (`2m`, `500ms`).
fn duration_text(timeout: Duration) -> String {
    format_ms(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
}
