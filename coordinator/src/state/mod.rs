//! The deterministic state machine: `apply(&mut State, &Command, index)` is the only way
//! replicated state changes. No I/O, no clock, no randomness: the proposer stamps time into the
//! command, so every node that applies the same log reaches the same state.

mod attempts;
pub mod audit;
pub mod command;
mod concurrency;
mod deploy;
mod flow;
mod incidents;
pub mod metrics;
pub mod model;
mod pipelines;
mod revocation;
mod runs;
pub mod secrets;
mod triggers;

#[cfg(test)]
mod approval_tests;
#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trigger_tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

pub use command::{AttemptKey, Command, Kind};
pub use incidents::MAX_TEXT as MAX_INCIDENT_TEXT;
pub use model::*;
pub use revocation::Revocation;

/// Version of the snapshot encoding of `State`.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Everything the cluster agrees on, except bulk data (log chunks), which apply hands out as
/// events for the store to write.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub pipelines: BTreeMap<String, Pipeline>,
    pub runs: BTreeMap<String, Run>,
    /// Ids of runs still running: the scheduler and heartbeats only look at these.
    pub active: BTreeSet<String>,
    pub next_run_seq: u64,
    pub agents: BTreeMap<String, Agent>,
    /// Every deployment ever recorded; `id` is position + 1.
    pub deployments: Vec<Deployment>,
    /// Coordinator node id -> API address, changed only by Raft configuration entries.
    #[serde(default)]
    pub members: BTreeMap<u64, String>,
    /// Every incident ever recorded; `id` is position + 1.
    #[serde(default)]
    pub incidents: Vec<Incident>,
    /// Per pipeline: what its triggers already fired for (exactly one run per commit).
    #[serde(default)]
    pub triggers: BTreeMap<String, TriggerState>,
    /// Environment -> the run deploying to it now (the deploy lock).
    #[serde(default)]
    pub env_locks: BTreeMap<String, String>,
    /// Revoked identities (`spiffe://...` text): refused on every call. Skipped when empty so
    /// states without revocations keep their digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revoked: BTreeMap<String, Revocation>,
    /// The most recent writes with the caller's identity (`audit.rs`), oldest first. A ring:
    /// once full, every audited write drops the oldest entry, which a `Vec` made a memmove of
    /// the whole log on every node for every write. Serialized like a `Vec`.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub audit: VecDeque<audit::AuditEntry>,
    /// Secret name -> its sealed value (`secrets.rs`); skipped when empty (digest unchanged).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, secrets::SecretRecord>,
}

/// What apply tells the world besides its answer: the store writes `LogAppended` durably; the
/// API pushes the others to agents and watchers.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    RunChanged {
        run_id: String,
    },
    LogAppended {
        run_id: String,
        stage: String,
        attempt: u32,
        seq: u64,
        /// The chunk as the agent sent it, still encoded (`cd_common::logcodec`): stored so.
        encoding: u32,
        data: Vec<u8>,
    },
    Assigned {
        agent: String,
        run_id: String,
        stage: String,
        attempt: u32,
    },
    CancelAttempt {
        agent: String,
        run_id: String,
        stage: String,
        attempt: u32,
        term: u64,
        reason: String,
    },
    /// A stage became queued: the scheduler has work.
    StageQueued,
    /// An identity was revoked: its open streams are closed.
    Revoked {
        identity: String,
    },
}

/// Acknowledgement of log chunks for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogAck {
    pub run_id: String,
    pub stage: String,
    pub attempt: u32,
    /// The fencing term the chunks were sent with (echoed back).
    pub term: u64,
    pub next_seq: u64,
    pub stale: bool,
}

/// The answer apply gives to the proposer.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done,
    Pipeline {
        version: u32,
        changed: bool,
    },
    Run(String),
    LogAcks(Vec<LogAck>),
    /// The id of the incident the command opened or resolved.
    Incident(u64),
    /// A trigger for something that already started a run (that run's id).
    AlreadyTriggered {
        run_id: String,
    },
    /// Whether a `Revoke` changed anything (false: already revoked).
    Revoked(bool),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("{0}")]
    NotFound(String),
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0}")]
    FailedPrecondition(String),
    /// A claim by an attempt that is no longer the live one (fencing).
    #[error("{0}")]
    Stale(String),
    /// The caller is not one the pipeline allows (e.g. not in `gate.approvers`).
    #[error("{0}")]
    PermissionDenied(String),
}

/// Result of applying one entry.
#[derive(Debug)]
pub struct Applied {
    pub result: Result<Outcome, StateError>,
    pub events: Vec<Event>,
}

/// Applies one command. `index` is the Raft index of the entry (kept for tracing only).
pub fn apply(state: &mut State, cmd: &Command, index: u64) -> Applied {
    let mut events = Vec::new();
    let at = cmd.at_ms;
    let result = match &cmd.kind {
        None => Err(StateError::InvalidArgument {
            field: "command".into(),
            message: format!("entry {index} carries no command (written by a newer version?)"),
        }),
        Some(kind) => apply_kind(state, kind, at, &mut events),
    };
    Applied { result, events }
}

/// Applies one command's kind (also the inner command of an audited write).
fn apply_kind(
    state: &mut State,
    kind: &Kind,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    {
        match kind {
            Kind::AsCaller(c) => audit::apply_as_caller(state, c, at, events),
            Kind::ApplyPipeline(c) => pipelines::apply_pipeline(state, c, at),
            Kind::StartRun(c) => runs::start_run(state, c, at, events),
            Kind::CancelRun(c) => runs::cancel_run(state, c, at, events),
            Kind::RegisterAgent(c) => attempts::register_agent(state, c, at),
            Kind::Heartbeat(c) => attempts::heartbeat(state, c, at),
            Kind::AssignStage(c) => attempts::assign(state, c, at, events),
            Kind::StartAttempt(c) => attempts::start(state, c, at, events),
            Kind::AppendLogs(c) => attempts::append_logs(state, c, events),
            Kind::ReportResult(c) => attempts::report_result(state, c, at, events),
            Kind::ExpireAttempt(c) => attempts::expire(state, c, at, events),
            Kind::Approve(c) => runs::approve(state, c, at, events),
            Kind::ExpireApproval(c) => runs::expire_approval(state, c, at, events),
            Kind::Revoke(c) => revocation::revoke(state, c, at, events),
            Kind::Reject(c) => runs::reject(state, c, at, events),
            Kind::Rollback(c) => {
                deploy::start_rollback(state, c, None, at, events).map(Outcome::Run)
            }
            Kind::Noop(_) => Ok(Outcome::Done),
            Kind::OpenIncident(c) => incidents::open_by_hand(state, c, at),
            Kind::ResolveIncident(c) => incidents::resolve_by_hand(state, c, at),
            Kind::TriggerRun(c) => triggers::trigger_run(state, c, at, events),
            Kind::SetSecret(c) => secrets::set(state, c, at),
            Kind::DeleteSecret(c) => secrets::delete(state, c),
        }
    }
}

impl State {
    /// Every live attempt, with its run and stage names.
    pub fn live_attempts(&self) -> impl Iterator<Item = (&Run, &Stage, &Attempt)> {
        self.active
            .iter()
            .filter_map(|id| self.runs.get(id))
            .flat_map(|run| {
                run.stages
                    .iter()
                    .filter_map(move |s| s.live_attempt().map(|a| (run, s, a)))
            })
    }

    /// Queued stages of running runs, oldest first.
    pub fn queued_stages(&self) -> Vec<(&Run, &Stage)> {
        let mut out: Vec<(&Run, &Stage)> = self
            .active
            .iter()
            .filter_map(|id| self.runs.get(id))
            .flat_map(|run| {
                run.stages
                    .iter()
                    .filter(|s| s.state == StageState::Queued)
                    .map(move |s| (run, s))
            })
            .collect();
        out.sort_by_key(|(run, s)| (s.queued_ms, run.seq));
        out
    }

    /// The stage spec a run executes for `stage` (a rollback run carries its own).
    pub fn stage_spec<'a>(
        &'a self,
        run: &'a Run,
        stage: &str,
    ) -> Option<&'a cd_common::spec::StageSpec> {
        flow::stage_spec(&self.pipelines, run, stage)
    }

    /// The latest successful deployment of an environment, if any.
    pub fn current_deployment(&self, env: &str) -> Option<&Deployment> {
        deploy::current(&self.deployments, env)
    }

    /// A digest of the whole replicated state, equal on every node that applied the same log.
    pub fn digest(&self) -> String {
        // FNV-1a over the canonical JSON (BTreeMaps keep key order stable).
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in &bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}-{:x}", bytes.len())
    }

    /// Encodes a snapshot (versioned JSON).
    pub fn to_snapshot(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&SnapshotEnvelope {
            version: SNAPSHOT_VERSION,
            state: std::borrow::Cow::Borrowed(self),
        })
    }

    pub fn from_snapshot(bytes: &[u8]) -> Result<State, String> {
        let env: SnapshotEnvelope<'static> =
            serde_json::from_slice(bytes).map_err(|e| format!("corrupt state snapshot: {e}"))?;
        if env.version > SNAPSHOT_VERSION {
            return Err(format!(
                "state snapshot version {} is newer than this build understands ({SNAPSHOT_VERSION})",
                env.version
            ));
        }
        Ok(env.state.into_owned())
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotEnvelope<'a> {
    version: u32,
    state: std::borrow::Cow<'a, State>,
}
