//! Cluster administration: status, membership changes, leadership transfer, state digests,
//! and (only when enabled) fault injection for tests.

use std::time::Duration;

use cd_proto::v1 as pb;
use cd_proto::v1::cluster_service_server::ClusterService;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::identity;
use super::status::{LEADER_METADATA, from_propose, invalid};
use crate::raft::transport::Faults;
use crate::raft::{ProposeError, RaftHandle, Role};

/// How long a leadership transfer may take before the call gives up.
const TRANSFER_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct ClusterApi {
    pub node: RaftHandle,
    /// `Some` only when the node runs with `--enable-fault-injection`.
    pub faults: Option<Faults>,
}

fn change(id: u64, ty: ConfChangeType) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ty);
    single.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc
}

impl ClusterApi {
    async fn status(&self) -> pb::ClusterStatus {
        let me = self.node.status().borrow().clone();
        let members = self.node.read(|st| st.members.clone());
        let progress = self.node.progress().await;
        let mut ids: Vec<u64> = members.keys().copied().collect();
        ids.extend(progress.iter().map(|p| p.id));
        ids.push(me.id);
        ids.sort_unstable();
        ids.dedup();
        let nodes = ids
            .into_iter()
            .map(|id| {
                let address = members.get(&id).cloned().unwrap_or_default();
                let pr = progress.iter().find(|p| p.id == id);
                let voter = pr.map_or(if id == me.id { me.voter } else { true }, |p| p.voter);
                let (role, term, commit, applied) = if id == me.id {
                    let role = if !me.voter && me.role == Role::Follower {
                        "learner"
                    } else {
                        me.role.as_str()
                    };
                    (role.to_string(), me.term, me.commit, me.applied)
                } else if pr.is_some() {
                    let role = if voter { "follower" } else { "learner" };
                    (role.to_string(), 0, 0, 0)
                } else {
                    ("unknown".to_string(), 0, 0, 0)
                };
                pb::NodeInfo {
                    id,
                    address,
                    role,
                    term,
                    commit,
                    applied,
                    lag: pr.map_or(0, |p| me.last_index.saturating_sub(p.matched)),
                    last_contact_ms: if id == me.id {
                        0
                    } else {
                        pr.map_or(0, |p| p.last_contact_ms)
                    },
                    voter,
                }
            })
            .collect();
        pb::ClusterStatus {
            node_id: me.id,
            leader_id: me.leader_id,
            leader_address: members.get(&me.leader_id).cloned().unwrap_or_default(),
            nodes,
        }
    }

    /// Waits until `pred` holds for the node's status, or the transfer wait runs out.
    async fn wait_status(&self, pred: impl Fn(&crate::raft::NodeStatus) -> bool) -> bool {
        let mut rx = self.node.status();
        tokio::time::timeout(TRANSFER_WAIT, rx.wait_for(|s| pred(s)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn unavailable_at_leader(&self, what: &str) -> Status {
        let leader = self.node.status().borrow().leader_id;
        let addr = self.node.member_address(leader).unwrap_or_default();
        let mut s = Status::unavailable(format!(
            "{what}; leader is now node {leader} at {addr}; retry there"
        ));
        if let Ok(v) = addr.parse() {
            s.metadata_mut().insert(LEADER_METADATA, v);
        }
        s
    }
}

fn valid_address(addr: &str) -> Result<(), Status> {
    let rest = addr
        .strip_prefix("https://")
        .ok_or_else(|| invalid("address", format!("{addr:?} must start with https://")))?;
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(invalid(
            "address",
            format!("{addr:?} must be https://HOST:PORT"),
        )),
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        Ok(Response::new(ClusterApi::status(self).await))
    }

    #[instrument(skip_all, fields(id = req.get_ref().id))]
    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let caller = identity::identity(&req);
        let r = req.into_inner();
        if r.id == 0 {
            return Err(invalid("id", "must be a positive integer"));
        }
        valid_address(&r.address)?;
        if let Some(a) = self.node.member_address(r.id) {
            if !r.rejoin {
                return Err(Status::already_exists(format!(
                    "node {} is already a member at {a}",
                    r.id
                )));
            }
            // A member that lost its data: forget its progress by removing it, then add it
            // back as a learner so it catches up by snapshot.
            identity::check_role(caller, cd_common::certs::Role::Coordinator)?;
            info!("re-adding a member that lost its data");
            self.node
                .change_membership(change(r.id, ConfChangeType::RemoveNode), Vec::new())
                .await
                .map_err(from_propose)?;
        }
        self.node
            .change_membership(
                change(r.id, ConfChangeType::AddLearnerNode),
                r.address.clone().into_bytes(),
            )
            .await
            .map_err(from_propose)?;
        info!(address = %r.address, "node added as learner");
        Ok(Response::new(ClusterApi::status(self).await))
    }

    #[instrument(skip_all, fields(id = req.get_ref().id))]
    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let id = req.into_inner().id;
        let me = self.node.status().borrow().clone();
        if self.node.member_address(id).is_none()
            && !self.node.progress().await.iter().any(|p| p.id == id)
        {
            return Err(Status::not_found(format!("node {id} is not a member")));
        }
        if id == me.id && me.role == Role::Leader {
            // raft-rs keeps a removed leader leading; hand leadership over first, then let
            // the new leader remove this node.
            let best = self
                .node
                .progress()
                .await
                .into_iter()
                .filter(|p| p.id != id && p.voter)
                .max_by_key(|p| p.matched)
                .ok_or_else(|| Status::failed_precondition("cannot remove the only voter"))?;
            self.node
                .transfer_leader(best.id)
                .await
                .map_err(from_propose)?;
            if !self
                .wait_status(|s| s.leader_id != id && s.leader_id != 0)
                .await
            {
                return Err(Status::deadline_exceeded(
                    "leadership transfer did not complete; retry",
                ));
            }
            return Err(self.unavailable_at_leader("leadership moved off the node being removed"));
        }
        self.node
            .change_membership(change(id, ConfChangeType::RemoveNode), Vec::new())
            .await
            .map_err(from_propose)?;
        info!("node removed");
        Ok(Response::new(ClusterApi::status(self).await))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let id = req.into_inner().id;
        let me = self.node.status().borrow().clone();
        if me.role != Role::Leader {
            let addr = self.node.member_address(me.leader_id).unwrap_or_default();
            return Err(from_propose(ProposeError::NotLeader {
                leader_id: me.leader_id,
                leader_addr: addr,
            }));
        }
        if id != me.id {
            if !self
                .node
                .progress()
                .await
                .iter()
                .any(|p| p.id == id && p.voter)
            {
                return Err(Status::not_found(format!("node {id} is not a voter")));
            }
            self.node.transfer_leader(id).await.map_err(from_propose)?;
            if !self.wait_status(|s| s.leader_id == id).await {
                return Err(Status::deadline_exceeded(format!(
                    "node {id} did not take over in time; retry"
                )));
            }
        }
        Ok(Response::new(ClusterApi::status(self).await))
    }

    async fn state_digest(
        &self,
        _req: Request<pb::StateDigestRequest>,
    ) -> Result<Response<pb::StateDigestResponse>, Status> {
        let applied = self.node.status().borrow().applied;
        let digest = self.node.read(|st| st.digest());
        Ok(Response::new(pb::StateDigestResponse { applied, digest }))
    }

    async fn set_faults(
        &self,
        req: Request<pb::SetFaultsRequest>,
    ) -> Result<Response<pb::SetFaultsResponse>, Status> {
        let faults = self.faults.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "fault injection is disabled; start the node with --enable-fault-injection",
            )
        })?;
        let drop_to = req.into_inner().drop_to;
        info!(
            ?drop_to,
            "fault injection: dropping raft messages to these nodes"
        );
        faults.set_drop_to(drop_to);
        Ok(Response::new(pb::SetFaultsResponse {}))
    }
}
