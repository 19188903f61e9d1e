//! The one mapping from our errors to gRPC status codes (DESIGN.md, "API conventions").

use tonic::{Code, Status};

use crate::raft::ProposeError;
use crate::state::StateError;
use crate::store::StoreError;

/// Metadata key naming the leader's address on an UNAVAILABLE answer from a follower.
pub const LEADER_METADATA: &str = "cd-leader";
/// Request metadata asking for this node's applied state without a linearizability check.
pub const STALE_METADATA: &str = "cd-stale";

pub fn from_state(e: StateError) -> Status {
    match e {
        StateError::NotFound(m) => Status::not_found(m),
        StateError::InvalidArgument { field, message } => {
            Status::invalid_argument(format!("{field}: {message}"))
        }
        StateError::FailedPrecondition(m) => Status::failed_precondition(m),
        StateError::Stale(m) => Status::failed_precondition(format!("stale attempt: {m}")),
        StateError::PermissionDenied(m) => Status::permission_denied(m),
    }
}

pub fn from_propose(e: ProposeError) -> Status {
    match e {
        ProposeError::Rejected(e) => from_state(e),
        e @ ProposeError::NotLeader { .. } => {
            let ProposeError::NotLeader { leader_addr, .. } = &e else {
                unreachable!()
            };
            let mut s = Status::new(Code::Unavailable, format!("{e}; retry"));
            if !leader_addr.is_empty()
                && let Ok(v) = leader_addr.parse()
            {
                s.metadata_mut().insert(LEADER_METADATA, v);
            }
            s
        }
        ProposeError::Invalid(m) => Status::failed_precondition(m),
        ProposeError::Stopped => Status::unavailable("coordinator is shutting down"),
    }
}

pub fn from_store(e: StoreError) -> Status {
    Status::internal(format!("storage: {e}"))
}

pub fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}
