//! The one `Command` type: every change to replicated state is one of these, serialised with
//! prost into a Raft entry. Tags are additive: never renumber or reuse one, so a node running
//! a newer build can replay an older log (STYLE.md, "version every persisted payload").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version written into every command; bump when the meaning (not just the shape) changes.
pub const COMMAND_VERSION: u32 = 1;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// Wall-clock time stamped by the proposer; apply uses this, never the clock.
    #[prost(int64, tag = "2")]
    pub at_ms: i64,
    #[prost(
        oneof = "Kind",
        tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 30, 31, 40, 41, 42, 50, 51"
    )]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(message, tag = "10")]
    ApplyPipeline(ApplyPipeline),
    #[prost(message, tag = "11")]
    StartRun(StartRun),
    #[prost(message, tag = "12")]
    CancelRun(CancelRun),
    #[prost(message, tag = "13")]
    RegisterAgent(RegisterAgent),
    #[prost(message, tag = "14")]
    Heartbeat(Heartbeat),
    #[prost(message, tag = "15")]
    AssignStage(AssignStage),
    #[prost(message, tag = "16")]
    StartAttempt(AttemptKey),
    #[prost(message, tag = "17")]
    AppendLogs(AppendLogs),
    #[prost(message, tag = "18")]
    ReportResult(ReportResult),
    #[prost(message, tag = "19")]
    ExpireAttempt(ExpireAttempt),
    #[prost(message, tag = "20")]
    Approve(Approve),
    #[prost(message, tag = "21")]
    Reject(Reject),
    #[prost(message, tag = "22")]
    Rollback(Rollback),
    #[prost(message, tag = "23")]
    Noop(Noop),
    #[prost(message, tag = "30")]
    OpenIncident(OpenIncident),
    #[prost(message, tag = "31")]
    ResolveIncident(ResolveIncident),
    #[prost(message, tag = "24")]
    TriggerRun(TriggerRun),
    /// A stage waited longer than its `gate.approval_timeout`: it fails (proposed by the
    /// leader's scheduler; apply checks the deadline against `at_ms`).
    #[prost(message, tag = "40")]
    ExpireApproval(ExpireApproval),
    /// An agent's or operator's identity is refused from now on (`cdctl revoke`).
    #[prost(message, tag = "41")]
    Revoke(Revoke),
    /// A write made by an API caller: applies `command` and records it in the audit log
    /// with `identity` (one envelope, so no write command needs its own identity field).
    #[prost(message, tag = "42")]
    AsCaller(AsCaller),
    /// Stores a secret, already sealed by the leader (`secret_key.rs`): never the value.
    #[prost(message, tag = "50")]
    SetSecret(SetSecret),
    #[prost(message, tag = "51")]
    DeleteSecret(DeleteSecret),
}

/// A secret's value sealed with the cluster key; the plaintext never enters the log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetSecret {
    /// `[A-Z_][A-Z0-9_]*` (also the AEAD's associated data).
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub ciphertext: Vec<u8>,
    /// 96-bit nonce drawn by the proposer, so apply stays pure.
    #[prost(bytes = "vec", tag = "3")]
    pub nonce: Vec<u8>,
    /// First 8 bytes of SHA-256 of the key that sealed it.
    #[prost(bytes = "vec", tag = "4")]
    pub key_id: Vec<u8>,
    /// How it is sealed (`secret_key::FORMAT_AES256GCM`).
    #[prost(uint32, tag = "5")]
    pub format: u32,
    /// The caller's identity.
    #[prost(string, tag = "6")]
    pub by: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteSecret {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AsCaller {
    /// `spiffe://...` of the caller.
    #[prost(string, tag = "1")]
    pub identity: String,
    #[prost(message, optional, boxed, tag = "2")]
    pub command: Option<Box<Command>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Revoke {
    /// `spiffe://<trust-domain>/<role>/<name>`.
    #[prost(string, tag = "1")]
    pub identity: String,
    #[prost(string, tag = "2")]
    pub reason: String,
    /// The operator who revoked it.
    #[prost(string, tag = "3")]
    pub by: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExpireApproval {
    #[prost(string, tag = "1")]
    pub run_id: String,
    #[prost(string, tag = "2")]
    pub stage: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ApplyPipeline {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub spec_yaml: String,
    #[prost(string, tag = "3")]
    pub file_name: String,
    /// The validated `PipelineSpec` as JSON, so replay never depends on the parser version.
    #[prost(string, tag = "4")]
    pub spec_json: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StartRun {
    #[prost(string, tag = "1")]
    pub pipeline: String,
    #[prost(string, tag = "2")]
    pub revision: String,
    #[prost(btree_map = "string, string", tag = "3")]
    pub params: BTreeMap<String, String>,
    #[prost(string, tag = "4")]
    pub trigger: String,
    /// When the revision was committed (ms since the epoch; 0 = unknown): DORA lead time.
    #[prost(int64, tag = "5")]
    pub commit_at_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CancelRun {
    #[prost(string, tag = "1")]
    pub run_id: String,
    #[prost(string, tag = "2")]
    pub reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterAgent {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub labels: Vec<String>,
    #[prost(uint32, tag = "3")]
    pub slots: u32,
    #[prost(string, tag = "4")]
    pub version: String,
}

/// Extends the lease of every live attempt held by `agent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Heartbeat {
    #[prost(string, tag = "1")]
    pub agent: String,
    #[prost(int64, tag = "2")]
    pub lease_until_ms: i64,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct AttemptKey {
    #[prost(string, tag = "1")]
    pub run_id: String,
    #[prost(string, tag = "2")]
    pub stage: String,
    #[prost(uint32, tag = "3")]
    pub attempt: u32,
    /// The agent making the claim; checked against the attempt's holder.
    #[prost(string, tag = "4")]
    pub agent: String,
    /// The fencing term the claimant was granted the attempt with.
    #[prost(uint64, tag = "5")]
    pub term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AssignStage {
    #[prost(string, tag = "1")]
    pub run_id: String,
    #[prost(string, tag = "2")]
    pub stage: String,
    /// The attempt number this assignment creates (must be the next one).
    #[prost(uint32, tag = "3")]
    pub attempt: u32,
    #[prost(string, tag = "4")]
    pub agent: String,
    #[prost(int64, tag = "5")]
    pub lease_until_ms: i64,
    /// The proposer's Raft term: with the attempt number, the fencing token of the grant.
    #[prost(uint64, tag = "6")]
    pub term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LogChunk {
    #[prost(message, optional, tag = "1")]
    pub key: Option<AttemptKey>,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
    /// `LOG_RAW` or `LOG_LZ4` (see `LogChunk.encoding` in types.proto).
    #[prost(uint32, tag = "4")]
    pub encoding: u32,
}

pub const LOG_RAW: u32 = 0;
pub const LOG_LZ4: u32 = 1;

/// Chunks from one or many agents, group-committed in one entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AppendLogs {
    #[prost(message, repeated, tag = "1")]
    pub chunks: Vec<LogChunk>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize, prost::Message)]
pub struct TestCounts {
    #[prost(uint32, tag = "1")]
    pub total: u32,
    #[prost(uint32, tag = "2")]
    pub passed: u32,
    #[prost(uint32, tag = "3")]
    pub failed: u32,
    #[prost(uint32, tag = "4")]
    pub errors: u32,
    #[prost(uint32, tag = "5")]
    pub skipped: u32,
}

/// An attempt's outcome as the agent reported it (also the form kept in state).
#[derive(Clone, PartialEq, Serialize, Deserialize, prost::Message)]
pub struct StageResult {
    #[prost(int32, tag = "1")]
    pub exit_code: i32,
    #[prost(uint64, tag = "2")]
    pub duration_ms: u64,
    #[prost(message, optional, tag = "3")]
    pub tests: Option<TestCounts>,
    #[prost(btree_map = "string, double", tag = "4")]
    pub metrics: BTreeMap<String, f64>,
    #[prost(bool, tag = "5")]
    pub cancelled: bool,
    #[prost(string, repeated, tag = "6")]
    pub errors: Vec<String>,
    #[prost(bool, tag = "7")]
    #[serde(default)]
    pub oom_killed: bool,
    /// For a monitoring stage: when the deciding health check ran (ms since the epoch, agent
    /// clock; 0 = not a monitor). On failure the check that crossed the threshold, on success
    /// the last check. An incident opens (or a rollback's resolves) at this time.
    #[prost(int64, tag = "30")]
    #[serde(default)]
    pub check_at_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReportResult {
    #[prost(message, optional, tag = "1")]
    pub key: Option<AttemptKey>,
    #[prost(message, optional, tag = "2")]
    pub result: Option<StageResult>,
}

/// Ends a live attempt that did not finish by itself.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExpireAttempt {
    #[prost(message, optional, tag = "1")]
    pub key: Option<AttemptKey>,
    /// True for a stage timeout (counts as a failure); false for a lapsed lease (requeue).
    #[prost(bool, tag = "2")]
    pub timed_out: bool,
    #[prost(string, tag = "3")]
    pub reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Approve {
    #[prost(string, tag = "1")]
    pub run_id: String,
    #[prost(string, tag = "2")]
    pub stage: String,
    #[prost(string, tag = "3")]
    pub identity: String,
    #[prost(string, tag = "4")]
    pub comment: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Reject {
    #[prost(string, tag = "1")]
    pub run_id: String,
    #[prost(string, tag = "2")]
    pub stage: String,
    #[prost(string, tag = "3")]
    pub identity: String,
    #[prost(string, tag = "4")]
    pub reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Rollback {
    #[prost(string, tag = "1")]
    pub environment: String,
    #[prost(string, tag = "2")]
    pub reason: String,
}

/// Opens an incident by hand (`cdctl incident open`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OpenIncident {
    #[prost(string, tag = "1")]
    pub environment: String,
    #[prost(string, tag = "2")]
    pub reason: String,
    /// Who opened it (the caller's identity).
    #[prost(string, tag = "3")]
    pub identity: String,
}

/// Resolves an open incident by hand (`cdctl incident resolve`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResolveIncident {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub identity: String,
    #[prost(string, tag = "3")]
    pub note: String,
}

/// A run started by a trigger. Apply records what fired (the commit, or the schedule's fire
/// time) and starts the run in the same step, and does nothing when that was already
/// recorded: a new leader that polls again proposes the same command harmlessly, so each
/// commit (and each fire time) starts exactly one run.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TriggerRun {
    #[prost(string, tag = "1")]
    pub pipeline: String,
    /// `git`, `webhook` or `schedule`.
    #[prost(string, tag = "2")]
    pub source: String,
    /// The commit (git, webhook) the run is pinned to; for a schedule, what it runs (a branch).
    #[prost(string, tag = "3")]
    pub revision: String,
    /// Commit time of the revision (ms since the epoch; 0 = unknown).
    #[prost(int64, tag = "4")]
    pub commit_at_ms: i64,
    /// The schedule's fire time (ms since the epoch); 0 for commit triggers.
    #[prost(int64, tag = "5")]
    pub fire_ms: i64,
}

/// Proposed by a new leader so it can commit an entry of its term; changes nothing.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Noop {}

impl Command {
    pub fn new(at_ms: i64, kind: Kind) -> Self {
        Command {
            version: COMMAND_VERSION,
            at_ms,
            kind: Some(kind),
        }
    }

    pub fn encode_to_vec(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        <Self as prost::Message>::decode(bytes)
    }
}
