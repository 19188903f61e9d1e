//! The task that owns `RawNode`: ticks, drains requests in groups (one fsync per group), and
//! handles each `Ready` in raft-rs's order: send messages; install a snapshot; apply committed
//! entries; persist entries and HardState durably; send persisted messages; advance; handle
//! the light ready; advance_apply (DEPENDENCIES.md).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType,
    Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use slog::Drain;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::handle::{
    AppliedEvent, NodeStatus, PeerProgress, ProposeError, RaftHandle, Reply, Request, Role,
};
use super::{Feedback, Transport};
use crate::state::{self, Command, Event, Outcome, State};
use crate::store::{Batch, Engine, RaftStore, StoreError, Tree, Wal, chunk_key, stored_value};

/// Most requests taken from the channel before one Ready (and one fsync) handles them all.
const MAX_GROUP: usize = 4096;
/// A learner this close to the leader's last index is promoted to voter.
const PROMOTE_LAG: u64 = 16;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// Initial voters when the store is empty (static bootstrap); empty to join a cluster.
    pub voters: Vec<u64>,
    /// Initial members' API addresses (from `--initial-cluster`).
    pub members: BTreeMap<u64, String>,
    pub tick: Duration,
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Take a state snapshot (and compact the log) after this many applied entries.
    pub snapshot_every: u64,
    /// Directory of the Raft log's segment files.
    pub log_dir: PathBuf,
}

impl NodeConfig {
    pub fn single(id: u64, log_dir: PathBuf) -> Self {
        NodeConfig {
            id,
            voters: vec![id],
            members: BTreeMap::new(),
            tick: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_every: 10_000,
            log_dir,
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
    pending: BTreeMap<u64, (u64, Reply<Outcome>)>,
    /// ReadIndex requests sent to Raft, by context.
    reads: HashMap<Vec<u8>, Reply<()>>,
    /// Reads whose index is known, waiting for apply to reach it.
    read_waits: Vec<(u64, Reply<()>)>,
    /// Reads that arrived before this leader committed an entry of its term: raft-rs drops
    /// ReadIndex requests then, so they wait here and are issued once it has.
    reads_early: Vec<Reply<()>>,
    next_read: u64,
    last_heard: HashMap<u64, Instant>,
    promoting: HashSet<u64>,
    lost_data: bool,
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
    mut transport: impl Transport,
    shutdown: CancellationToken,
) -> Result<(RaftHandle, tokio::task::JoinHandle<Result<(), NodeError>>), NodeError> {
    let store = RaftStore::open(engine.clone(), Wal::open(&cfg.log_dir)?, &cfg.voters)?;
    let (mut state, applied, applied_term) = match store.load_snapshot()? {
        Some(s) => {
            let st = State::from_snapshot(&s.data).map_err(NodeError::Snapshot)?;
            (st, s.get_metadata().index, s.get_metadata().term)
        }
        None => (State::default(), 0, 0),
    };
    if state.members.is_empty() {
        state.members = cfg.members.clone();
    }
    let raft_cfg = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_tick,
        heartbeat_tick: cfg.heartbeat_tick,
        applied,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        // Followers learn a new commit index from the next append or heartbeat (every 2
        // ticks) instead of from one extra message per peer per commit: ~15% less CPU per
        // sequential commit and ~10% lower latency (BENCHMARKS.md), at the price of a
        // follower's applied state (what `--stale` reads see) lagging up to one heartbeat
        // when no write follows.
        skip_bcast_commit: true,
        ..Default::default()
    };
    raft_cfg.validate()?;
    let single = store.conf_state().voters == vec![cfg.id];
    let mut raw = RawNode::new(&raft_cfg, store, &raft_logger())?;
    if single {
        // A cluster of one need not wait an election timeout to lead.
        raw.campaign()?;
    }
    let (tx, rx) = mpsc::channel(MAX_GROUP);
    transport.start(Feedback { tx: tx.clone() });
    transport.set_members(&peers_of(&state.members, cfg.id));
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
        voter: false,
        lost_data: false,
    });
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
        reads: HashMap::new(),
        read_waits: Vec::new(),
        reads_early: Vec::new(),
        next_read: 0,
        last_heard: HashMap::new(),
        promoting: HashSet::new(),
        lost_data: false,
        applied,
        applied_term,
        snapshot_index: applied,
        snapshot_every: cfg.snapshot_every.max(1),
    };
    let span = info_span!("raft", node = cfg.id);
    let task = tokio::spawn(node.run(rx, cfg.tick, shutdown).instrument(span));
    Ok((handle, task))
}

fn peers_of(members: &BTreeMap<u64, String>, me: u64) -> BTreeMap<u64, String> {
    members
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(id, a)| (*id, a.clone()))
        .collect()
}

impl<T: Transport> Node<T> {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Request>,
        tick: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), NodeError> {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        info!(applied = self.applied, "raft node started");
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.raw.tick();
                    self.maybe_promote_learners();
                }
                r = rx.recv() => match r {
                    Some(r) => {
                        self.handle(r);
                        for _ in 1..MAX_GROUP {
                            match rx.try_recv() {
                                Ok(r) => self.handle(r),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = shutdown.cancelled() => break,
            }
            if let Err(e) = self.on_ready().await {
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

    fn not_leader(&self) -> ProposeError {
        let leader_id = self.raw.raft.leader_id;
        let leader_addr = self
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .members
            .get(&leader_id)
            .cloned()
            .unwrap_or_default();
        ProposeError::NotLeader {
            leader_id,
            leader_addr,
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn handle(&mut self, r: Request) {
        match r {
            Request::Propose { cmd, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                match self.raw.propose(Vec::new(), cmd.encode_to_vec()) {
                    Ok(()) => self.track(reply),
                    Err(e) => {
                        debug!(error = %e, "proposal dropped");
                        let _ = reply.send(Err(self.not_leader()));
                    }
                }
            }
            Request::Step(msgs) => {
                for mut m in msgs {
                    self.last_heard.insert(m.from, Instant::now());
                    self.guard_lost_data(&mut m);
                    if let Err(e) = self.raw.step(m) {
                        debug!(error = %e, "raft message ignored");
                    }
                }
            }
            Request::ReadIndex { reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                if self.raw.raft.commit_to_current_term() {
                    self.issue_read(reply);
                } else {
                    self.reads_early.push(reply);
                }
            }
            Request::ConfChange { cc, context, reply } => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                match self.raw.propose_conf_change(context, cc) {
                    Ok(()) => self.track(reply),
                    Err(e) => {
                        let _ = reply.send(Err(ProposeError::Invalid(format!(
                            "membership change refused: {e}"
                        ))));
                    }
                }
            }
            Request::TransferLeader(to) => self.raw.transfer_leader(to),
            Request::Unreachable(id) => self.raw.report_unreachable(id),
            Request::PeerStreamBroke(from) => {
                if give_up_lease(&mut self.raw.raft, from) {
                    info!(
                        leader = from,
                        "the leader's peer stream broke; campaigning without waiting out its lease"
                    );
                }
            }
            Request::SnapshotDone { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Request::Progress { reply } => {
                let _ = reply.send(self.progress());
            }
        }
    }

    /// A heartbeat's commit index is at most what the leader believes we hold; beyond our
    /// last index, we lost entries (a wiped data dir) and raft-rs would panic. Keep our own
    /// commit index instead and ask to be re-added (see `server::rejoin`).
    fn guard_lost_data(&mut self, m: &mut Message) {
        let last = self.raw.raft.raft_log.last_index();
        if m.get_msg_type() == MessageType::MsgHeartbeat && m.commit > last {
            if !self.lost_data {
                warn!(
                    leader = m.from,
                    leader_commit = m.commit,
                    last_index = last,
                    "the leader believes this node holds entries it does not have (lost data dir?); asking to be re-added"
                );
            }
            self.lost_data = true;
            m.commit = self.raw.raft.raft_log.committed;
        }
    }

    fn issue_read(&mut self, reply: Reply<()>) {
        self.next_read += 1;
        let ctx = self.next_read.to_be_bytes().to_vec();
        self.raw.read_index(ctx.clone());
        self.reads.insert(ctx, reply);
    }

    /// Remembers who waits for the entry just appended.
    fn track(&mut self, reply: Reply<Outcome>) {
        let index = self.raw.raft.raft_log.last_index();
        self.pending.insert(index, (self.raw.raft.term, reply));
    }

    fn progress(&self) -> Vec<PeerProgress> {
        if !self.is_leader() {
            return Vec::new();
        }
        let conf = self.raw.raft.prs().conf();
        let now = Instant::now();
        self.raw
            .raft
            .prs()
            .iter()
            .map(|(id, pr)| PeerProgress {
                id: *id,
                matched: pr.matched,
                voter: conf.voters().contains(*id),
                recent_active: pr.recent_active,
                last_contact_ms: self
                    .last_heard
                    .get(id)
                    .map_or(0, |t| now.duration_since(*t).as_millis() as i64),
            })
            .collect()
    }

    /// Proposes promotion of learners that have caught up with the leader's log.
    fn maybe_promote_learners(&mut self) {
        if !self.is_leader() || self.raw.raft.has_pending_conf() {
            return;
        }
        let last = self.raw.raft.raft_log.last_index();
        let ready: Vec<u64> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, pr)| {
                self.raw.raft.prs().conf().learners().contains(id)
                    && pr.matched + PROMOTE_LAG >= last
                    && !self.promoting.contains(id)
            })
            .map(|(id, _)| *id)
            .collect();
        if let Some(id) = ready.first() {
            let mut cc = ConfChangeV2::default();
            let mut single = ConfChangeSingle::default();
            single.set_change_type(ConfChangeType::AddNode);
            single.node_id = *id;
            cc.mut_changes().push(single);
            match self.raw.propose_conf_change(Vec::new(), cc) {
                Ok(()) => {
                    info!(node = id, "learner caught up; promoting to voter");
                    self.promoting.insert(*id);
                }
                Err(e) => debug!(error = %e, "promotion not proposed"),
            }
        }
    }

    async fn on_ready(&mut self) -> Result<(), NodeError> {
        if !self.raw.has_ready() {
            return self.maybe_snapshot();
        }
        let was_leader = self.is_leader();
        let mut ready = self.raw.ready();
        let early = ready.take_messages();
        let sent_early = !early.is_empty();
        self.send(early);
        if sent_early && !ready.entries().is_empty() {
            // The leader's appends go out before its own fsync, so that the followers' fsyncs
            // overlap it. Waking a peer's sending task from here puts it in this worker's LIFO
            // slot, which no other worker steals: without this yield it would wait for the
            // fsync below, and a commit would pay the leader's fsync and then a follower's.
            tokio::task::yield_now().await;
        }
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        self.apply_entries(ready.take_committed_entries())?;
        let read_states = ready.take_read_states();
        fail::fail_point!("raft-before-persist", |_| crash("raft-before-persist"));
        let must_sync = ready.must_sync();
        self.raw
            .store()
            .persist(ready.entries(), ready.hs(), must_sync)?;
        fail::fail_point!("raft-after-persist", |_| crash("raft-after-persist"));
        self.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.store().set_commit(commit)?;
        }
        self.send(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        if !self.reads_early.is_empty()
            && self.is_leader()
            && self.raw.raft.commit_to_current_term()
        {
            for reply in std::mem::take(&mut self.reads_early) {
                self.issue_read(reply);
            }
        }
        for rs in read_states {
            if let Some(reply) = self.reads.remove(&rs.request_ctx) {
                self.read_waits.push((rs.index, reply));
            }
        }
        let applied = self.applied;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.read_waits)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.read_waits = waiting;
        for (_, reply) in done {
            let _ = reply.send(Ok(()));
        }
        if was_leader && !self.is_leader() {
            // Entries this node proposed may be overwritten by the new leader; callers retry.
            self.fail_all();
        }
        self.maybe_snapshot()
    }

    /// Snapshots every `snapshot_every` entries, and when a peer needs one the stored snapshot
    /// cannot serve (its configuration predates the peer).
    fn maybe_snapshot(&mut self) -> Result<(), NodeError> {
        let wanted = self.raw.store().take_snapshot_request();
        if (wanted && self.applied > self.snapshot_index)
            || self.applied >= self.snapshot_index + self.snapshot_every
        {
            self.take_snapshot()?;
        }
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            self.transport.send(msgs);
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        if entries.is_empty() {
            return Ok(());
        }
        fail::fail_point!("raft-before-apply", |_| crash("raft-before-apply"));
        let mut batch = Batch::default();
        let mut out = Vec::new();
        let mut replies = Vec::new();
        let mut members_changed = false;
        {
            let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
            for e in entries {
                self.applied = e.index;
                self.applied_term = e.term;
                let reply = self.pending.remove(&e.index);
                let result = match e.get_entry_type() {
                    EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                        members_changed = true;
                        apply_conf_change(&mut self.raw, &mut st, &e).map(|()| Outcome::Done)
                    }
                    EntryType::EntryNormal if e.data.is_empty() => Ok(Outcome::Done),
                    EntryType::EntryNormal => match Command::decode(&e.data) {
                        Ok(cmd) => {
                            let applied = state::apply(&mut st, &cmd, e.index);
                            for ev in &applied.events {
                                if let Event::LogAppended {
                                    run_id,
                                    stage,
                                    attempt,
                                    seq,
                                    encoding,
                                    data,
                                } = ev
                                {
                                    batch.put(
                                        Tree::Logs,
                                        &chunk_key(run_id, stage, *attempt, *seq),
                                        stored_value(*encoding, data),
                                    );
                                }
                            }
                            out.extend(applied.events.into_iter().map(|event| AppliedEvent {
                                index: e.index,
                                event,
                            }));
                            applied.result.map_err(ProposeError::from)
                        }
                        Err(err) => {
                            warn!(index = e.index, error = %err, "undecodable entry skipped");
                            Err(ProposeError::Invalid(format!("undecodable entry: {err}")))
                        }
                    },
                };
                if let Some((term, tx)) = reply {
                    let r = if term == e.term {
                        result
                    } else {
                        Err(ProposeError::NotLeader {
                            leader_id: self.raw.raft.leader_id,
                            leader_addr: st
                                .members
                                .get(&self.raw.raft.leader_id)
                                .cloned()
                                .unwrap_or_default(),
                        })
                    };
                    replies.push((tx, r));
                }
            }
        }
        // Only bulk data (log chunks) goes to the engine. The Raft log, already durable, is the
        // record, so this write needs no fsync of its own (a snapshot syncs before compacting),
        // and no applied index goes with it: a restart restores the snapshot and replays the
        // log after it, and putting a chunk again is idempotent. (An applied-index key written
        // here on every Ready was never read and cost a sled insert per group of commands.)
        if !batch.is_empty() {
            self.engine.write(batch)?;
        }
        // Applied, nothing answered yet.
        fail::fail_point!("raft-after-apply", |_| crash("raft-after-apply"));
        if members_changed {
            self.promoting.clear();
            let members = self.members();
            self.transport
                .set_members(&peers_of(&members, self.raw.raft.id));
        }
        for ev in out {
            let _ = self.events.send(Arc::new(ev));
        }
        for (tx, r) in replies {
            let _ = tx.send(r);
        }
        Ok(())
    }

    fn members(&self) -> BTreeMap<u64, String> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .members
            .clone()
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), NodeError> {
        let state_bytes = self.raw.store().install(&snap)?;
        let st = State::from_snapshot(&state_bytes).map_err(NodeError::Snapshot)?;
        let meta = snap.get_metadata();
        info!(index = meta.index, "installed snapshot from the leader");
        self.applied = meta.index;
        self.applied_term = meta.term;
        self.snapshot_index = meta.index;
        self.lost_data = false;
        let members = st.members.clone();
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = st;
        self.transport
            .set_members(&peers_of(&members, self.raw.raft.id));
        Ok(())
    }

    fn take_snapshot(&mut self) -> Result<(), NodeError> {
        fail::fail_point!("raft-before-snapshot", |_| crash("raft-before-snapshot"));
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
        fail::fail_point!("raft-after-snapshot", |_| crash("raft-after-snapshot"));
        self.snapshot_index = self.applied;
        debug!(index = self.applied, "state snapshot taken, log compacted");
        Ok(())
    }

    fn fail_all(&mut self) {
        let err = self.not_leader();
        for (_, (_, tx)) in std::mem::take(&mut self.pending) {
            let _ = tx.send(Err(err.clone()));
        }
        for (_, tx) in std::mem::take(&mut self.reads) {
            let _ = tx.send(Err(err.clone()));
        }
        for (_, tx) in std::mem::take(&mut self.read_waits) {
            let _ = tx.send(Err(err.clone()));
        }
        for tx in std::mem::take(&mut self.reads_early) {
            let _ = tx.send(Err(err.clone()));
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
            voter: r.prs().conf().voters().contains(r.id),
            lost_data: self.lost_data,
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

/// Applies a configuration entry to Raft and the member list; the entry's context carries the
/// API address of an added node.
fn apply_conf_change(
    raw: &mut RawNode<RaftStore>,
    st: &mut State,
    e: &Entry,
) -> Result<(), ProposeError> {
    let cc: ConfChangeV2 = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
        ConfChangeV2::parse_from_bytes(&e.data)
    } else {
        raft::eraftpb::ConfChange::parse_from_bytes(&e.data).map(|v1| {
            let mut single = ConfChangeSingle::default();
            single.set_change_type(v1.get_change_type());
            single.node_id = v1.node_id;
            let mut v2 = ConfChangeV2::default();
            v2.mut_changes().push(single);
            v2.context = v1.context;
            v2
        })
    }
    .map_err(|err| ProposeError::Invalid(format!("undecodable configuration entry: {err}")))?;
    let cs = match raw.apply_conf_change(&cc) {
        Ok(cs) => cs,
        Err(err) => {
            warn!(error = %err, "configuration change not applied");
            return Err(ProposeError::Invalid(format!(
                "configuration change refused: {err}"
            )));
        }
    };
    if let Err(err) = raw.store().set_conf_state(&cs) {
        error!(error = %err, "cannot persist configuration");
    }
    // `propose_conf_change` puts its context on the entry.
    let ctx = if e.context.is_empty() {
        &cc.context
    } else {
        &e.context
    };
    let address = String::from_utf8_lossy(ctx).into_owned();
    for c in cc.get_changes() {
        match c.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if !address.is_empty() {
                    st.members.insert(c.node_id, address.clone());
                }
            }
            ConfChangeType::RemoveNode => {
                st.members.remove(&c.node_id);
            }
        }
    }
    info!(voters = ?cs.voters, learners = ?cs.learners, "configuration changed");
    Ok(())
}

/// What a failpoint configured with `return` does: die on the spot, like a power cut.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn crash(point: &str) -> ! {
    eprintln!("failpoint {point}: aborting");
    std::process::abort()
}

/// A follower whose leader's connection died need not wait a whole election timeout to notice
/// (500-1000 ms at the default tick): it moves its election clock to one tick short of the
/// timeout. After the next tick it no longer counts the leader's lease, so it grants pre-votes,
/// and it campaigns itself once its randomized timeout comes, 0-10 ticks later; the followers'
/// random timeouts still keep them from splitting the vote. A false alarm costs nothing: a
/// live leader's next heartbeat (every 2 ticks) resets the clock, and pre-vote plus
/// check-quorum keep a follower that campaigns early from disturbing the term. True if the
/// clock moved.
fn give_up_lease<S: raft::Storage>(raft: &mut raft::Raft<S>, from: u64) -> bool {
    let ready = raft.election_timeout().saturating_sub(1);
    if raft.state != StateRole::Follower
        || from == raft::INVALID_ID
        || raft.leader_id != from
        || raft.election_elapsed >= ready
    {
        return false;
    }
    raft.election_elapsed = ready;
    true
}

/// Whether a raft message carries a snapshot (sent by the streaming path).
pub(super) fn is_snapshot(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgSnapshot
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
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = NodeConfig::single(1, dir.path().into());
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
        // A linearizable read right after the election is answered, not dropped (raft-rs
        // drops ReadIndex before the leader commits an entry of its term).
        tokio::time::timeout(Duration::from_secs(5), h2.linearizable())
            .await
            .expect("read answered")
            .expect("read allowed on the leader");
        h2.wait_applied(applied).await.expect("replayed");
        assert_eq!(h2.read(|s| s.clone()), before);
        let snap = crate::store::stored_snapshot(engine.as_ref()).expect("read");
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
        let snap = crate::store::stored_snapshot(engine.as_ref())
            .expect("read")
            .expect("snapshot");
        assert_eq!(snap.get_metadata().index, applied);
        let (h3, _task3, _stop3) = leader(&cfg, &engine).await;
        h3.wait_applied(applied).await.expect("loaded");
        assert_eq!(h3.read(|s| s.clone()), after);
    }

    /// A pre-vote from node 3 (log as long as ours, next term); the reply node 1 sends, if any.
    fn pre_vote_reply(raw: &mut RawNode<raft::storage::MemStorage>) -> Option<bool> {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgRequestPreVote);
        m.from = 3;
        m.to = 1;
        m.term = raw.raft.term + 1;
        raw.step(m).expect("pre-vote stepped");
        std::mem::take(&mut raw.raft.msgs)
            .into_iter()
            .find(|r| r.get_msg_type() == MessageType::MsgRequestPreVoteResponse)
            .map(|r| !r.reject)
    }

    #[test]
    fn a_broken_leader_stream_ends_the_lease_early_and_only_for_the_leader() {
        let storage = raft::storage::MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
        let cfg = raft::Config {
            id: 1,
            election_tick: 10,
            heartbeat_tick: 2,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let mut raw = RawNode::new(&cfg, storage, &raft_logger()).expect("raft node");
        let mut hb = Message::default();
        hb.set_msg_type(MessageType::MsgHeartbeat);
        hb.from = 2;
        hb.to = 1;
        hb.term = 1;
        raw.step(hb).expect("heartbeat stepped");
        assert_eq!(
            (raw.raft.state, raw.raft.leader_id),
            (StateRole::Follower, 2)
        );
        raw.raft.msgs.clear();

        // Another follower's stream breaking says nothing about the leader.
        assert!(!give_up_lease(&mut raw.raft, 3));
        assert!(!give_up_lease(&mut raw.raft, raft::INVALID_ID));
        assert_eq!(raw.raft.election_elapsed, 0);
        assert_eq!(
            pre_vote_reply(&mut raw),
            None,
            "in the lease, pre-votes are ignored"
        );

        let randomized = raw.raft.randomized_election_timeout();
        assert!(give_up_lease(&mut raw.raft, 2));
        assert_eq!(raw.raft.election_elapsed, 9);
        assert!(!give_up_lease(&mut raw.raft, 2), "the clock moves once");
        raw.tick();
        assert_eq!(
            pre_vote_reply(&mut raw),
            Some(true),
            "one tick later the lease is over: a peer's pre-vote is granted"
        );
        // It campaigns when its own randomized timeout comes: `randomized - 9` ticks after the
        // stream broke instead of `randomized` (10..20) ticks after the last heartbeat.
        let mut ticks = 1;
        while raw.raft.state == StateRole::Follower && ticks < 40 {
            raw.tick();
            ticks += 1;
        }
        assert_eq!(raw.raft.state, StateRole::PreCandidate);
        assert_eq!(ticks, randomized - 9);

        // A leader ignores the signal.
        let mut leader = RawNode::new(
            &raft::Config {
                id: 1,
                ..cfg.clone()
            },
            raft::storage::MemStorage::new_with_conf_state((vec![1], vec![])),
            &raft_logger(),
        )
        .expect("raft node");
        leader.campaign().expect("campaign");
        assert_eq!(leader.raft.state, StateRole::Leader);
        assert!(!give_up_lease(&mut leader.raft, 1));
    }

    #[tokio::test]
    async fn many_concurrent_proposals_are_each_answered_once() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::default());
        let dir = tempfile::tempdir().expect("temp dir");
        let (h, _task, _stop) = leader(&NodeConfig::single(1, dir.path().into()), &engine).await;
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
