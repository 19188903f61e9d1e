//! Peer transport over gRPC: one task per peer, fed by a bounded queue; each task sends
//! whatever has queued up as one batch down a long-lived stream (`peer_link`), and streams
//! snapshots in chunks. A full queue or a failed stream reports the peer unreachable; Raft
//! retransmits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cd_common::tls::TlsPaths;
use cd_proto::raft_v1::SnapshotChunk;
use cd_proto::raft_v1::raft_peer_client::RaftPeerClient;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument, debug, info_span, warn};

use super::peer_link::{Link, run_peer};
use super::{Feedback, Transport};

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Longest a unary peer call may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest sending one snapshot may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
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

/// Counts successful reloads of this node's certificate (bumped by the API's certificate
/// watcher), so each peer link knows to open a new connection presenting the new pair.
#[derive(Debug, Clone, Default)]
pub struct CertGeneration(Arc<AtomicU64>);

impl CertGeneration {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
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
    certs: CertGeneration,
    feedback: Option<Feedback>,
    peers: HashMap<u64, Peer>,
}

impl PeerTransport {
    pub fn new(
        me: u64,
        tls: TlsPaths,
        max_message: usize,
        faults: Faults,
        certs: CertGeneration,
    ) -> Self {
        PeerTransport {
            me,
            tls,
            max_message,
            faults,
            certs,
            feedback: None,
            peers: HashMap::new(),
        }
    }

    fn spawn_peer(&self, to: u64, addr: &str) -> Option<Peer> {
        let feedback = self.feedback.clone()?;
        let link = Link {
            me: self.me,
            to,
            addr: addr.to_string(),
            tls: self.tls.clone(),
            max_message: self.max_message,
            feedback,
            faults: self.faults.clone(),
            certs: self.certs.clone(),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let span = info_span!("peer", to);
        tokio::spawn(run_peer(link, rx).instrument(span));
        Some(Peer {
            addr: addr.to_string(),
            tx,
        })
    }
}

/// A lazily connected mTLS channel to another coordinator at `addr` (`https://host:port`),
/// with a 5 s limit on every call.
pub(crate) fn peer_channel(tls: &TlsPaths, addr: &str) -> Result<Channel, String> {
    Ok(peer_endpoint(tls, addr)?
        .timeout(CALL_TIMEOUT)
        .connect_lazy())
}

/// As [`peer_channel`] without the per-call limit, for a stream that stays open for as long
/// as the peer is up; unary calls on it set their own timeout.
pub(crate) fn peer_stream_channel(tls: &TlsPaths, addr: &str) -> Result<Channel, String> {
    Ok(peer_endpoint(tls, addr)?.connect_lazy())
}

fn peer_endpoint(tls: &TlsPaths, addr: &str) -> Result<Endpoint, String> {
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
        .http2_keep_alive_interval(Duration::from_secs(5)))
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

pub(super) async fn send_snapshot(
    me: u64,
    client: &mut RaftPeerClient<Channel>,
    mut m: Message,
) -> bool {
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
    let mut req = tonic::Request::new(tokio_stream::iter(chunks));
    req.set_timeout(SNAPSHOT_TIMEOUT);
    match client.install_snapshot(req).await {
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
