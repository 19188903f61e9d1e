//! Conveyor coordinator: the replicated state machine, its Raft node and storage, the
//! leader's scheduler, promotion gates and the gRPC API (DESIGN.md, "Workspace").

pub mod api;
pub mod gate;
pub mod prometheus;
pub mod raft;
pub mod scheduler;
pub mod secret_key;
pub mod server;
pub mod state;
pub mod store;
pub mod triggers;
