//! Peer transport over gRPC: one cached channel and one task per peer, fed by a bounded
//! queue; each task sends whatever has queued up as one batch, and streams snapshots in
//! chunks. A full queue or a failed call reports the peer unreachable; Raft retransmits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cd_common::tls::TlsPaths;
use cd_proto::raft_v1::raft_peer_client::RaftPeerClient;
use cd_proto::raft_v1::{MessageBatch, SnapshotChunk};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument, debug, info_span, warn};

use super::{Feedback, Transport};

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Messages sent in one call at most.
const BATCH: usize = 512;
/// Snapshot data per streamed chunk.
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// Links to drop messages on, switched at run time by tests (`--enable-fault-injection`).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    drop_to: Arc<RwLock<HashSet<u64>>>,
}

impl Faults {
    pub fn set_drop_to(&self, ids: impl IntoIterator<Item = u64>) {
        *self.drop_to.write().unwrap_or_else(|e| e.into_inner()) = ids.into_iter().collect();
    }

    pub fn drops(&self, to: u64) -> bool {
        self.drop_to
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&to)
    }
}

struct Peer {
    addr: String,
    tx: mpsc::Sender<Message>,
}

pub struct PeerTransport {
    me: u64,
    tls: TlsPaths,
    max_message: usize,
    faults: Faults,
    feedback: Option<Feedback>,
    peers: HashMap<u64, Peer>,
}

impl PeerTransport {
    pub fn new(me: u64, tls: TlsPaths, max_message: usize, faults: Faults) -> Self {
        PeerTransport {
            me,
            tls,
            max_message,
            faults,
            feedback: None,
            peers: HashMap::new(),
        }
    }

    fn spawn_peer(&self, to: u64, addr: &str) -> Option<Peer> {
        let feedback = self.feedback.clone()?;
        let channel = match peer_channel(&self.tls, addr) {
            Ok(c) => c,
            Err(e) => {
                warn!(peer = to, %addr, error = %e, "cannot set up a channel to peer");
                return None;
            }
        };
        let client = RaftPeerClient::new(channel)
            .max_encoding_message_size(self.max_message)
            .max_decoding_message_size(self.max_message);
        let (tx, rx) = mpsc::channel(QUEUE);
        let span = info_span!("peer", to);
        tokio::spawn(
            run_peer(self.me, to, client, rx, feedback, self.faults.clone()).instrument(span),
        );
        Some(Peer {
            addr: addr.to_string(),
            tx,
        })
    }
}

/// A lazily connected mTLS channel to another coordinator at `addr` (`https://host:port`).
pub(crate) fn peer_channel(tls: &TlsPaths, addr: &str) -> Result<Channel, String> {
    let host = addr
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let cfg = cd_common::tls::client_tls(tls, &host).map_err(|e| e.to_string())?;
    Ok(Endpoint::from_shared(addr.to_string())
        .map_err(|e| e.to_string())?
        .tls_config(cfg)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .connect_lazy())
}

impl Transport for PeerTransport {
    fn start(&mut self, feedback: Feedback) {
        self.feedback = Some(feedback);
    }

    fn set_members(&mut self, peers: &BTreeMap<u64, String>) {
        self.peers
            .retain(|id, p| peers.get(id).is_some_and(|a| *a == p.addr));
        for (id, addr) in peers {
            if !self.peers.contains_key(id)
                && let Some(p) = self.spawn_peer(*id, addr)
            {
                self.peers.insert(*id, p);
            }
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            match self.peers.get(&to) {
                Some(p) => {
                    if p.tx.try_send(m).is_err()
                        && let Some(f) = &self.feedback
                    {
                        f.unreachable(to);
                    }
                }
                None => debug!(to, "no address for peer; message dropped"),
            }
        }
    }
}

async fn run_peer(
    me: u64,
    to: u64,
    mut client: RaftPeerClient<Channel>,
    mut rx: mpsc::Receiver<Message>,
    feedback: Feedback,
    faults: Faults,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        if faults.drops(to) {
            continue;
        }
        let (snaps, msgs): (Vec<_>, Vec<_>) = batch.into_iter().partition(super::node::is_snapshot);
        if !msgs.is_empty() {
            let messages: Vec<Vec<u8>> = msgs
                .iter()
                .filter_map(|m| m.write_to_bytes().ok())
                .collect();
            if let Err(e) = client.send(MessageBatch { from: me, messages }).await {
                debug!(error = %e, "peer unreachable");
                feedback.unreachable(to);
            }
        }
        for s in snaps {
            let ok = send_snapshot(me, &mut client, s).await;
            feedback.snapshot_done(to, ok);
        }
    }
}

async fn send_snapshot(me: u64, client: &mut RaftPeerClient<Channel>, mut m: Message) -> bool {
    let data = std::mem::take(&mut m.mut_snapshot().data).to_vec();
    let Ok(head) = m.write_to_bytes() else {
        return false;
    };
    let mut chunks = vec![SnapshotChunk {
        from: me,
        message: head,
        data: Vec::new(),
    }];
    chunks.extend(data.chunks(SNAPSHOT_CHUNK).map(|c| SnapshotChunk {
        from: me,
        message: Vec::new(),
        data: c.to_vec(),
    }));
    let size = data.len();
    match client.install_snapshot(tokio_stream::iter(chunks)).await {
        Ok(_) => {
            tracing::info!(bytes = size, "snapshot sent");
            true
        }
        Err(e) => {
            warn!(error = %e, "snapshot not delivered");
            false
        }
    }
}
