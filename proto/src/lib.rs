//! Generated gRPC types and services for Conveyor (`cd.v1`).
//!
//! Field tags are additive: never renumber or reuse one (DESIGN.md, API conventions).

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("cd.v1");
}

/// Peer traffic between coordinators.
#[allow(clippy::all, clippy::pedantic)]
pub mod raft_v1 {
    tonic::include_proto!("cd.raft.v1");
}

/// Encoded `FileDescriptorSet` for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cd_descriptor");

mod redact;
