//! The handle API handlers and the scheduler use to reach the Raft task and read state.

use std::sync::{Arc, RwLock};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::state::{Command, Event, Kind, Outcome, State, StateError};
use crate::store::{Engine, LogRecord, StoreError, read_chunks};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
        }
    }
}

/// What the node publishes after every step, for the scheduler, the API and tests to wait on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub role: Role,
    pub leader_id: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader is node {leader_id})")]
    NotLeader { leader_id: u64 },
    #[error(transparent)]
    Rejected(#[from] StateError),
    #[error("the raft node has stopped")]
    Stopped,
}

/// An event with the index of the entry that produced it.
#[derive(Debug, Clone)]
pub struct AppliedEvent {
    pub index: u64,
    pub event: Event,
}

pub(super) struct Proposal {
    pub cmd: Command,
    pub reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

#[derive(Clone)]
pub struct RaftHandle {
    pub(super) tx: mpsc::Sender<Proposal>,
    pub(super) state: Arc<RwLock<State>>,
    pub(super) events: broadcast::Sender<Arc<AppliedEvent>>,
    pub(super) status: watch::Receiver<NodeStatus>,
    pub(super) engine: Arc<dyn Engine>,
}

impl RaftHandle {
    /// Proposes a command stamped with the current time; answers once it is applied.
    pub async fn propose(&self, kind: Kind) -> Result<Outcome, ProposeError> {
        self.propose_cmd(Command::new(cd_common::time::now_ms(), kind))
            .await
    }

    pub async fn propose_cmd(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Proposal { cmd, reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Reads applied state. Keep `f` short: apply waits for it.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let guard = self.state.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AppliedEvent>> {
        self.events.subscribe()
    }

    pub fn status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.status.borrow().role == Role::Leader
    }

    /// Stored log chunks of a stage (all attempts when `attempt` is 0) from `from` on.
    pub fn read_logs(
        &self,
        run_id: &str,
        stage: &str,
        attempt: u32,
        from: (u32, u64),
        limit: usize,
    ) -> Result<Vec<LogRecord>, StoreError> {
        read_chunks(self.engine.as_ref(), run_id, stage, attempt, from, limit)
    }

    /// Waits until the node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<(), ProposeError> {
        let mut rx = self.status.clone();
        rx.wait_for(|s| s.applied >= index)
            .await
            .map(|_| ())
            .map_err(|_| ProposeError::Stopped)
    }
}
