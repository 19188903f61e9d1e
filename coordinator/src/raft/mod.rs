//! The Raft node: one task owns `raft::RawNode`; everyone else holds a cheap `RaftHandle` that
//! sends requests over an `mpsc` with a `oneshot` for the answer (STYLE.md, "The Raft node").
//!
//! A proposal is answered when its entry is *applied*, with apply's result; replies are keyed
//! by (term, index), so a reply never goes to the wrong caller after a leader change.

mod handle;
mod node;

pub use handle::{AppliedEvent, NodeStatus, ProposeError, RaftHandle, Role};
pub use node::{NodeConfig, NodeError, start_node};

/// Sends Raft messages to peers. Single-node clusters use `NoPeers`; the peer gRPC transport
/// comes with clustering.
pub trait Transport: Send + 'static {
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
