//! The entities of replicated state (DESIGN.md, "Replicated state"). Plain data, serialised
//! with serde for snapshots; all behaviour lives in the apply modules.

use std::collections::BTreeMap;

use cd_common::spec::{PipelineSpec, StageSpec};
use serde::{Deserialize, Serialize};

pub use super::command::{StageResult, TestCounts};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Pending,
    Queued,
    Assigned,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    AwaitingApproval,
    GateFailed,
    Skipped,
}

impl StageState {
    /// A final stage never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::GateFailed | Self::Skipped
        )
    }

    /// The stage holds a live attempt on an agent.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Assigned | Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::AwaitingApproval => "awaiting_approval",
            Self::GateFailed => "gate_failed",
            Self::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineVersion {
    pub version: u32,
    pub spec: PipelineSpec,
    pub spec_yaml: String,
    pub file_name: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    /// Oldest first; a run pins one of these by number.
    pub versions: Vec<PipelineVersion>,
    /// Number given to the next run of this pipeline (run ids are `<pipeline>-<n>`).
    pub next_run: u64,
}

impl Pipeline {
    pub fn latest(&self) -> Option<&PipelineVersion> {
        self.versions.last()
    }

    pub fn version(&self, v: u32) -> Option<&PipelineVersion> {
        self.versions.iter().find(|p| p.version == v)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub agent: String,
    pub assigned_ms: i64,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub lease_until_ms: i64,
    pub result: Option<StageResult>,
    pub end_reason: String,
    /// Next log sequence number expected; chunks below it are duplicates.
    pub log_next_seq: u64,
    /// Raft term of the grant; with `number`, the fencing token agents must echo.
    #[serde(default)]
    pub term: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    pub outcome: GateOutcome,
    pub reasons: Vec<String>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateOutcome {
    Pass,
    Fail,
    Inconclusive,
    WaitingApproval,
}

impl GateOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Inconclusive => "inconclusive",
            Self::WaitingApproval => "waiting_approval",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub identity: String,
    pub approved: bool,
    pub comment: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub state: StageState,
    pub attempts: Vec<Attempt>,
    pub reason: String,
    pub gate: Option<GateDecision>,
    pub approvals: Vec<Approval>,
    /// Failed attempts so far (lease lapses do not count); compared with `retries`.
    pub failures: u32,
    /// When the stage last became queued: the scheduler serves oldest first.
    pub queued_ms: i64,
    /// The environment whose deploy lock this pending stage waits for ("" = none).
    #[serde(default)]
    pub waiting_for: String,
    /// When the stage began awaiting approval (for `gate.approval_timeout`); 0: not waiting.
    #[serde(default)]
    pub awaiting_since_ms: i64,
}

impl Stage {
    pub fn new(name: &str) -> Self {
        Stage {
            name: name.to_string(),
            state: StageState::Pending,
            attempts: Vec::new(),
            reason: String::new(),
            gate: None,
            approvals: Vec::new(),
            failures: 0,
            queued_ms: 0,
            waiting_for: String::new(),
            awaiting_since_ms: 0,
        }
    }

    /// The attempt an agent holds now, if any.
    pub fn live_attempt(&self) -> Option<&Attempt> {
        if self.state.is_live() {
            self.attempts.last()
        } else {
            None
        }
    }

    pub fn last_result(&self) -> Option<&StageResult> {
        self.attempts.last().and_then(|a| a.result.as_ref())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Release,
    Rollback,
}

/// What a rollback run restores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackPlan {
    pub environment: String,
    /// The deployment whose revision is restored.
    pub restores: u64,
    /// The deployment being undone.
    pub undoes: u64,
    /// The deploying stage of the pipeline version being restored, with `run` replaced by its
    /// `rollback` command when it has one.
    pub stage: StageSpec,
    /// The health check run after `stage` (needs it): the failed monitor's probe, re-run until
    /// its first passing check. Only automatic rollbacks have one; its success resolves the
    /// incident the failure opened.
    #[serde(default)]
    pub check: Option<StageSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    /// Global creation order, for listing.
    pub seq: u64,
    pub pipeline: String,
    pub pipeline_version: u32,
    pub revision: String,
    pub params: BTreeMap<String, String>,
    pub trigger: String,
    pub kind: RunKind,
    pub rollback: Option<RollbackPlan>,
    pub state: RunState,
    pub created_ms: i64,
    pub finished_ms: i64,
    pub stages: Vec<Stage>,
    pub reason: String,
    /// When the revision was committed (0 = unknown); DORA lead time counts from here.
    #[serde(default)]
    pub commit_at_ms: i64,
    /// Waiting for a slot under the pipeline's `concurrency`: no stage moves until admitted.
    #[serde(default)]
    pub queued: bool,
    /// The newer run that cancelled this one (`on_new_run: supersede`).
    #[serde(default)]
    pub superseded_by: String,
}

impl Run {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn stage_mut(&mut self, name: &str) -> Option<&mut Stage> {
        self.stages.iter_mut().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub name: String,
    pub labels: Vec<String>,
    pub slots: u32,
    pub version: String,
    pub registered_ms: i64,
    pub last_seen_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    InProgress,
    Succeeded,
    Failed,
    RolledBack,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: u64,
    pub environment: String,
    pub run_id: String,
    pub pipeline: String,
    pub pipeline_version: u32,
    pub revision: String,
    pub stage: String,
    pub status: DeploymentStatus,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub metrics: BTreeMap<String, f64>,
    pub kind: RunKind,
    /// For a rollback: the deployment whose revision it restored (0 otherwise).
    pub restores: u64,
}

/// How an incident ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The automatic rollback's deployment succeeded and its health check passed.
    Rollback,
    /// An operator resolved it (`cdctl incident resolve`).
    Manual,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rollback => "rollback",
            Self::Manual => "manual",
        }
    }
}

/// A period during which an environment was failing: opened by a failed monitor (or by hand),
/// resolved by the automatic rollback's passing health check (or by hand). MTTR, MTBF and
/// DORA's time to restore are computed from these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Position in `State::incidents` + 1.
    pub id: u64,
    pub environment: String,
    pub opened_ms: i64,
    /// 0 while open.
    pub resolved_ms: i64,
    pub reason: String,
    /// `monitor` for an automatic incident, else the identity that opened it.
    pub opened_by: String,
    /// The deployment in service when it opened (the suspected cause; 0 if none).
    pub deployment: u64,
    /// The run and stage whose failed check opened it (empty for a manual incident).
    pub run_id: String,
    pub stage: String,
    /// The automatic rollback run started for it (empty if none was started).
    pub rollback_run: String,
    pub resolution: Option<Resolution>,
    /// The rollback run that restored service, or the identity that resolved it.
    pub resolved_by: String,
    /// The deployment that restored service (0 for a manual resolution).
    pub restored_by_deployment: u64,
    pub note: String,
}

impl Incident {
    pub fn is_open(&self) -> bool {
        self.resolution.is_none()
    }
}

/// What a pipeline's triggers have fired for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TriggerState {
    /// (commit, run it started), oldest first, at most `RECENT_COMMITS`.
    #[serde(default)]
    pub commits: Vec<(String, String)>,
    /// The schedule's latest fire time that started a run (ms), and that run.
    #[serde(default)]
    pub last_fire_ms: i64,
    #[serde(default)]
    pub last_fire_run: String,
}

impl TriggerState {
    pub fn has_commit(&self, sha: &str) -> bool {
        self.commits.iter().any(|(c, _)| c == sha)
    }
}
