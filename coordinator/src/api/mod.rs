//! gRPC services: the operator API, the agent API, cluster administration, the peer (Raft)
//! service, health and reflection, all on one mutual-TLS listener. Handlers turn requests into commands and read applied state; nothing
//! below this folder sees a tonic type.

mod agent;
pub mod authz;
mod cluster;
pub mod conn_info;
mod control;
pub mod convert;
mod feedback;
mod identity;
mod masking;
mod outbox;
mod peer;
mod rate;
mod revoke;
mod secrets;
mod sessions;
pub mod status;
pub mod tls_reload;

use std::time::Duration;

use cd_common::tls::TlsPaths;
use cd_proto::raft_v1::raft_peer_server::RaftPeerServer;
use cd_proto::v1::agent_service_server::AgentServiceServer;
use cd_proto::v1::cluster_service_server::ClusterServiceServer;
use cd_proto::v1::control_service_server::ControlServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use sessions::Sessions;

use crate::raft::RaftHandle;
use crate::raft::transport::Faults;

/// Bounds on what one request may carry; each error names the limit it hit.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_spec: usize,
    pub max_log_chunk: usize,
    pub max_chunks_per_push: usize,
    pub max_metrics: usize,
    pub max_params: usize,
    /// Largest decoded gRPC message of the public API.
    pub max_message: usize,
    /// Largest decoded message of the peer (Raft) service.
    pub max_peer_message: usize,
    /// Largest snapshot a node accepts from the leader.
    pub max_snapshot: usize,
    /// Writes per second per identity (0: unlimited), with bursts up to `write_burst`.
    pub write_rate: f64,
    pub write_burst: u32,
    /// Largest request metadata (header names and values), in bytes.
    pub max_metadata: usize,
    /// Messages queued for one server stream (Attach, WatchRun, FollowLogs) at most.
    pub max_stream_inflight: usize,
    /// How long a server stream's queue may stay full before the stream is ended.
    pub stream_stall: Duration,
}

impl Limits {
    pub(crate) fn stream_bounds(&self) -> outbox::StreamBounds {
        outbox::StreamBounds {
            inflight: self.max_stream_inflight,
            stall: self.stream_stall,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_spec: cd_common::spec::MAX_SPEC_BYTES,
            max_log_chunk: 1024 * 1024,
            max_chunks_per_push: 1024,
            max_metrics: 1000,
            max_params: 64 * 1024,
            max_message: 16 * 1024 * 1024,
            max_peer_message: 64 * 1024 * 1024,
            max_snapshot: 4 * 1024 * 1024 * 1024,
            write_rate: 0.0,
            write_burst: 200,
            max_metadata: 8 * 1024,
            max_stream_inflight: 256,
            stream_stall: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// How long an assignment lives without a heartbeat.
    pub lease: Duration,
    pub limits: Limits,
    /// Set when the node runs with `--enable-fault-injection` (tests only).
    pub faults: Option<Faults>,
    /// Webhook deliveries this node refused, shown with pipelines.
    pub webhook_stats: crate::triggers::webhook::WebhookStats,
    /// Seals and opens secrets; `None`: secrets are disabled on this node.
    pub secret_key: Option<std::sync::Arc<crate::secret_key::SecretKey>>,
    /// Bumped on each reload of this node's certificate (read by the peer transport).
    pub cert_generation: tls_reload::CertGeneration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] cd_common::tls::TlsError),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("CA certificate: {0}")]
    Ca(#[from] cd_common::certs::CertError),
}

/// Serves every service on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    tls: &TlsPaths,
    node: RaftHandle,
    sessions: Sessions,
    cfg: ApiConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let policy = authz::Policy {
        trust_domain: cd_common::certs::ca_trust_domain_file(&tls.ca)?,
        revoked: {
            let node = node.clone();
            std::sync::Arc::new(move |id| node.read(|st| st.is_revoked(&id.to_string())))
        },
        writes: rate::WriteLimiter::new(cfg.limits.write_rate, cfg.limits.write_burst)
            .map(std::sync::Arc::new),
        max_metadata: cfg.limits.max_metadata,
    };
    let cert = tls_reload::ReloadingCert::load(tls, cfg.cert_generation.clone())?;
    let tls_config = tls_reload::server_config(tls, cert.clone())?;
    tokio::spawn(cert.watch(shutdown.clone()));
    let max = cfg.limits.max_message;
    let cfg_max_metadata = cfg.limits.max_metadata;
    let control = control::ControlApi {
        node: node.clone(),
        sessions: sessions.clone(),
        cfg: cfg.clone(),
        shutdown: shutdown.clone(),
    };
    let peers = peer::PeerApi {
        node: node.clone(),
        max_snapshot: cfg.limits.max_snapshot,
        shutdown: shutdown.clone(),
    };
    let cluster = cluster::ClusterApi {
        node: node.clone(),
        faults: cfg.faults.clone(),
    };
    let peer_max = cfg.limits.max_peer_message;
    let agents = agent::AgentApi {
        node,
        sessions,
        cfg,
        shutdown: shutdown.clone(),
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ControlServiceServer<control::ControlApi>>()
        .await;
    health_reporter
        .set_serving::<AgentServiceServer<agent::AgentApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cd_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cd_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let incoming = tls_reload::incoming(listener, tls_config, shutdown.clone());
    // HTTP/2 drops a header list past this without a gRPC status; keep it well above the
    // limit the authorization layer checks and names.
    let header_backstop = u32::try_from(cfg_max_metadata.saturating_mul(4)).unwrap_or(u32::MAX);
    tonic::transport::Server::builder()
        .http2_max_header_list_size(header_backstop.max(64 * 1024))
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .layer(authz::AuthzLayer::new(policy))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(ControlServiceServer::new(control).max_decoding_message_size(max))
        .add_service(AgentServiceServer::new(agents).max_decoding_message_size(max))
        .add_service(ClusterServiceServer::new(cluster).max_decoding_message_size(max))
        .add_service(
            RaftPeerServer::new(peers)
                .max_decoding_message_size(peer_max)
                .max_encoding_message_size(peer_max),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}
