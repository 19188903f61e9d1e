//! The host-process backend: `sh -c <command>` in its own process group, in a workspace under
//! `work_dir/workspaces/<run>/<stage>/<attempt>`.
//!
//! The process group is the unit of control: cancellation sends SIGTERM to the group, SIGKILL
//! after the grace period, and whatever is still in the group when the shell exits (background
//! jobs like `sleep 100 &`) is killed too, so no stage outlives its attempt.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use super::lines::LineBuffer;
use super::{
    ExecError, Execution, Executor, Exit, OutputPiece, OutputStream, StageSpec, Workspace,
};
use crate::registry::AttemptKey;

/// Output pieces buffered between the pipe readers and the stage task.
const OUTPUT_QUEUE: usize = 64;
/// How long output may stay open after the process group is gone (a process that left the group
/// may hold the pipe); after that the readers take what is buffered and stop.
const DRAIN_GRACE: Duration = Duration::from_secs(3);
/// Bytes still read from a pipe after the readers were told to stop.
const DRAIN_LIMIT: usize = 256 * 1024;

/// Runs stages as host processes. Workspaces live under `root`.
#[derive(Debug, Clone)]
pub struct ProcessExecutor {
    root: PathBuf,
}

impl ProcessExecutor {
    /// `root` is `work_dir/workspaces`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let root = std::path::absolute(&root).unwrap_or(root);
        Self { root }
    }

    /// Where the attempt's workspace lives.
    pub fn workspace_path(&self, key: &AttemptKey) -> PathBuf {
        self.root
            .join(path_component(&key.run_id))
            .join(path_component(&key.stage))
            .join(key.attempt.to_string())
    }
}

impl Executor for ProcessExecutor {
    fn name(&self) -> &'static str {
        "process"
    }

    fn prepare<'a>(&'a self, spec: &'a StageSpec) -> BoxFuture<'a, Result<Workspace, ExecError>> {
        let path = self.workspace_path(&spec.key);
        let (source, key) = (spec.source.clone(), spec.key.clone());
        Box::pin(async move {
            let task = tokio::task::spawn_blocking(move || prepare_blocking(path, source, key));
            task.await.map_err(|e| ExecError::Workspace {
                path: PathBuf::new(),
                message: e.to_string(),
            })?
        })
    }

    fn start<'a>(
        &'a self,
        spec: &'a StageSpec,
        workspace: &'a Workspace,
    ) -> BoxFuture<'a, Result<Box<dyn Execution>, ExecError>> {
        Box::pin(async move {
            if !spec.image.is_empty() {
                return Err(ExecError::Unsupported(format!(
                    "image {}: container stages are not supported by the process executor",
                    spec.image
                )));
            }
            let execution = ProcessExecution::spawn(spec, workspace)?;
            Ok(Box::new(execution) as Box<dyn Execution>)
        })
    }

    fn destroy(&self, workspace: Workspace) -> BoxFuture<'_, Result<(), ExecError>> {
        let root = self.root.clone();
        Box::pin(async move {
            let path = workspace.path().to_path_buf();
            let task = tokio::task::spawn_blocking(move || destroy_blocking(&root, &path));
            task.await.map_err(|e| ExecError::Workspace {
                path: workspace.path().to_path_buf(),
                message: e.to_string(),
            })?
        })
    }
}

/// A name from the network made safe as one path component; changed names get a hash suffix so
/// two different names never share a directory.
fn path_component(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    if out != name {
        let mut h = DefaultHasher::new();
        name.hash(&mut h);
        out.push_str(&format!("-{:08x}", h.finish() as u32));
    }
    out
}

fn prepare_blocking(
    path: PathBuf,
    source: Option<PathBuf>,
    key: AttemptKey,
) -> Result<Workspace, ExecError> {
    let ws_err = |message: String| ExecError::Workspace {
        path: path.clone(),
        message,
    };
    match std::fs::remove_dir_all(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ws_err(format!("cannot clear an old workspace: {e}"))),
    }
    std::fs::create_dir_all(&path).map_err(|e| ws_err(e.to_string()))?;
    if let Some(source) = source {
        copy_source(&source, &path).map_err(|message| ExecError::CopySource {
            source_dir: source.clone(),
            message,
        })?;
    }
    Ok(Workspace::new(path, key))
}

fn copy_source(source: &Path, dest: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(source).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    let (src_real, dest_real) = (
        source.canonicalize().map_err(|e| e.to_string())?,
        dest.canonicalize().map_err(|e| e.to_string())?,
    );
    if dest_real.starts_with(&src_real) {
        return Err("the workspace lies inside the source directory".into());
    }
    copy_tree(source, dest)
}

/// Copies the contents of `from` into the existing directory `to`: directories, regular files
/// (with permissions) and symlinks (as links). Other file types are skipped.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", from.display()))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", src.display()))?;
        let result = if kind.is_dir() {
            std::fs::create_dir(&dst)
                .map_err(|e| e.to_string())
                .and_then(|()| copy_tree(&src, &dst))
        } else if kind.is_file() {
            std::fs::copy(&src, &dst)
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else if kind.is_symlink() {
            std::fs::read_link(&src)
                .and_then(|target| std::os::unix::fs::symlink(target, &dst))
                .map_err(|e| e.to_string())
        } else {
            Ok(())
        };
        result.map_err(|e| {
            if e.starts_with('/') {
                e
            } else {
                format!("{}: {e}", src.display())
            }
        })?;
    }
    Ok(())
}

fn destroy_blocking(root: &Path, path: &Path) -> Result<(), ExecError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ExecError::Workspace {
                path: path.to_path_buf(),
                message: format!("cannot remove: {e}"),
            });
        }
    }
    // Remove the now empty <stage> and <run> directories; a non-empty one stays.
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Kills the process group if the execution is dropped before `wait` finished.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn signal(&self, signal: Signal) -> bool {
        match self.pgid {
            Some(pgid) => killpg(pgid, signal).is_ok(),
            None => false,
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// One running `sh -c`.
struct ProcessExecution {
    child: Child,
    group: GroupGuard,
    output: Option<mpsc::Receiver<OutputPiece>>,
    readers: Vec<JoinHandle<()>>,
    stop_reading: CancellationToken,
}

impl ProcessExecution {
    fn spawn(spec: &StageSpec, workspace: &Workspace) -> Result<Self, ExecError> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&spec.command)
            .current_dir(workspace.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // The agent's own CD_* settings (endpoint, key paths) are not the stage's business.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CD_") {
                cmd.env_remove(name);
            }
        }
        cmd.envs(&spec.env);
        cmd.envs(&spec.secrets.0);
        let mut child = cmd.spawn().map_err(ExecError::Spawn)?;
        let group = GroupGuard {
            pgid: child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(Pid::from_raw),
        };
        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
        let stop_reading = CancellationToken::new();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let pump = pump(out, OutputStream::Stdout, tx.clone(), stop_reading.clone());
            readers.push(tokio::spawn(pump.in_current_span()));
        }
        if let Some(err) = child.stderr.take() {
            let pump = pump(err, OutputStream::Stderr, tx, stop_reading.clone());
            readers.push(tokio::spawn(pump.in_current_span()));
        }
        Ok(Self {
            child,
            group,
            output: Some(rx),
            readers,
            stop_reading,
        })
    }
}

impl Execution for ProcessExecution {
    fn take_output(&mut self) -> Option<mpsc::Receiver<OutputPiece>> {
        self.output.take()
    }

    fn wait(
        self: Box<Self>,
        cancel: CancellationToken,
        grace: Duration,
    ) -> BoxFuture<'static, Result<Exit, ExecError>> {
        Box::pin(async move {
            let ProcessExecution {
                mut child,
                mut group,
                readers,
                stop_reading,
                ..
            } = *self;
            let finished = tokio::select! {
                status = child.wait() => Some(status),
                _ = cancel.cancelled() => None,
            };
            let terminated = finished.is_none();
            let status = match finished {
                Some(status) => status,
                None => terminate(&mut child, &group, grace).await,
            }
            .map_err(ExecError::Wait)?;
            // Background jobs still in the group die with the stage.
            if group.signal(Signal::SIGKILL) {
                debug!("killed processes the command left running");
            }
            group.pgid = None;
            drain(readers, stop_reading).await;
            use std::os::unix::process::ExitStatusExt;
            Ok(Exit {
                code: status.code(),
                signal: status.signal(),
                terminated,
                oom_killed: false,
            })
        })
    }
}

/// SIGTERM to the group, then SIGKILL after `grace` if the shell has not exited.
async fn terminate(
    child: &mut Child,
    group: &GroupGuard,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    group.signal(Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            warn!(grace = ?grace, "command still running after SIGTERM; sending SIGKILL");
            group.signal(Signal::SIGKILL);
            child.wait().await
        }
    }
}

/// Waits for the pipe readers; after `DRAIN_GRACE` tells them to take what is buffered and stop.
async fn drain(readers: Vec<JoinHandle<()>>, stop: CancellationToken) {
    let all = futures::future::join_all(readers);
    tokio::pin!(all);
    if tokio::time::timeout(DRAIN_GRACE, &mut all).await.is_err() {
        debug!("output still open after the process group ended; stopping the readers");
        stop.cancel();
        all.await;
    }
}

/// Reads one pipe and sends its output as [`LineBuffer`] pieces.
async fn pump<R: AsyncRead + Unpin>(
    mut pipe: R,
    stream: OutputStream,
    tx: mpsc::Sender<OutputPiece>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut lines = LineBuffer::default();
    let mut after_stop = 0usize;
    let mut receiver_gone = false;
    loop {
        let n = tokio::select! {
            biased;
            read = pipe.read(&mut buf) => match read {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    debug!(?stream, error = %e, "reading output failed");
                    break;
                }
            },
            _ = stop.cancelled() => break,
        };
        if stop.is_cancelled() {
            after_stop += n;
            if after_stop > DRAIN_LIMIT {
                break;
            }
        }
        for data in lines.push(&buf[..n]) {
            if !receiver_gone && tx.send(OutputPiece { stream, data }).await.is_err() {
                // Nobody listens; keep reading so the command does not block on a full pipe.
                receiver_gone = true;
            }
        }
    }
    if let Some(data) = lines.finish()
        && !receiver_gone
    {
        let _ = tx.send(OutputPiece { stream, data }).await;
    }
}

#[cfg(test)]
#[path = "process_tests.rs"]
mod tests;
