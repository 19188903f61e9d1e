//! The Raft log, HardState, ConfState and the latest state-machine snapshot, implementing
//! `raft::Storage`: entries and HardState in the append-only `Wal` (the hot path: one write and
//! one fdatasync per Ready), ConfState and snapshots in the `Engine` beside the bulk data they
//! cover. raft-rs calls `Storage` through `&self`, so the indexes it asks for most are cached
//! behind a lock and only changed after a successful write.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::wal::Wal;
use super::{Batch, Engine, Result, StoreError, Tree};

const HARD_STATE: &[u8] = b"hardstate";
const CONF_STATE: &[u8] = b"confstate";
const SNAPSHOT: &[u8] = b"snapshot";

/// A state-machine snapshot with the Raft position it was taken at.
pub type SavedSnapshot = Snapshot;

#[derive(Default)]
struct Cache {
    hs: HardState,
    cs: ConfState,
    snap_index: u64,
    snap_term: u64,
    last_index: u64,
}

pub struct RaftStore {
    engine: Arc<dyn Engine>,
    wal: Wal,
    cache: RwLock<Cache>,
    /// Set when Raft asked for a snapshot the stored one cannot serve (too old a
    /// configuration); the node takes a fresh one.
    snapshot_wanted: std::sync::atomic::AtomicBool,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: what.to_string(),
        message: e.to_string(),
    }
}

fn decode<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M> {
    M::parse_from_bytes(bytes).map_err(|e| corrupt(what, e))
}

fn encode<M: protobuf::Message>(m: &M) -> Result<Vec<u8>> {
    m.write_to_bytes().map_err(|e| corrupt("encode", e))
}

impl RaftStore {
    /// Opens the log. A store that was never initialised gets `voters` as its first
    /// configuration (etcd-style static bootstrap); pass none to join an existing cluster.
    pub fn open(engine: Arc<dyn Engine>, wal: Wal, voters: &[u64]) -> Result<Self> {
        if wal.is_empty() {
            migrate_from_engine(engine.as_ref(), &wal)?;
        }
        super::upgrade_log_values(engine.as_ref())?;
        let mut c = Cache::default();
        if let Some(hs) = wal.hard_state() {
            c.hs = hs;
        }
        if let Some(b) = engine.get(Tree::Meta, CONF_STATE)? {
            c.cs = decode("confstate", &b)?;
        }
        if let Some(b) = engine.get(Tree::Meta, SNAPSHOT)? {
            let snap: Snapshot = decode("snapshot", &b)?;
            c.snap_index = snap.get_metadata().index;
            c.snap_term = snap.get_metadata().term;
        }
        // Entries a snapshot covers may outlive a crash between the two writes.
        wal.compact(c.snap_index)?;
        c.last_index = wal
            .bounds()
            .map_or(c.snap_index, |(_, last)| last.max(c.snap_index));
        // The snapshot was synced before the log learnt of it; Raft needs commit >= applied.
        c.hs.commit = c.hs.commit.max(c.snap_index);
        c.hs.term = c.hs.term.max(c.snap_term);
        let fresh = c.cs.voters.is_empty() && c.hs == HardState::default() && c.last_index == 0;
        if fresh && !voters.is_empty() {
            c.cs.voters = voters.to_vec();
            let mut b = Batch::default();
            b.put(Tree::Meta, CONF_STATE, encode(&c.cs)?);
            engine.write(b)?;
            engine.sync()?;
        }
        Ok(RaftStore {
            engine,
            wal,
            cache: RwLock::new(c),
            snapshot_wanted: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    fn cache(&self) -> RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn cache_mut(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn hard_state(&self) -> HardState {
        self.cache().hs.clone()
    }

    pub fn conf_state(&self) -> ConfState {
        self.cache().cs.clone()
    }

    pub fn last_index(&self) -> u64 {
        self.cache().last_index
    }

    /// Appends entries (replacing any conflicting suffix) and the HardState in one batch, then
    /// makes it durable when `sync` (raft-rs's `must_sync`: new entries, a new vote or term).
    /// A HardState that only moved its commit index needs no fsync: a lost commit index is
    /// learned again from the leader. Nothing may be acknowledged before this returns.
    pub fn persist(&self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<()> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        self.wal.append(entries, hs, sync || !entries.is_empty())?;
        let mut c = self.cache_mut();
        if let Some(last) = entries.last() {
            c.last_index = last.index;
        }
        if let Some(hs) = hs {
            c.hs = hs.clone();
        }
        Ok(())
    }

    /// Records a newer commit index (from a light ready). Not synced: a lost commit index is
    /// recomputed by Raft, and the entries themselves are already durable.
    pub fn set_commit(&self, commit: u64) -> Result<()> {
        let mut hs = self.hard_state();
        if commit <= hs.commit {
            return Ok(());
        }
        hs.commit = commit;
        self.wal.append(&[], Some(&hs), false)?;
        self.cache_mut().hs = hs;
        Ok(())
    }

    pub fn set_conf_state(&self, cs: &ConfState) -> Result<()> {
        let mut b = Batch::default();
        b.put(Tree::Meta, CONF_STATE, encode(cs)?);
        self.engine.write(b)?;
        self.engine.sync()?;
        self.cache_mut().cs = cs.clone();
        Ok(())
    }

    /// The latest state-machine snapshot, if one was taken.
    pub fn load_snapshot(&self) -> Result<Option<SavedSnapshot>> {
        stored_snapshot(self.engine.as_ref())
    }

    /// Stores a snapshot durably (with all bulk data written before it), then drops the log
    /// entries it covers. `extra` is written in the same batch.
    pub fn save_snapshot(&self, snap: &SavedSnapshot, extra: Batch) -> Result<()> {
        let meta = snap.get_metadata();
        let (index, term) = (meta.index, meta.term);
        let mut b = extra;
        b.put(Tree::Meta, SNAPSHOT, encode(snap)?);
        b.put(Tree::Meta, CONF_STATE, encode(meta.get_conf_state())?);
        self.engine.write(b)?;
        self.engine.sync()?;
        {
            let mut c = self.cache_mut();
            c.snap_index = index;
            c.snap_term = term;
            c.cs = meta.get_conf_state().clone();
            if c.last_index < index {
                c.last_index = index;
            }
        }
        // Compaction need not be durable: leftover entries below the snapshot are ignored.
        self.wal.compact(index)
    }

    /// Replaces everything with a snapshot received from the leader: its log chunks and
    /// state, and no log entries (they all precede or conflict with it). Returns the state
    /// snapshot bytes.
    pub fn install(&self, snap: &Snapshot) -> Result<Vec<u8>> {
        let meta = snap.get_metadata();
        let mut b = Batch::default();
        let state = super::unbundle(&snap.data, &mut b)?;
        let mut stored = snap.clone();
        stored.data = state.clone().into();
        b.put(Tree::Meta, SNAPSHOT, encode(&stored)?);
        b.put(Tree::Meta, CONF_STATE, encode(meta.get_conf_state())?);
        let mut hs = self.hard_state();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.engine.write(b)?;
        self.engine.sync()?;
        // After the snapshot is durable; a crash in between leaves log entries that Raft
        // treats as an uncommitted suffix and the leader overwrites.
        self.wal.reset(&hs)?;
        let mut c = self.cache_mut();
        c.snap_index = meta.index;
        c.snap_term = meta.term;
        c.last_index = meta.index;
        c.cs = meta.get_conf_state().clone();
        c.hs = hs;
        Ok(state)
    }

    /// Whether Raft asked for a fresher snapshot since the last call (and clears the flag).
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }
}

/// The latest state-machine snapshot kept in `engine`, read without opening the log.
pub fn stored_snapshot(engine: &dyn Engine) -> Result<Option<SavedSnapshot>> {
    engine
        .get(Tree::Meta, SNAPSHOT)?
        .map(|b| decode("snapshot", &b))
        .transpose()
}

/// Moves a log kept in the engine by older builds into the `Wal`, once.
fn migrate_from_engine(engine: &dyn Engine, wal: &Wal) -> Result<()> {
    let hs: Option<HardState> = engine
        .get(Tree::Meta, HARD_STATE)?
        .map(|b| decode("hardstate", &b))
        .transpose()?;
    let rows = engine.scan(Tree::RaftLog, &[], None, usize::MAX)?;
    if hs.is_none() && rows.is_empty() {
        return Ok(());
    }
    let mut entries = Vec::with_capacity(rows.len());
    for (_, v) in &rows {
        entries.push(decode::<Entry>("entry", v)?);
    }
    tracing::info!(
        entries = entries.len(),
        "moving the Raft log from the key-value store to its own file"
    );
    wal.append(&entries, hs.as_ref(), true)?;
    let mut b = Batch::default();
    b.delete(Tree::Meta, HARD_STATE);
    for (k, _) in rows {
        b.delete(Tree::RaftLog, &k);
    }
    engine.write(b)?;
    engine.sync()
}

fn store_err(e: StoreError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl raft::Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.cache();
        Ok(RaftState::new(c.hs.clone(), c.cs.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let (first, last) = {
            let c = self.cache();
            (c.snap_index + 1, c.last_index)
        };
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut out = self.wal.entries(low, high, max_size).map_err(store_err)?;
        if (out.is_empty() && low < high) || (max_size.is_none() && out.len() as u64 != high - low)
        {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (snap_index, snap_term, last) = {
            let c = self.cache();
            (c.snap_index, c.snap_term, c.last_index)
        };
        if idx == snap_index {
            return Ok(snap_term);
        }
        if idx < snap_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.wal.term(idx) {
            Some(t) => Ok(t),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.cache().snap_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.cache().last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let fits = |s: &Snapshot| {
            let cs = s.get_metadata().get_conf_state();
            s.get_metadata().index >= request_index
                && (cs.voters.contains(&to) || cs.learners.contains(&to))
        };
        match self.load_snapshot().map_err(store_err)? {
            // A node not in the snapshot's configuration would refuse it.
            Some(mut s) if fits(&s) => {
                let data = super::bundle(self.engine.as_ref(), &s.data).map_err(store_err)?;
                s.data = data.into();
                Ok(s)
            }
            _ => {
                self.snapshot_wanted
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemEngine;
    use raft::Storage;

    fn wal(dir: &tempfile::TempDir) -> Wal {
        Wal::open(dir.path()).unwrap()
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    #[test]
    fn bootstrap_sets_voters_once() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::default());
        let dir = tempfile::tempdir().unwrap();
        let s = RaftStore::open(engine.clone(), wal(&dir), &[1]).unwrap();
        assert_eq!(s.conf_state().voters, vec![1]);
        s.persist(&[entry(1, 1)], None, true).unwrap();
        drop(s);
        let s = RaftStore::open(engine, wal(&dir), &[7]).unwrap();
        assert_eq!(
            s.conf_state().voters,
            vec![1],
            "reopen must not re-bootstrap"
        );
    }

    #[test]
    fn persist_replaces_conflicting_suffix_and_compacts() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::default());
        let dir = tempfile::tempdir().unwrap();
        let s = RaftStore::open(engine.clone(), wal(&dir), &[1]).unwrap();
        s.persist(&[entry(1, 1), entry(2, 1), entry(3, 1)], None, true)
            .unwrap();
        s.persist(&[entry(2, 2)], None, true).unwrap();
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        assert!(s.term(3).is_err());
        let got = s
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.iter().map(|e| e.term).collect::<Vec<_>>(), vec![1, 2]);

        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 2;
        snap.mut_metadata().term = 2;
        snap.mut_metadata().mut_conf_state().voters = vec![1];
        snap.data = b"state".to_vec().into();
        s.save_snapshot(&snap, Batch::default()).unwrap();
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 2);
        assert!(matches!(
            s.entries(1, 3, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        drop(s);
        let reopened = RaftStore::open(engine, wal(&dir), &[]).unwrap();
        assert_eq!(reopened.first_index().unwrap(), 3);
        assert_eq!(reopened.last_index(), 2);
        assert!(
            reopened.snapshot(2, 7).is_err(),
            "a node outside the snapshot's configuration needs a fresher one"
        );
        assert!(reopened.take_snapshot_request());
        let sent = reopened.snapshot(2, 1).unwrap();
        let mut b = Batch::default();
        assert_eq!(
            crate::store::unbundle(&sent.data, &mut b).unwrap(),
            b"state"
        );
    }

    #[test]
    fn a_log_kept_in_the_engine_by_an_older_build_moves_into_the_wal() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::default());
        let mut b = Batch::default();
        for e in [entry(1, 1), entry(2, 2)] {
            b.put(Tree::RaftLog, &e.index.to_be_bytes(), encode(&e).unwrap());
        }
        let hs = HardState {
            term: 2,
            vote: 1,
            commit: 2,
            ..Default::default()
        };
        b.put(Tree::Meta, HARD_STATE, encode(&hs).unwrap());
        engine.write(b).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = RaftStore::open(engine.clone(), wal(&dir), &[]).unwrap();
        assert_eq!(s.hard_state(), hs);
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        assert!(engine.get(Tree::Meta, HARD_STATE).unwrap().is_none());
        assert!(
            engine
                .scan(Tree::RaftLog, &[], None, 10)
                .unwrap()
                .is_empty()
        );
        drop(s);
        let s = RaftStore::open(engine, wal(&dir), &[]).unwrap();
        assert_eq!(
            s.last_index(),
            2,
            "the moved log is read from the wal after"
        );
    }
}
