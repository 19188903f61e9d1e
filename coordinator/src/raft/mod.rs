//! The Raft node: one task owns `raft::RawNode`; everyone else holds a cheap `RaftHandle` that
//! sends requests over an `mpsc` with a `oneshot` for the answer (STYLE.md, "The Raft node").
//!
//! A proposal is answered when its entry is *applied*, with apply's result; replies are keyed
//! by (term, index), so a reply never goes to the wrong caller after a leader change.

mod handle;
mod node;
mod peer_link;
pub mod transport;

use std::collections::BTreeMap;

use tokio::sync::mpsc;

pub use handle::{AppliedEvent, NodeStatus, PeerProgress, ProposeError, RaftHandle, Role};
pub use node::{NodeConfig, NodeError, start_node};

/// How a transport tells the node about delivery: unreachable peers and finished snapshots.
#[derive(Clone)]
pub struct Feedback {
    tx: mpsc::Sender<handle::Request>,
}

impl Feedback {
    pub fn unreachable(&self, id: u64) {
        let _ = self.tx.try_send(handle::Request::Unreachable(id));
    }

    pub fn snapshot_done(&self, to: u64, ok: bool) {
        let _ = self.tx.try_send(handle::Request::SnapshotDone { to, ok });
    }
}

/// Sends Raft messages to peers.
pub trait Transport: Send + 'static {
    /// Called once before the node runs.
    fn start(&mut self, _feedback: Feedback) {}
    /// The peers (id -> API address) after every membership change.
    fn set_members(&mut self, _peers: &BTreeMap<u64, String>) {}
    /// Queues messages; must not block (drop and report unreachable when a queue is full).
    fn send(&mut self, msgs: Vec<raft::eraftpb::Message>);
}

/// Transport for a cluster of one: there is nobody to talk to.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&mut self, msgs: Vec<raft::eraftpb::Message>) {
        if !msgs.is_empty() {
            tracing::warn!(
                count = msgs.len(),
                "dropping raft messages: no peers configured"
            );
        }
    }
}
