//! One peer's sending task: batches of Raft messages go down one long-lived client stream
//! (`RaftPeer/Stream`) instead of one unary call each, so a batch costs a DATA frame rather
//! than a new HTTP/2 stream with HEADERS and trailers. A stream that worked and has ended (the
//! peer restarted) is reopened by the next batch; one that fails straight after opening means
//! the peer is down: it is reported unreachable and the link waits [`BACKOFF`] (dropping what
//! queues meanwhile: Raft retransmits) before the next try. A peer that answers UNIMPLEMENTED (an older node in a rolling
//! upgrade) gets unary `Send` calls for [`LEGACY_RETRY`] before the stream is tried again.
//! When this node's certificate is reloaded, the link builds a new channel, so peers see the
//! new certificate without a restart.

use std::time::{Duration, Instant};

use cd_common::tls::TlsPaths;
use cd_proto::raft_v1::MessageBatch;
use cd_proto::raft_v1::raft_peer_client::RaftPeerClient;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use tracing::{Instrument, debug, info, warn};

use super::Feedback;
use super::transport::{CALL_TIMEOUT, CertGeneration, Faults, peer_stream_channel, send_snapshot};

/// Messages sent in one batch at most.
const BATCH: usize = 512;
/// Batches buffered in an open stream before the link waits for HTTP/2 flow control.
const STREAM_BUFFER: usize = 64;
/// Pause after a failed stream before the next one is opened.
const BACKOFF: Duration = Duration::from_millis(100);
/// How long a peer without the stream RPC is sent unary calls before the stream is retried.
const LEGACY_RETRY: Duration = Duration::from_secs(30);

/// Everything a peer's task needs.
pub(super) struct Link {
    pub me: u64,
    pub to: u64,
    pub addr: String,
    pub tls: TlsPaths,
    pub max_message: usize,
    pub feedback: Feedback,
    pub faults: Faults,
    pub certs: CertGeneration,
}

/// How an open stream ended, as its call task reports it.
enum Ended {
    /// The peer does not know `Stream` (older version).
    Unimplemented,
    /// Any other end: error, peer gone, or the stream closed by us.
    Other,
}

/// An open stream: batches go into `tx`; `ended` fires when the call is over.
struct OpenStream {
    tx: mpsc::Sender<MessageBatch>,
    ended: oneshot::Receiver<Ended>,
    opened: Instant,
}

/// A channel built with the certificate of one reload generation.
struct Conn {
    generation: u64,
    client: RaftPeerClient<Channel>,
    stream: Option<OpenStream>,
}

/// Whether the link must build a new channel: none yet, or the certificate was reloaded since
/// the current one was built.
fn needs_new_channel(current: Option<u64>, generation: u64) -> bool {
    current != Some(generation)
}

struct State {
    conn: Option<Conn>,
    /// No stream is opened before this instant (after a failure).
    retry_at: Option<Instant>,
    /// Unary calls are used until this instant (the peer answered UNIMPLEMENTED).
    legacy_until: Option<Instant>,
}

impl Link {
    fn client(&self, generation: u64) -> Option<Conn> {
        match peer_stream_channel(&self.tls, &self.addr) {
            Ok(channel) => Some(Conn {
                generation,
                client: RaftPeerClient::new(channel)
                    .max_encoding_message_size(self.max_message)
                    .max_decoding_message_size(self.max_message),
                stream: None,
            }),
            Err(e) => {
                warn!(peer = self.to, addr = %self.addr, error = %e, "cannot set up a channel to peer");
                None
            }
        }
    }

    /// The connection to use, rebuilt when the certificate was reloaded. A failed rebuild
    /// keeps the old connection.
    fn conn<'a>(&self, conn: &'a mut Option<Conn>) -> Option<&'a mut Conn> {
        let generation = self.certs.get();
        if needs_new_channel(conn.as_ref().map(|c| c.generation), generation)
            && let Some(fresh) = self.client(generation)
        {
            if conn.is_some() {
                info!(
                    peer = self.to,
                    "certificate reloaded; new connection to peer"
                );
            }
            *conn = Some(fresh);
        }
        conn.as_mut()
    }

    fn open_stream(&self, client: &RaftPeerClient<Channel>) -> OpenStream {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (done, ended) = oneshot::channel();
        let mut client = client.clone();
        let feedback = self.feedback.clone();
        let to = self.to;
        tokio::spawn(
            async move {
                let end = match client.stream(ReceiverStream::new(rx)).await {
                    Ok(_) => Ended::Other,
                    Err(s) if s.code() == Code::Unimplemented => Ended::Unimplemented,
                    Err(s) => {
                        debug!(error = %s, "peer stream ended");
                        feedback.unreachable(to);
                        Ended::Other
                    }
                };
                let _ = done.send(end);
            }
            .in_current_span(),
        );
        OpenStream {
            tx,
            ended,
            opened: Instant::now(),
        }
    }

    /// Sends one batch: down the stream, or as a unary call to an older peer.
    async fn send_batch(&self, st: &mut State, batch: MessageBatch) {
        let now = Instant::now();
        let legacy = st.legacy_until.is_some_and(|t| now < t);
        let Some(conn) = self.conn(&mut st.conn) else {
            self.feedback.unreachable(self.to);
            return;
        };
        if legacy {
            if let Err(e) = conn.client.send(unary(batch)).await {
                debug!(error = %e, "peer unreachable");
                self.feedback.unreachable(self.to);
            }
            return;
        }
        // Notice a stream that has ended since the last batch.
        if let Some(open) = &mut conn.stream {
            match open.ended.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {}
                Ok(Ended::Unimplemented) => {
                    info!(
                        peer = self.to,
                        "peer has no Raft stream (older version); using unary calls"
                    );
                    conn.stream = None;
                    st.legacy_until = Some(now + LEGACY_RETRY);
                    if let Err(e) = conn.client.send(unary(batch)).await {
                        debug!(error = %e, "peer unreachable");
                        self.feedback.unreachable(self.to);
                    }
                    return;
                }
                Ok(Ended::Other) | Err(oneshot::error::TryRecvError::Closed) => {
                    // A stream that worked for a while (the peer restarted since: a follower
                    // sends nothing to another follower until it campaigns) is reopened at
                    // once, so a vote request is not lost; one that failed straight after
                    // opening means the peer is down: back off.
                    let lived = now.saturating_duration_since(open.opened);
                    conn.stream = None;
                    if lived < BACKOFF {
                        st.retry_at = Some(now + BACKOFF);
                        self.feedback.unreachable(self.to);
                        return;
                    }
                }
            }
        }
        if conn.stream.is_none() {
            if st.retry_at.is_some_and(|t| now < t) {
                self.feedback.unreachable(self.to);
                return;
            }
            conn.stream = Some(self.open_stream(&conn.client));
        }
        let Some(open) = &conn.stream else { return };
        if open.tx.send(batch).await.is_err() {
            // The call ended while we waited; the next batch notices how.
            self.feedback.unreachable(self.to);
        }
    }
}

/// A unary `Send` request with the usual peer-call limit.
fn unary(batch: MessageBatch) -> tonic::Request<MessageBatch> {
    let mut req = tonic::Request::new(batch);
    req.set_timeout(CALL_TIMEOUT);
    req
}

/// The peer's task: drains its queue in batches until the transport drops the queue.
pub(super) async fn run_peer(link: Link, mut rx: mpsc::Receiver<Message>) {
    let mut st = State {
        conn: None,
        retry_at: None,
        legacy_until: None,
    };
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        if link.faults.drops(link.to) {
            continue;
        }
        let (snaps, msgs): (Vec<_>, Vec<_>) = batch.into_iter().partition(super::node::is_snapshot);
        if !msgs.is_empty() {
            let messages: Vec<Vec<u8>> = msgs
                .iter()
                .filter_map(|m| m.write_to_bytes().ok())
                .collect();
            let batch = MessageBatch {
                from: link.me,
                messages,
            };
            link.send_batch(&mut st, batch).await;
        }
        for s in snaps {
            let ok = match link.conn(&mut st.conn) {
                Some(conn) => send_snapshot(link.me, &mut conn.client, s).await,
                None => false,
            };
            link.feedback.snapshot_done(link.to, ok);
        }
    }
}

#[cfg(test)]
#[path = "peer_link_tests.rs"]
mod tests;
