//! `SetSecret`, `DeleteSecret`, `ListSecrets`: the leader seals a value with the cluster key
//! before proposing it, so only ciphertext enters the Raft log; list answers names and who set
//! them, never values or ciphertext. `control.rs` delegates here.

use cd_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::control::ControlApi;
use super::identity;
use super::status::{from_propose, invalid};
use crate::raft::ProposeError;
use crate::state::command as cmd;
use crate::state::{Kind, State};

/// The answer when this node has no `--secret-key-file`.
pub const DISABLED: &str =
    "secrets are disabled on this coordinator: start it with --secret-key-file";

fn info(st: &State, name: &str) -> Option<pb::SecretInfo> {
    st.secrets.get(name).map(|r| pb::SecretInfo {
        name: name.to_string(),
        updated_at_ms: r.updated_at_ms,
        updated_by: r.updated_by.clone(),
    })
}

fn check_name(name: &str) -> Result<(), Status> {
    match cd_common::secrets::name_problem(name) {
        None => Ok(()),
        Some(p) => Err(invalid("name", p)),
    }
}

impl ControlApi {
    /// A follower sends the caller to the leader before looking at the key or the value: only
    /// the leader seals.
    fn leader_only(&self) -> Result<(), Status> {
        if self.node.is_leader() {
            return Ok(());
        }
        let s = self.node.status().borrow().clone();
        let leader_addr = self.node.member_address(s.leader_id).unwrap_or_default();
        Err(from_propose(ProposeError::NotLeader {
            leader_id: s.leader_id,
            leader_addr,
        }))
    }

    pub(super) async fn set_secret_impl(
        &self,
        req: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::SecretInfo>, Status> {
        let by = identity::caller(&req);
        let r = req.into_inner();
        check_name(&r.name)?;
        if let Some(p) = cd_common::secrets::value_problem(&r.value) {
            return Err(invalid("value", p));
        }
        self.leader_only()?;
        let key = self
            .cfg
            .secret_key
            .as_ref()
            .ok_or_else(|| Status::failed_precondition(DISABLED))?;
        let sealed = key
            .seal(&r.name, &r.value)
            .map_err(|e| Status::internal(format!("sealing the secret failed: {e}")))?;
        drop(r.value);
        self.propose_as(
            &by.clone(),
            Kind::SetSecret(cmd::SetSecret {
                name: r.name.clone(),
                ciphertext: sealed.ciphertext,
                nonce: sealed.nonce,
                key_id: sealed.key_id,
                format: sealed.format,
                by,
            }),
        )
        .await?;
        self.node
            .read(|st| info(st, &r.name))
            .map(Response::new)
            .ok_or_else(|| Status::internal("secret stored but not found"))
    }

    pub(super) async fn delete_secret_impl(
        &self,
        req: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let by = identity::caller(&req);
        let r = req.into_inner();
        check_name(&r.name)?;
        self.propose_as(
            &by,
            Kind::DeleteSecret(cmd::DeleteSecret {
                name: r.name.clone(),
            }),
        )
        .await?;
        Ok(Response::new(pb::DeleteSecretResponse { name: r.name }))
    }

    pub(super) async fn list_secrets_impl(
        &self,
        req: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        self.barrier(&req).await?;
        let secrets = self.node.read(|st| {
            st.secrets
                .keys()
                .filter_map(|name| info(st, name))
                .collect()
        });
        Ok(Response::new(pb::ListSecretsResponse { secrets }))
    }
}
