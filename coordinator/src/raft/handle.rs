//! The handle API handlers and the scheduler use to reach the Raft task and read state.

use std::sync::{Arc, RwLock};

use raft::eraftpb::{ConfChangeV2, Message};
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
    /// A voter of the current configuration (false for learners and removed nodes).
    pub voter: bool,
    /// The leader believes this node holds entries it does not have (its data dir was lost):
    /// it must be re-added to catch up.
    pub lost_data: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader ({})", leader_text(*leader_id, leader_addr))]
    NotLeader {
        leader_id: u64,
        /// The leader's API address when known, for the `cd-leader` hint.
        leader_addr: String,
    },
    #[error(transparent)]
    Rejected(#[from] StateError),
    #[error("the raft node has stopped")]
    Stopped,
    #[error("{0}")]
    Invalid(String),
}

fn leader_text(id: u64, addr: &str) -> String {
    match (id, addr.is_empty()) {
        (0, _) => "no leader elected yet".into(),
        (id, true) => format!("leader is node {id}"),
        (id, false) => format!("leader is node {id} at {addr}"),
    }
}

/// An event with the index of the entry that produced it.
#[derive(Debug, Clone)]
pub struct AppliedEvent {
    pub index: u64,
    pub event: Event,
}

/// A peer's replication progress as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: u64,
    pub matched: u64,
    pub voter: bool,
    pub recent_active: bool,
    pub last_contact_ms: i64,
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, ProposeError>>;

/// Everything the Raft task can be asked to do.
pub(super) enum Request {
    Propose {
        cmd: Command,
        reply: Reply<Outcome>,
    },
    Step(Vec<Message>),
    ReadIndex {
        reply: Reply<()>,
    },
    ConfChange {
        cc: ConfChangeV2,
        context: Vec<u8>,
        reply: Reply<Outcome>,
    },
    TransferLeader(u64),
    Unreachable(u64),
    /// The stream on which this peer sent us Raft messages broke (its connection died).
    PeerStreamBroke(u64),
    SnapshotDone {
        to: u64,
        ok: bool,
    },
    Progress {
        reply: oneshot::Sender<Vec<PeerProgress>>,
    },
}

#[derive(Clone)]
pub struct RaftHandle {
    pub(super) tx: mpsc::Sender<Request>,
    pub(super) state: Arc<RwLock<State>>,
    pub(super) events: broadcast::Sender<Arc<AppliedEvent>>,
    pub(super) status: watch::Receiver<NodeStatus>,
    pub(super) engine: Arc<dyn Engine>,
}

impl RaftHandle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Proposes a command stamped with the current time; answers once it is applied.
    pub async fn propose(&self, kind: Kind) -> Result<Outcome, ProposeError> {
        self.propose_cmd(Command::new(cd_common::time::now_ms(), kind))
            .await
    }

    pub async fn propose_cmd(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        self.ask(|reply| Request::Propose { cmd, reply }).await
    }

    /// Returns once this node's applied state includes every write committed before the call
    /// (Raft ReadIndex). Only the leader answers; followers say who leads.
    pub async fn linearizable(&self) -> Result<(), ProposeError> {
        self.ask(|reply| Request::ReadIndex { reply }).await
    }

    /// Proposes a membership change; answers once it is applied. `context` carries the
    /// address of an added node.
    pub async fn change_membership(
        &self,
        cc: ConfChangeV2,
        context: Vec<u8>,
    ) -> Result<Outcome, ProposeError> {
        self.ask(|reply| Request::ConfChange { cc, context, reply })
            .await
    }

    /// Hands raft messages from a peer to the node; false if the node is overloaded.
    pub fn step(&self, msgs: Vec<Message>) -> bool {
        self.tx.try_send(Request::Step(msgs)).is_ok()
    }

    /// Tells the node that `from`'s peer stream ended with an error (its connection died, as
    /// when its process is killed). If `from` leads, this node stops waiting out the leader's
    /// lease (`give_up_lease` in `node.rs`). Dropped when the queue is full.
    pub fn peer_stream_broke(&self, from: u64) {
        let _ = self.tx.try_send(Request::PeerStreamBroke(from));
    }

    pub async fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        self.tx
            .send(Request::TransferLeader(to))
            .await
            .map_err(|_| ProposeError::Stopped)
    }

    /// The leader's view of each peer (empty on followers).
    pub async fn progress(&self) -> Vec<PeerProgress> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request::Progress { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
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

    /// The API address of `id`, if it is a known member.
    pub fn member_address(&self, id: u64) -> Option<String> {
        self.read(|st| st.members.get(&id).cloned())
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
