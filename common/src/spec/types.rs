//! The validated pipeline spec: what `parse` returns and what the coordinator stores.
//!
//! These types are already checked (names, needs, durations, gates, image references and
//! container options); code that holds one may rely on every invariant `parse` enforces. They serialise with serde for state snapshots.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A whole pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineSpec {
    pub name: String,
    /// Where the agent gets the files a stage runs on; `None` runs in an empty workspace.
    pub source: Option<SourceSpec>,
    /// Environment variables for every stage (a stage's own `env` wins).
    pub env: BTreeMap<String, String>,
    /// In file order; `needs` are guaranteed to name earlier-or-later stages of this list and
    /// to form no cycle.
    pub stages: Vec<StageSpec>,
    /// `repository:` a git URL or path the agent clones, checking out the run's revision into
    /// each stage's workspace. `None` falls back to `trigger.git.repository`.
    #[serde(default)]
    pub repository: Option<String>,
    /// What starts runs besides `cdctl run start`.
    #[serde(default)]
    pub trigger: TriggerSpec,
    /// `concurrency:` most runs of this pipeline running at once; more wait, queued, and start
    /// in order. `None` = no limit.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// What a new run does to older runs of this pipeline still waiting (for a concurrency
    /// slot or an environment lock).
    #[serde(default)]
    pub on_new_run: OnNewRun,
}

/// `trigger:` the automatic ways a run starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerSpec {
    pub git: Option<GitTrigger>,
    pub webhook: Option<WebhookTrigger>,
    pub schedule: Option<ScheduleTrigger>,
}

impl TriggerSpec {
    pub fn is_empty(&self) -> bool {
        self.git.is_none() && self.webhook.is_none() && self.schedule.is_none()
    }
}

/// `trigger.git`: the leader polls a branch and starts one run per new head commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitTrigger {
    /// URL or path `git fetch` understands (on the coordinator).
    pub repository: String,
    pub branch: String,
    pub interval_ms: u64,
}

/// `trigger.webhook`: `POST /hooks/<pipeline>` on the coordinator's webhook listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookTrigger {
    /// Name of the coordinator's environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// A file on the coordinator holding the secret (trailing newline ignored).
    pub secret_file: Option<String>,
    /// Only pushes to this branch start runs; `None` = the git trigger's branch, else any.
    pub branch: Option<String>,
}

/// `trigger.schedule`: a cron expression (5 fields, or 6 with seconds first), in UTC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleTrigger {
    pub cron: String,
}

/// `on_new_run:`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNewRun {
    /// Older waiting runs keep their place; runs go one after the other (the default).
    #[default]
    Queue,
    /// A new run cancels older runs of the pipeline still waiting, as "superseded by <run>".
    Supersede,
}

impl OnNewRun {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Supersede => "supersede",
        }
    }
}

/// Files copied into each attempt's workspace before the stage runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    /// A directory on the agent's machine. Relative paths are resolved against the directory
    /// of the pipeline file when it is applied (`resolve_source`).
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    pub name: String,
    /// Shell script, run with `sh -c`.
    pub run: String,
    pub needs: Vec<String>,
    /// An agent must carry every one of these labels to take the stage.
    pub labels: Vec<String>,
    /// Container image (Docker executor); `None` runs as a host process. A valid Docker
    /// reference: `[host[:port]/]path[:tag][@digest]`, lowercase path.
    pub image: Option<String>,
    /// How the container runs. Always the default when `image` is `None` (the spec refuses
    /// container options on a stage without `image`).
    #[serde(default)]
    pub container: ContainerSpec,
    pub env: BTreeMap<String, String>,
    /// Milliseconds; `None` means no timeout.
    pub timeout_ms: Option<u64>,
    /// Extra attempts after a failed one (0 = run once).
    pub retries: u32,
    /// Deploying stage: its success records a deployment to this environment.
    pub environment: Option<String>,
    pub reports: ReportsSpec,
    pub gate: Option<GateSpec>,
    /// Command that undoes this stage's deployment (run by `cdctl rollback`).
    pub rollback: Option<String>,
    pub on_failure: OnFailure,
    /// Paths the stage produces (recorded; artifact transfer is a later issue).
    pub artifacts: Vec<String>,
    /// A monitoring stage: the agent runs these health checks instead of `run` (which is then
    /// empty). Always below a deploying stage.
    #[serde(default)]
    pub monitor: Option<MonitorSpec>,
    /// `secrets:` names of cluster secrets the stage receives as environment variables (only
    /// this stage's process or container sees them; see `crate::secrets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// `monitor:` of a stage: health checks every `interval` for `duration` after a deployment.
/// The stage fails as soon as `failure_threshold` checks in a row fail (consecutive, as
/// Kubernetes probes count: one blip does not roll production back, a steady failure does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorSpec {
    /// How long to watch, in ms. 0 (never written by users: the spec requires more) means
    /// "until the first passing check": the health check a rollback run makes.
    pub duration_ms: u64,
    /// Time between the starts of two checks, in ms (> 0).
    pub interval_ms: u64,
    /// Consecutive failed checks that fail the stage (>= 1).
    pub failure_threshold: u32,
    /// How long one check may take before it counts as failed, in ms (> 0).
    pub timeout_ms: u64,
    pub probe: Probe,
}

/// What one health check does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// A shell command (`sh -c`, as a host process or in the stage's container); exit 0 passes.
    Command { command: String },
    /// A plain-HTTP GET; the answer's status must equal `expect_status`.
    Http { url: String, expect_status: u16 },
}

impl Probe {
    /// One line for logs and listings.
    pub fn describe(&self) -> String {
        match self {
            Probe::Command { command } => format!("command `{command}`"),
            Probe::Http { url, expect_status } => format!("GET {url} (expect {expect_status})"),
        }
    }
}

/// Options of a stage that runs in a container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// `image_pull:`; default `if-missing`.
    pub image_pull: ImagePull,
    /// `resources.cpus`: CPU limit in cores, within [`MIN_CPUS`, `MAX_CPUS`] (0.01 to 1024).
    ///
    /// [`MIN_CPUS`]: super::MIN_CPUS
    /// [`MAX_CPUS`]: super::MAX_CPUS
    pub cpus: Option<f64>,
    /// `resources.memory` (`256m`, `1.5g`, `512Mi`, bytes; binary units): memory limit in
    /// bytes, within [`MIN_MEMORY_BYTES`, `MAX_MEMORY_BYTES`] (6 MiB, Docker's smallest, to
    /// 1 TiB).
    ///
    /// [`MIN_MEMORY_BYTES`]: super::MIN_MEMORY_BYTES
    /// [`MAX_MEMORY_BYTES`]: super::MAX_MEMORY_BYTES
    pub memory_bytes: Option<u64>,
    /// `network:`; default `bridge`.
    pub network: NetworkMode,
    /// `user:` such as `1000:1000` or `app`; `None` keeps the image's. Matches
    /// `[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?`, at most 64 characters.
    pub user: Option<String>,
    /// `docker: true` mounts the agent's Docker socket (the stage can then control the
    /// agent's engine: a trust decision).
    pub docker_socket: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImagePull {
    Never,
    #[default]
    IfMissing,
    Always,
}

impl ImagePull {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::IfMissing => "if-missing",
            Self::Always => "always",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    None,
    #[default]
    Bridge,
    Host,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Bridge => "bridge",
            Self::Host => "host",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportsSpec {
    /// JUnit XML path relative to the workspace.
    pub junit: Option<String>,
    /// JSON object of name -> number, relative to the workspace.
    pub metrics: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The run fails (the default).
    #[default]
    Fail,
    /// Roll the environment deployed upstream back to its previous good deployment.
    Rollback,
}

/// Conditions a stage must pass before it may run (DESIGN.md, Pipelines).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GateSpec {
    pub tests: Option<TestsGate>,
    pub metrics: Vec<MetricGate>,
    /// Operator approvals required before the stage runs.
    pub approvals: u32,
    /// Who may approve or reject (see `approvers.rs`); empty: any operator.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// How long the stage may wait for approval before it fails (ms); `None`: forever.
    #[serde(default)]
    pub approval_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestsGate {
    /// Stages (upstream of the gated stage) whose JUnit counts are summed.
    pub from: Vec<String>,
    /// passed / total, in [0, 1].
    pub min_pass_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricGate {
    pub name: String,
    /// Upstream stage whose metrics report holds the value.
    pub from: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Largest allowed drop below the value production was promoted with.
    pub max_regression: Option<f64>,
}

impl PipelineSpec {
    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The repository agents check out: `repository:`, else the git trigger's.
    pub fn checkout_repository(&self) -> Option<&str> {
        self.repository
            .as_deref()
            .or(self.trigger.git.as_ref().map(|g| g.repository.as_str()))
    }
}
