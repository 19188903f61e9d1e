//! Assembles one coordinator: storage, the Raft node, the scheduler and the gRPC API, started
//! on a bound listener and stopped by one shutdown token (STYLE.md, "Shape of the code").

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cd_common::tls::TlsPaths;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};

use crate::api::{self, ApiConfig, Limits, Sessions};
use crate::raft::transport::{Faults, PeerTransport};
use crate::raft::{NodeConfig, NodeError, RaftHandle, start_node};
use crate::scheduler::{self, SchedulerConfig};
use crate::store::{SledEngine, StoreError};

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub node_id: u64,
    /// Every initial member's id and API address (etcd-style static bootstrap). Empty runs a
    /// cluster of one.
    pub initial_cluster: BTreeMap<u64, String>,
    /// Join a running cluster (after `cdctl cluster add`) instead of bootstrapping one.
    pub join: bool,
    /// The address other nodes and clients reach this node at; defaults to the listener's.
    pub advertise: Option<String>,
    /// Accept `SetFaults` (tests only).
    pub fault_injection: bool,
    /// Raft tick; elections time out after 10-20 ticks, heartbeats every 2.
    pub tick: Duration,
    pub data_dir: PathBuf,
    pub tls: TlsPaths,
    pub lease: Duration,
    pub snapshot_every: u64,
    pub limits: Limits,
    /// Where to serve `POST /hooks/<pipeline>` (TLS, no client certificate); `None` = off.
    pub webhook_listen: Option<std::net::SocketAddr>,
    /// The cluster's secret key (`--secret-key-file`); `None` disables secrets on this node.
    pub secret_key: Option<std::sync::Arc<crate::secret_key::SecretKey>>,
}

impl CoordinatorConfig {
    pub fn new(data_dir: PathBuf, tls: TlsPaths) -> Self {
        CoordinatorConfig {
            node_id: 1,
            initial_cluster: BTreeMap::new(),
            join: false,
            advertise: None,
            fault_injection: false,
            tick: Duration::from_millis(50),
            data_dir,
            tls,
            lease: Duration::from_secs(10),
            snapshot_every: 10_000,
            limits: Limits::default(),
            webhook_listen: None,
            secret_key: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("data dir: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Serve(#[from] api::ServeError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("raft task panicked: {0}")]
    Join(String),
}

/// A started coordinator; `wait` returns when it has stopped.
pub struct Coordinator {
    pub node: RaftHandle,
    task: tokio::task::JoinHandle<Result<(), CoordinatorError>>,
}

impl Coordinator {
    /// Starts every part; the API serves on `listener` until `shutdown` fires.
    pub fn start(
        cfg: CoordinatorConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Coordinator, CoordinatorError> {
        // Unreadable certificates must stop the node before it listens or takes part in
        // elections.
        cd_common::tls::server_tls(&cfg.tls).map_err(api::ServeError::from)?;
        let engine = Arc::new(SledEngine::open(&cfg.data_dir.join("sled"))?);
        let advertise = match &cfg.advertise {
            Some(a) => a.clone(),
            None => match cfg.initial_cluster.get(&cfg.node_id) {
                Some(a) => a.clone(),
                None => format!("https://{}", listener.local_addr()?),
            },
        };
        let mut node_cfg = NodeConfig::single(cfg.node_id, cfg.data_dir.join("raft-log"));
        node_cfg.snapshot_every = cfg.snapshot_every;
        node_cfg.tick = cfg.tick;
        let advertise_for_rejoin = advertise.clone();
        if cfg.initial_cluster.is_empty() {
            node_cfg.members = BTreeMap::from([(cfg.node_id, advertise)]);
        } else {
            node_cfg.members = cfg.initial_cluster.clone();
            node_cfg.voters = cfg.initial_cluster.keys().copied().collect();
        }
        if cfg.join {
            node_cfg.voters.clear();
        }
        let faults = cfg.fault_injection.then(Faults::default);
        let cert_generation = api::tls_reload::CertGeneration::default();
        let transport = PeerTransport::new(
            cfg.node_id,
            cfg.tls.clone(),
            cfg.limits.max_peer_message,
            faults.clone().unwrap_or_default(),
            cert_generation.clone(),
        );
        let node_stop = CancellationToken::new();
        let (node, node_task) = start_node(node_cfg, engine, transport, node_stop.clone())?;
        tokio::spawn(
            rejoin(
                node.clone(),
                cfg.node_id,
                advertise_for_rejoin,
                cfg.tls.clone(),
                shutdown.clone(),
            )
            .instrument(info_span!("rejoin")),
        );
        let sessions = Sessions::default();
        let sched = tokio::spawn(
            scheduler::run(
                node.clone(),
                sessions.clone(),
                SchedulerConfig {
                    lease: cfg.lease,
                    tick: Duration::from_millis(250),
                },
                shutdown.clone(),
            )
            .instrument(info_span!("scheduler")),
        );
        let trig = tokio::spawn(
            crate::triggers::run(
                node.clone(),
                crate::triggers::TriggerConfig {
                    cache_dir: cfg.data_dir.join("triggers"),
                    tick: Duration::from_millis(100),
                },
                shutdown.clone(),
            )
            .instrument(info_span!("triggers")),
        );
        let webhook_stats = crate::triggers::webhook::WebhookStats::default();
        if let Some(addr) = cfg.webhook_listen {
            let tls = cd_common::tls::server_tls_without_client_auth(&cfg.tls)
                .map_err(api::ServeError::from)?;
            let std_listener = std::net::TcpListener::bind(addr)?;
            std_listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(std_listener)?;
            info!(addr = %listener.local_addr()?, "webhooks served on https://<addr>/hooks/<pipeline>");
            tokio::spawn(
                crate::triggers::webhook::serve(
                    listener,
                    tls,
                    node.clone(),
                    webhook_stats.clone(),
                    shutdown.clone(),
                )
                .instrument(info_span!("webhook")),
            );
        }
        let api_cfg = ApiConfig {
            lease: cfg.lease,
            limits: cfg.limits.clone(),
            faults,
            webhook_stats,
            secret_key: cfg.secret_key.clone(),
            cert_generation,
        };
        let handle = node.clone();
        let task = tokio::spawn(async move {
            let served = api::serve(
                listener,
                &cfg.tls,
                handle,
                sessions,
                api_cfg,
                shutdown.clone(),
            )
            .await;
            // The API is down (or failed to start): stop the rest, the node last so it can
            // write its final snapshot.
            shutdown.cancel();
            let _ = sched.await;
            let _ = trig.await;
            node_stop.cancel();
            let node_result = node_task
                .await
                .map_err(|e| CoordinatorError::Join(e.to_string()))?;
            served?;
            node_result?;
            info!("coordinator stopped");
            Ok(())
        });
        Ok(Coordinator { node, task })
    }

    pub async fn wait(self) -> Result<(), CoordinatorError> {
        self.task
            .await
            .map_err(|e| CoordinatorError::Join(e.to_string()))?
    }
}

/// When the node finds it lost data the leader thinks it has (a wiped data dir), asks the
/// leader to re-add it, so it is replicated to from scratch (by snapshot).
async fn rejoin(
    node: RaftHandle,
    me: u64,
    advertise: String,
    tls: TlsPaths,
    shutdown: CancellationToken,
) {
    let mut status = node.status();
    loop {
        let leader = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = status.wait_for(|s| s.lost_data && s.leader_id != 0 && s.leader_id != me) => match s {
                Ok(s) => s.leader_id,
                Err(_) => return,
            },
        };
        let Some(addr) = node.member_address(leader) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        match ask_rejoin(&addr, &tls, me, &advertise).await {
            Ok(()) => {
                info!(%addr, "re-added by the leader; catching up");
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    status.wait_for(|s| !s.lost_data),
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "rejoin request failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn ask_rejoin(addr: &str, tls: &TlsPaths, me: u64, advertise: &str) -> Result<(), String> {
    use cd_proto::v1::cluster_service_client::ClusterServiceClient;
    let channel = crate::raft::transport::peer_channel(tls, addr)?;
    ClusterServiceClient::new(channel)
        .add_node(cd_proto::v1::AddNodeRequest {
            id: me,
            address: advertise.to_string(),
            rejoin: true,
        })
        .await
        .map(|_| ())
        .map_err(|s| s.message().to_string())
}
