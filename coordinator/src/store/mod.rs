//! Storage behind our own traits (DESIGN.md, "store/"): an `Engine` of ordered key spaces with
//! atomic batches and an explicit durability barrier, implemented by sled for real nodes and by
//! memory for unit tests. No sled type leaves this folder.

mod bulk;
mod bundle;
mod mem_engine;
mod raft_log;
mod sled_engine;
mod wal;

pub use bulk::{LogRecord, chunk_key, read_chunks, stored_value, upgrade_log_values};
pub use bundle::{bundle, unbundle};
pub use mem_engine::MemEngine;
pub use raft_log::{RaftStore, SavedSnapshot, stored_snapshot};
pub use sled_engine::SledEngine;
pub use wal::Wal;

/// The key spaces. They share one engine so one batch can span them atomically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    /// Raft entries by big-endian index: written only by older builds, read once to move
    /// them into the `Wal`.
    RaftLog,
    /// ConfState, the state snapshot and other single values.
    Meta,
    /// Bulk data written by apply: log chunks.
    Logs,
}

impl Tree {
    fn prefix(self) -> u8 {
        match self {
            Tree::RaftLog => b'l',
            Tree::Meta => b'm',
            Tree::Logs => b'g',
        }
    }

    pub(crate) fn key(self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 1);
        k.push(self.prefix());
        k.extend_from_slice(key);
        k
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O: {0}")]
    Io(String),
    #[error("corrupt record {what}: {message}")]
    Corrupt { what: String, message: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Writes applied together or not at all.
#[derive(Debug, Default)]
pub struct Batch {
    pub(crate) ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn put(&mut self, tree: Tree, key: &[u8], value: Vec<u8>) {
        self.ops.push((tree.key(key), Some(value)));
    }

    pub fn delete(&mut self, tree: Tree, key: &[u8]) {
        self.ops.push((tree.key(key), None));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// An ordered key-value store with atomic batches.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Keys in `[start, end)` (or to the end of the tree), in order, at most `limit`.
    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Applies every write of the batch atomically (not yet durable: see `sync`).
    fn write(&self, batch: Batch) -> Result<()>;
    /// Returns once everything written so far is on stable storage.
    fn sync(&self) -> Result<()>;
}
