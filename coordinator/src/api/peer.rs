//! The peer service: Raft messages from other coordinators. Only coordinator certificates
//! may call it; it has its own message-size limit, separate from the public API's.

use cd_common::certs::Role;
use cd_proto::raft_v1::raft_peer_server::RaftPeer;
use cd_proto::raft_v1::{MessageBatch, SendAck, SnapshotChunk};
use protobuf::Message as _;
use raft::eraftpb::Message;
use tonic::{Request, Response, Status, Streaming};

use super::identity;
use crate::raft::RaftHandle;

#[derive(Clone)]
pub struct PeerApi {
    pub node: RaftHandle,
    /// Largest snapshot accepted, in bytes.
    pub max_snapshot: usize,
    /// Ends open peer streams: a graceful shutdown waits for every open stream, and a peer
    /// never ends its own.
    pub shutdown: tokio_util::sync::CancellationToken,
}

fn decode(bytes: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(bytes)
        .map_err(|e| Status::invalid_argument(format!("messages: not a raft message: {e}")))
}

impl PeerApi {
    fn deliver(&self, msgs: Vec<Message>) -> Result<Response<SendAck>, Status> {
        if self.node.step(msgs) {
            Ok(Response::new(SendAck {}))
        } else {
            Err(Status::resource_exhausted("raft node queue is full; retry"))
        }
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerApi {
    async fn send(&self, req: Request<MessageBatch>) -> Result<Response<SendAck>, Status> {
        identity::require_role(&req, Role::Coordinator)?;
        let batch = req.into_inner();
        let msgs = batch
            .messages
            .iter()
            .map(|b| decode(b))
            .collect::<Result<Vec<_>, _>>()?;
        self.deliver(msgs)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SendAck>, Status> {
        identity::require_role(&req, Role::Coordinator)?;
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("snapshot stream is empty"))?;
        let mut msg = decode(&first.message)?;
        let mut data = first.data;
        while let Some(chunk) = stream.message().await? {
            if data.len() + chunk.data.len() > self.max_snapshot {
                return Err(Status::resource_exhausted(format!(
                    "snapshot exceeds the limit of {} bytes",
                    self.max_snapshot
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        msg.mut_snapshot().data = data.into();
        self.deliver(vec![msg])
    }

    /// Delivers every batch of one long-lived stream from a peer. A full Raft queue drops the
    /// batch (Raft retransmits) instead of ending the stream.
    async fn stream(
        &self,
        req: Request<Streaming<MessageBatch>>,
    ) -> Result<Response<SendAck>, Status> {
        let caller = identity::require_role(&req, Role::Coordinator)?;
        tracing::info!(%caller, cert_serial = %identity::serial(&req), "peer stream opened");
        let mut stream = req.into_inner();
        // Who sends on this stream, from its batches: if the stream breaks, the node learns
        // that this peer's connection died (a clean end, as after a certificate reload, says
        // nothing about the peer).
        let mut from = raft::INVALID_ID;
        loop {
            let next = tokio::select! {
                m = stream.message() => match m {
                    Ok(m) => m,
                    Err(status) => {
                        if from != raft::INVALID_ID {
                            self.node.peer_stream_broke(from);
                        }
                        return Err(status);
                    }
                },
                _ = self.shutdown.cancelled() => {
                    return Err(Status::unavailable("coordinator is shutting down"));
                }
            };
            let Some(batch) = next else { break };
            from = batch.from;
            let msgs = batch
                .messages
                .iter()
                .map(|b| decode(b))
                .collect::<Result<Vec<_>, _>>()?;
            if !self.node.step(msgs) {
                tracing::debug!(from = batch.from, "raft node queue is full; batch dropped");
            }
        }
        Ok(Response::new(SendAck {}))
    }
}
