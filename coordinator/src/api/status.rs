//! The one mapping from our errors to gRPC status codes (DESIGN.md, "API conventions").

use tonic::{Code, Status};

use crate::raft::ProposeError;
use crate::state::StateError;
use crate::store::StoreError;

/// Metadata key naming the leader's address on an UNAVAILABLE answer from a follower.
pub const LEADER_METADATA: &str = "cd-leader";

pub fn from_state(e: StateError) -> Status {
    match e {
        StateError::NotFound(m) => Status::not_found(m),
        StateError::InvalidArgument { field, message } => {
            Status::invalid_argument(format!("{field}: {message}"))
        }
        StateError::FailedPrecondition(m) => Status::failed_precondition(m),
        StateError::Stale(m) => Status::failed_precondition(format!("stale attempt: {m}")),
    }
}

pub fn from_propose(e: ProposeError) -> Status {
    match e {
        ProposeError::Rejected(e) => from_state(e),
        ProposeError::NotLeader { leader_id } => {
            let mut s = Status::new(
                Code::Unavailable,
                if leader_id == 0 {
                    "no leader elected yet; retry".to_string()
                } else {
                    format!("not the leader; node {leader_id} is")
                },
            );
            if leader_id != 0
                && let Ok(v) = leader_id.to_string().parse()
            {
                s.metadata_mut().insert(LEADER_METADATA, v);
            }
            s
        }
        ProposeError::Stopped => Status::unavailable("coordinator is shutting down"),
    }
}

pub fn from_store(e: StoreError) -> Status {
    Status::internal(format!("storage: {e}"))
}

pub fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {message}"))
}
