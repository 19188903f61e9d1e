//! The task that owns `RawNode`: ticks, drains proposals in groups (one fsync per group), and
//! handles each `Ready` in raft-rs's order: send messages; install a snapshot; apply committed
//! entries; persist entries and HardState durably; send persisted messages; advance; handle
//! the light ready; advance_apply (DEPENDENCIES.md).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raft::eraftpb::{Entry, EntryType, Snapshot};
use raft::{RawNode, StateRole};
use slog::Drain;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::Transport;
use super::handle::{AppliedEvent, NodeStatus, Proposal, ProposeError, RaftHandle, Role};
use crate::state::{self, Command, Event, Outcome, State};
use crate::store::{Batch, Engine, RaftStore, StoreError, Tree, chunk_key};

/// Most proposals taken from the channel before one Ready (and one fsync) handles them all.
const MAX_GROUP: usize = 4096;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// Initial voters when the store is empty (static bootstrap).
    pub voters: Vec<u64>,
    pub tick: Duration,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Take a state snapshot (and compact the log) after this many applied entries.
    pub snapshot_every: u64,
}

impl NodeConfig {
    pub fn single(id: u64) -> Self {
        NodeConfig {
            id,
            voters: vec![id],
            tick: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 3,
            snapshot_every: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("{0}")]
    Snapshot(String),
}

struct Node<T: Transport> {
    raw: RawNode<RaftStore>,
    state: Arc<RwLock<State>>,
    engine: Arc<dyn Engine>,
    events: broadcast::Sender<Arc<AppliedEvent>>,
    status: watch::Sender<NodeStatus>,
    transport: T,
    /// Replies keyed by index, holding the term the entry was proposed in.
    pending: BTreeMap<u64, (u64, oneshot::Sender<Result<Outcome, ProposeError>>)>,
    applied: u64,
    applied_term: u64,
    snapshot_index: u64,
    snapshot_every: u64,
}

fn raft_logger() -> slog::Logger {
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}

/// Opens the store, restores the latest snapshot, and spawns the node task. The task stops
/// (after a final snapshot) when `shutdown` fires; the returned join handle says how it ended.
pub fn start_node(
    cfg: NodeConfig,
    engine: Arc<dyn Engine>,
    transport: impl Transport,
    shutdown: CancellationToken,
) -> Result<(RaftHandle, tokio::task::JoinHandle<Result<(), NodeError>>), NodeError> {
    let store = RaftStore::open(engine.clone(), &cfg.voters)?;
    let (state, applied, applied_term) = match store.load_snapshot()? {
        Some(s) => {
            let st = State::from_snapshot(&s.data).map_err(NodeError::Snapshot)?;
            (st, s.get_metadata().index, s.get_metadata().term)
        }
        None => (State::default(), 0, 0),
    };
    let raft_cfg = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_tick,
        heartbeat_tick: cfg.heartbeat_tick,
        applied,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_cfg.validate()?;
    let single = store.conf_state().voters == vec![cfg.id];
    let mut raw = RawNode::new(&raft_cfg, store, &raft_logger())?;
    if single {
        // A cluster of one need not wait an election timeout to lead.
        raw.campaign()?;
    }
    let state = Arc::new(RwLock::new(state));
    let (events, _) = broadcast::channel(8192);
    let (status_tx, status_rx) = watch::channel(NodeStatus {
        id: cfg.id,
        role: Role::Follower,
        leader_id: 0,
        term: 0,
        commit: applied,
        applied,
        last_index: applied,
    });
    let (tx, rx) = mpsc::channel(MAX_GROUP);
    let handle = RaftHandle {
        tx,
        state: state.clone(),
        events: events.clone(),
        status: status_rx,
        engine: engine.clone(),
    };
    let node = Node {
        raw,
        state,
        engine,
        events,
        status: status_tx,
        transport,
        pending: BTreeMap::new(),
        applied,
        applied_term,
        snapshot_index: applied,
        snapshot_every: cfg.snapshot_every.max(1),
    };
    let span = info_span!("raft", node = cfg.id);
    let task = tokio::spawn(node.run(rx, cfg.tick, shutdown).instrument(span));
    Ok((handle, task))
}

impl<T: Transport> Node<T> {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Proposal>,
        tick: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), NodeError> {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        info!(applied = self.applied, "raft node started");
        loop {
            tokio::select! {
                _ = ticker.tick() => { self.raw.tick(); }
                p = rx.recv() => match p {
                    Some(p) => {
                        self.propose(p);
                        for _ in 1..MAX_GROUP {
                            match rx.try_recv() {
                                Ok(p) => self.propose(p),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = shutdown.cancelled() => break,
            }
            if let Err(e) = self.on_ready() {
                error!(error = %e, "raft node stopping on a storage error");
                self.fail_all();
                return Err(e);
            }
            self.publish_status();
        }
        self.fail_all();
        if self.applied > self.snapshot_index {
            self.take_snapshot()?;
        }
        info!(applied = self.applied, "raft node stopped");
        Ok(())
    }

    fn propose(&mut self, p: Proposal) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = p.reply.send(Err(ProposeError::NotLeader {
                leader_id: self.raw.raft.leader_id,
            }));
            return;
        }
        let data = p.cmd.encode_to_vec();
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                self.pending.insert(index, (self.raw.raft.term, p.reply));
            }
            Err(e) => {
                debug!(error = %e, "proposal dropped");
                let _ = p.reply.send(Err(ProposeError::NotLeader {
                    leader_id: self.raw.raft.leader_id,
                }));
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), NodeError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let was_leader = self.raw.raft.state == StateRole::Leader;
        let mut ready = self.raw.ready();
        self.transport.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        self.apply_entries(ready.take_committed_entries())?;
        self.raw.store().persist(ready.entries(), ready.hs())?;
        self.transport.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.store().set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        if was_leader && self.raw.raft.state != StateRole::Leader {
            // Entries this node proposed may be overwritten by the new leader; callers retry.
            self.fail_all();
        }
        if self.applied >= self.snapshot_index + self.snapshot_every {
            self.take_snapshot()?;
        }
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::default();
        let mut out = Vec::new();
        let mut replies = Vec::new();
        {
            let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
            for e in entries {
                self.applied = e.index;
                self.applied_term = e.term;
                let reply = self.pending.remove(&e.index);
                if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                    // Leader no-ops and (for now) configuration changes carry no command.
                    if let Some((_, tx)) = reply {
                        replies.push((tx, Ok(Outcome::Done)));
                    }
                    continue;
                }
                let applied = match Command::decode(&e.data) {
                    Ok(cmd) => state::apply(&mut st, &cmd, e.index),
                    Err(err) => {
                        warn!(index = e.index, error = %err, "undecodable entry skipped");
                        continue;
                    }
                };
                for ev in &applied.events {
                    if let Event::LogAppended {
                        run_id,
                        stage,
                        attempt,
                        seq,
                        data,
                    } = ev
                    {
                        batch.put(
                            Tree::Logs,
                            &chunk_key(run_id, stage, *attempt, *seq),
                            data.clone(),
                        );
                    }
                }
                out.extend(applied.events.into_iter().map(|event| AppliedEvent {
                    index: e.index,
                    event,
                }));
                if let Some((term, tx)) = reply {
                    let r = if term == e.term {
                        applied.result.map_err(ProposeError::from)
                    } else {
                        Err(ProposeError::NotLeader {
                            leader_id: self.raw.raft.leader_id,
                        })
                    };
                    replies.push((tx, r));
                }
            }
        }
        batch.put(Tree::Meta, b"applied", self.applied.to_be_bytes().to_vec());
        // Bulk data goes with the applied index; the Raft log, already durable, is the record,
        // so this write needs no fsync of its own (a snapshot syncs before compacting).
        self.engine.write(batch)?;
        for ev in out {
            let _ = self.events.send(Arc::new(ev));
        }
        for (tx, r) in replies {
            let _ = tx.send(r);
        }
        Ok(())
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), NodeError> {
        let st = State::from_snapshot(&snap.data).map_err(NodeError::Snapshot)?;
        self.raw.store().save_snapshot(&snap, Batch::default())?;
        let meta = snap.get_metadata();
        self.applied = meta.index;
        self.applied_term = meta.term;
        self.snapshot_index = meta.index;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = st;
        Ok(())
    }

    fn take_snapshot(&mut self) -> Result<(), NodeError> {
        let data = {
            let st = self.state.read().unwrap_or_else(|e| e.into_inner());
            st.to_snapshot()
                .map_err(|e| NodeError::Snapshot(e.to_string()))?
        };
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = self.applied;
        meta.term = self.applied_term;
        meta.set_conf_state(self.raw.store().conf_state());
        self.raw.store().save_snapshot(&snap, Batch::default())?;
        self.snapshot_index = self.applied;
        debug!(index = self.applied, "state snapshot taken, log compacted");
        Ok(())
    }

    fn fail_all(&mut self) {
        let leader_id = self.raw.raft.leader_id;
        for (_, (_, tx)) in std::mem::take(&mut self.pending) {
            let _ = tx.send(Err(ProposeError::NotLeader { leader_id }));
        }
    }

    fn publish_status(&self) {
        let r = &self.raw.raft;
        let s = NodeStatus {
            id: r.id,
            role: match r.state {
                StateRole::Leader => Role::Leader,
                StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
                StateRole::Follower => Role::Follower,
            },
            leader_id: r.leader_id,
            term: r.term,
            commit: r.raft_log.committed,
            applied: self.applied,
            last_index: r.raft_log.last_index(),
        };
        self.status.send_if_modified(|cur| {
            if *cur != s {
                *cur = s;
                true
            } else {
                false
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{NoPeers, Role};
    use crate::state::Kind;
    use crate::state::command::{ApplyPipeline, StartRun};
    use crate::store::MemEngine;

    fn spec_json() -> String {
        let spec =
            cd_common::spec::parse("name: p\nstages:\n  - name: a\n    run: 'true'\n", "p.yaml")
                .expect("valid spec");
        serde_json::to_string(&spec).expect("json")
    }

    async fn leader(
        cfg: &NodeConfig,
        engine: &Arc<dyn Engine>,
    ) -> (
        RaftHandle,
        tokio::task::JoinHandle<Result<(), NodeError>>,
        CancellationToken,
    ) {
        let stop = CancellationToken::new();
        let (h, task) =
            start_node(cfg.clone(), engine.clone(), NoPeers, stop.clone()).expect("node starts");
        h.status()
            .wait_for(|s| s.role == Role::Leader)
            .await
            .expect("becomes leader");
        (h, task, stop)
    }

    async fn propose_runs(h: &RaftHandle, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..n {
            match h
                .propose(Kind::StartRun(StartRun {
                    pipeline: "p".into(),
                    ..Default::default()
                }))
                .await
            {
                Ok(Outcome::Run(id)) => ids.push(id),
                other => panic!("unexpected answer {other:?}"),
            }
        }
        ids
    }

    #[tokio::test]
    async fn answers_carry_apply_results_and_state_survives_snapshot_and_replay() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::default());
        let mut cfg = NodeConfig::single(1);
        cfg.snapshot_every = 4;
        let (h, task, stop) = leader(&cfg, &engine).await;
        h.propose(Kind::ApplyPipeline(ApplyPipeline {
            name: "p".into(),
            spec_yaml: "y".into(),
            file_name: "p.yaml".into(),
            spec_json: spec_json(),
        }))
        .await
        .expect("pipeline applied");
        let ids = propose_runs(&h, 10).await;
        assert_eq!(ids.first().map(String::as_str), Some("p-1"));
        assert_eq!(ids.last().map(String::as_str), Some("p-10"));
        // A refusal from apply reaches the caller as such.
        let refused = h
            .propose(Kind::StartRun(StartRun {
                pipeline: "nope".into(),
                ..Default::default()
            }))
            .await;
        assert!(matches!(
            refused,
            Err(ProposeError::Rejected(crate::state::StateError::NotFound(
                _
            )))
        ));
        let before = h.read(|s| s.clone());
        let applied = h.status().borrow().applied;

        // Crash: no final snapshot; restart replays the log after the last periodic snapshot.
        task.abort();
        let _ = task.await;
        drop(stop);
        let (h2, task2, stop2) = leader(&cfg, &engine).await;
        h2.wait_applied(applied).await.expect("replayed");
        assert_eq!(h2.read(|s| s.clone()), before);
        let snap = RaftStore::open(engine.clone(), &[])
            .expect("open")
            .load_snapshot()
            .expect("read");
        assert!(
            snap.is_some_and(|s| s.get_metadata().index > 0),
            "periodic snapshots were taken"
        );

        // Clean stop writes a snapshot at the applied index; a restart reads it back.
        let more = propose_runs(&h2, 1).await;
        assert_eq!(more, vec!["p-11".to_string()]);
        let after = h2.read(|s| s.clone());
        let applied = h2.status().borrow().applied;
        stop2.cancel();
        task2.await.expect("joins").expect("clean stop");
        let snap = RaftStore::open(engine.clone(), &[])
            .expect("open")
            .load_snapshot()
            .expect("read")
            .expect("snapshot");
        assert_eq!(snap.get_metadata().index, applied);
        let (h3, _task3, _stop3) = leader(&cfg, &engine).await;
        h3.wait_applied(applied).await.expect("loaded");
        assert_eq!(h3.read(|s| s.clone()), after);
    }

    #[tokio::test]
    async fn many_concurrent_proposals_are_each_answered_once() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::default());
        let (h, _task, _stop) = leader(&NodeConfig::single(1), &engine).await;
        h.propose(Kind::ApplyPipeline(ApplyPipeline {
            name: "p".into(),
            spec_yaml: "y".into(),
            file_name: "p.yaml".into(),
            spec_json: spec_json(),
        }))
        .await
        .expect("pipeline applied");
        let answers = futures::future::join_all((0..200).map(|_| {
            let h = h.clone();
            async move {
                h.propose(Kind::StartRun(StartRun {
                    pipeline: "p".into(),
                    ..Default::default()
                }))
                .await
            }
        }))
        .await;
        let mut ids: Vec<String> = answers
            .into_iter()
            .map(|a| match a {
                Ok(Outcome::Run(id)) => id,
                other => panic!("unexpected answer {other:?}"),
            })
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200, "every proposal got its own run");
    }
}
