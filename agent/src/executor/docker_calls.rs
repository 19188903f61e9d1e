//! The engine calls the Docker backend makes for a running container, and how each copes with
//! failure: wait until it stops, stop it, read its exit state, read its attached output, remove
//! it. Errors are put in the engine's own words by [`describe`].

use std::time::Duration;

use bollard::Docker;
use bollard::container::{AttachContainerResults, LogOutput};
use bollard::errors::Error as DockerError;
use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{
    KillContainerOptions, RemoveContainerOptions, StopContainerOptions,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::lines::LineBuffer;
use super::{ExecError, OutputPiece, OutputStream};

/// Consecutive failed calls while waiting for the container before the attempt gives up.
const WAIT_FAILURES: u32 = 10;

/// Waits until the container is no longer running. The engine's `wait` is the signal; a broken
/// call is retried after checking the state, and the attempt fails only after repeated errors.
pub async fn wait_stopped(docker: &Docker, id: &str) -> Result<(), ExecError> {
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
                // The wait ended early (a dropped connection): look again shortly.
                tokio::time::sleep(Duration::from_millis(200)).await;
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
pub async fn stop(docker: &Docker, id: &str, grace: Duration) -> Result<(), ExecError> {
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

/// The exit code and whether the OOM killer struck, from inspecting the stopped container.
pub async fn final_state(
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

/// Reads the attached container's stdout and stderr until the container stops (or `stop` fires),
/// sending the same pieces a host process's pipes would give.
pub async fn read_output(
    attached: AttachContainerResults,
    tx: mpsc::Sender<OutputPiece>,
    stop: CancellationToken,
) {
    // The write half (the container's stdin, unused) stays open until the output ends.
    let AttachContainerResults {
        output: mut logs,
        input: _input,
    } = attached;
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
                debug!(error = %describe(&e), "reading the container's output failed");
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
pub async fn remove(docker: &Docker, id: &str) -> Result<(), String> {
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
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
