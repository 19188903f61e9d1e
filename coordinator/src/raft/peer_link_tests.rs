//! The link against real peers over mutual TLS on 127.0.0.1: a current peer gets batches on
//! its stream; an older peer without `Stream` gets them as unary `Send` calls.

use std::time::Duration;

use cd_common::certs::{self, Role};
use cd_proto::raft_v1::raft_peer_server::{RaftPeer, RaftPeerServer};
use cd_proto::raft_v1::{SendAck, SnapshotChunk};
use raft::eraftpb::MessageType;
use tonic::{Request, Response, Status, Streaming};

use super::*;

#[test]
fn a_reloaded_certificate_means_a_new_channel() {
    let certs = CertGeneration::default();
    assert!(needs_new_channel(None, certs.get()), "no channel yet");
    let built = certs.get();
    assert!(
        !needs_new_channel(Some(built), certs.get()),
        "nothing changed"
    );
    certs.bump();
    assert!(
        needs_new_channel(Some(built), certs.get()),
        "the certificate was reloaded after the channel was built"
    );
    assert!(!needs_new_channel(Some(certs.get()), certs.get()));
}

/// A peer that reports each batch it gets and how (`"stream"` or `"send"`); with
/// `has_stream == false` it behaves like a node from before the stream RPC.
#[derive(Clone)]
struct Peer {
    has_stream: bool,
    /// Ends each stream after its first batch, as a restarted peer would.
    one_batch_per_stream: bool,
    got: mpsc::UnboundedSender<(&'static str, MessageBatch)>,
}

#[tonic::async_trait]
impl RaftPeer for Peer {
    async fn send(&self, req: Request<MessageBatch>) -> Result<Response<SendAck>, Status> {
        let _ = self.got.send(("send", req.into_inner()));
        Ok(Response::new(SendAck {}))
    }

    async fn install_snapshot(
        &self,
        _req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SendAck>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn stream(
        &self,
        req: Request<Streaming<MessageBatch>>,
    ) -> Result<Response<SendAck>, Status> {
        if !self.has_stream {
            return Err(Status::unimplemented("unknown method Stream"));
        }
        let mut stream = req.into_inner();
        while let Some(b) = stream.message().await? {
            let _ = self.got.send(("stream", b));
            if self.one_batch_per_stream {
                break;
            }
        }
        Ok(Response::new(SendAck {}))
    }
}

/// Starts a peer on 127.0.0.1 with node-2's certificate and a link to it from node 1; returns
/// the link's queue and what the peer receives.
async fn setup(
    has_stream: bool,
    one_batch_per_stream: bool,
) -> (
    tempfile::TempDir,
    mpsc::Sender<Message>,
    mpsc::UnboundedReceiver<(&'static str, MessageBatch)>,
) {
    cd_common::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    certs::init_ca(dir.path(), certs::DEFAULT_TRUST_DOMAIN).expect("ca");
    for name in ["node-1", "node-2"] {
        certs::issue(dir.path(), dir.path(), Role::Coordinator, name, &[], 1).expect("issue");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = format!("https://{}", listener.local_addr().expect("addr"));
    let server_tls =
        cd_common::tls::server_tls(&TlsPaths::in_dir(dir.path(), "node-2")).expect("server tls");
    let (got_tx, got) = mpsc::unbounded_channel();
    let peer = Peer {
        has_stream,
        one_batch_per_stream,
        got: got_tx,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(server_tls)
            .expect("tls config")
            .add_service(RaftPeerServer::new(peer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (node_tx, _node_rx) = mpsc::channel(1024);
    let link = Link {
        me: 1,
        to: 2,
        addr,
        tls: TlsPaths::in_dir(dir.path(), "node-1"),
        max_message: 1 << 20,
        feedback: Feedback { tx: node_tx },
        faults: Faults::default(),
        certs: CertGeneration::default(),
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run_peer(link, rx));
    (dir, tx, got)
}

fn heartbeat() -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.from = 1;
    m.to = 2;
    m
}

/// Sends heartbeats until the peer has a batch from node 1 (the first ones may be lost while
/// the link learns what the peer supports; Raft retransmits), and returns how it came.
async fn first_delivery(
    tx: &mpsc::Sender<Message>,
    got: &mut mpsc::UnboundedReceiver<(&'static str, MessageBatch)>,
) -> &'static str {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        tx.send(heartbeat()).await.expect("link runs");
        match tokio::time::timeout(Duration::from_millis(200), got.recv()).await {
            Ok(Some((how, batch))) => {
                assert_eq!(batch.from, 1);
                let m = Message::parse_from_bytes(&batch.messages[0]).expect("a raft message");
                assert_eq!(m.get_msg_type(), MessageType::MsgHeartbeat);
                return how;
            }
            Ok(None) => panic!("the peer stopped"),
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "nothing delivered in 20 s"
            ),
        }
    }
}

#[tokio::test]
async fn a_current_peer_gets_batches_on_one_stream() {
    let (_dir, tx, mut got) = setup(true, false).await;
    assert_eq!(first_delivery(&tx, &mut got).await, "stream");
    // And so do later ones.
    assert_eq!(first_delivery(&tx, &mut got).await, "stream");
}

#[tokio::test]
async fn an_older_peer_without_the_stream_gets_unary_calls() {
    let (_dir, tx, mut got) = setup(false, false).await;
    assert_eq!(first_delivery(&tx, &mut got).await, "send");
    assert_eq!(first_delivery(&tx, &mut got).await, "send");
}

/// A follower sends nothing to another follower until it campaigns, so its stream to a peer
/// that restarted meanwhile has ended unnoticed; the vote request that finds it must be
/// delivered (reopening the stream), not dropped, or the election waits another timeout.
#[tokio::test]
async fn a_batch_that_finds_an_ended_stream_reopens_it_and_is_delivered() {
    let (_dir, tx, mut got) = setup(true, true).await;
    assert_eq!(first_delivery(&tx, &mut got).await, "stream");
    // The stream has ended; once it has lived past the backoff, it counts as a stream that
    // worked rather than a peer that is down.
    tokio::time::sleep(BACKOFF * 3).await;
    tx.send(heartbeat()).await.expect("link runs");
    let (how, batch) = tokio::time::timeout(Duration::from_secs(10), got.recv())
        .await
        .expect("the one batch is delivered, not dropped")
        .expect("the peer runs");
    assert_eq!((how, batch.from), ("stream", 1));
}
