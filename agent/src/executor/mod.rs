//! The executor abstraction: how a stage's command is run. One trait, two backends: host
//! processes ([`process::ProcessExecutor`]) and Docker containers ([`docker::DockerExecutor`]);
//! [`Backends`] picks one per stage (an image means a container).
//!
//! Lifecycle of one attempt, driven by `stage.rs`:
//!
//! 1. [`Executor::prepare`] makes a fresh workspace and copies the source into it;
//! 2. [`Executor::start`] starts the command and returns an [`Execution`];
//! 3. [`Execution::take_output`] gives the stream of output pieces, and
//!    [`Execution::wait`] waits for the end, honouring the attempt's cancellation token;
//! 4. [`Executor::destroy`] removes the workspace (and the attempt's container).

pub mod docker;
mod docker_calls;
mod docker_config;
pub mod lines;
pub mod process;
mod select;

pub use select::Backends;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::registry::AttemptKey;

/// What an executor needs to know about one attempt.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub key: AttemptKey,
    /// Shell script run with `sh -c`.
    pub command: String,
    /// The complete set of variables the stage adds to the environment (assignment env plus the
    /// `CD_*` variables).
    pub env: BTreeMap<String, String>,
    /// The stage's secrets (name -> value): added to this stage's environment only, after
    /// `env` (they win), and never printed (`Debug` shows names).
    pub secrets: SecretEnv,
    /// Directory copied into the workspace before the command runs.
    pub source: Option<PathBuf>,
    /// Container image; empty for a host process.
    pub image: String,
    /// How the container runs; only meaningful with `image`.
    pub container: ContainerOptions,
}

/// Secret environment variables; `Debug` shows their names, never their values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretEnv(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The assignment's container options, as sent (`cd.v1.ContainerOptions`); the Docker backend
/// checks the values and names a bad one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerOptions {
    /// `never`, `if-missing` or `always`; empty means `if-missing`.
    pub image_pull: String,
    /// CPU limit in cores; 0 means none.
    pub cpus: f64,
    /// Memory limit in bytes; 0 means none.
    pub memory_bytes: u64,
    /// `none`, `bridge` or `host`; empty means `bridge`.
    pub network: String,
    /// `uid[:gid]` or a name known to the image; empty keeps the image's user.
    pub user: String,
    /// Mount the engine's socket into the container.
    pub docker_socket: bool,
}

/// A prepared workspace directory, and the attempt it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    path: PathBuf,
    key: AttemptKey,
}

impl Workspace {
    pub fn new(path: PathBuf, key: AttemptKey) -> Self {
        Self { path, key }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn key(&self) -> &AttemptKey {
        &self.key
    }
}

/// Which pipe a piece of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Whole lines of one stream (or a partial final line, or a slice of an over-long line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPiece {
    pub stream: OutputStream,
    pub data: Vec<u8>,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit status when it exited by itself.
    pub code: Option<i32>,
    /// Signal number when a signal ended it.
    pub signal: Option<i32>,
    /// Whether the executor stopped it because the cancellation token fired.
    pub terminated: bool,
    /// Whether the kernel's OOM killer killed a process of it (a container's memory limit).
    pub oom_killed: bool,
}

impl Exit {
    /// The number reported as `exit_code`: the status, `128 + signal` for a crash, and -1 when
    /// the agent stopped the command.
    pub fn exit_code(&self) -> i32 {
        if self.terminated {
            return -1;
        }
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => -1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot prepare workspace {path}: {message}")]
    Workspace { path: PathBuf, message: String },
    #[error("cannot copy source {source_dir} into the workspace: {message}")]
    CopySource {
        source_dir: PathBuf,
        message: String,
    },
    #[error("cannot start `sh -c`: {0}")]
    Spawn(std::io::Error),
    #[error("waiting for the command failed: {0}")]
    Wait(std::io::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Docker(String),
}

/// The error reported for a stage the OOM killer hit: `killed by the OOM killer (memory limit
/// 64 MiB)`.
pub fn oom_message(memory_bytes: u64) -> String {
    if memory_bytes == 0 {
        "killed by the OOM killer".to_string()
    } else {
        format!(
            "killed by the OOM killer (memory limit {})",
            format_bytes(memory_bytes)
        )
    }
}

/// `64 MiB`, `1.5 GiB`, `1000 bytes`: binary units, at most one decimal.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if bytes >= size {
            let tenths = (bytes as u128 * 10 + size as u128 / 2) / size as u128;
            return if tenths.is_multiple_of(10) {
                format!("{} {unit}", tenths / 10)
            } else {
                format!("{}.{} {unit}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{bytes} bytes")
}

/// Runs stages. One executor value is shared by every stage task of the agent.
///
/// Concurrency contract:
/// - `Send + Sync`, all methods take `&self`: many attempts are prepared, started and destroyed
///   concurrently, each in its own workspace; an implementation keeps no per-attempt state
///   in `self` that would make two attempts interfere.
/// - For one attempt the calls are sequential: `prepare`, then `start` (once; a monitoring
///   stage calls it once per health check, each time after the previous execution's `wait`
///   returned), then `destroy` exactly once for every workspace `prepare` returned (also after
///   a failed start); `destroy` removes whatever every `start` left behind.
/// - The [`Execution`] is owned by the one stage task; its output must be drained while `wait`
///   runs (the output channel is bounded, and a command blocked on a full pipe never exits).
pub trait Executor: Send + Sync + 'static {
    /// Backend name for logs (`process`, `docker`).
    fn name(&self) -> &'static str;

    /// Creates a fresh, empty workspace for the attempt and copies `spec.source` into it.
    fn prepare<'a>(&'a self, spec: &'a StageSpec) -> BoxFuture<'a, Result<Workspace, ExecError>>;

    /// Starts the command in `workspace`. Returns once it runs; output flows from then on.
    fn start<'a>(
        &'a self,
        spec: &'a StageSpec,
        workspace: &'a Workspace,
    ) -> BoxFuture<'a, Result<Box<dyn Execution>, ExecError>>;

    /// Removes the workspace and anything the attempt left behind (its container).
    fn destroy(&self, workspace: Workspace) -> BoxFuture<'_, Result<(), ExecError>>;
}

/// A running command.
pub trait Execution: Send {
    /// The output, stdout and stderr merged, each stream in order. Returns `Some` once; the
    /// channel closes when both streams are done (after `wait` has seen the end).
    fn take_output(&mut self) -> Option<mpsc::Receiver<OutputPiece>>;

    /// Waits for the command to end. When `cancel` fires first the whole command (every process
    /// it started) gets SIGTERM, then SIGKILL if it has not ended after `grace`; this happens
    /// once. Returns after the command and everything it started are gone.
    fn wait(
        self: Box<Self>,
        cancel: CancellationToken,
        grace: Duration,
    ) -> BoxFuture<'static, Result<Exit, ExecError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_messages_name_the_limit_in_binary_units() {
        assert_eq!(
            oom_message(64 << 20),
            "killed by the OOM killer (memory limit 64 MiB)"
        );
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(6 * 1024 * 1024 + 1), "6 MiB");
        assert_eq!(format_bytes(1000), "1000 bytes");
        assert_eq!(oom_message(0), "killed by the OOM killer");
    }
}
