//! `Revoke`: an operator refuses an agent's or operator's identity cluster-wide. The
//! authorization layer (`authz.rs`) then refuses its calls, and the agent API closes a revoked
//! agent's open stream. `control.rs` delegates here.

use cd_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::control::ControlApi;
use super::identity;
use super::status::invalid;
use crate::state::command as cmd;
use crate::state::{Kind, Outcome};

/// Longest accepted reason, in bytes.
const MAX_REASON: usize = 1024;

impl ControlApi {
    pub(super) async fn revoke_impl(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let by = identity::caller(&req);
        let r = req.into_inner();
        let id: cd_common::certs::Identity = r
            .identity
            .parse()
            .map_err(|e: cd_common::certs::CertError| invalid("identity", e.to_string()))?;
        if r.reason.len() > MAX_REASON {
            return Err(invalid(
                "reason",
                format!("{} bytes exceeds the limit of {MAX_REASON}", r.reason.len()),
            ));
        }
        if id.to_string() == by {
            return Err(invalid("identity", "an operator cannot revoke itself"));
        }
        let out = self
            .propose_as(
                &by.clone(),
                Kind::Revoke(cmd::Revoke {
                    identity: id.to_string(),
                    reason: r.reason,
                    by,
                }),
            )
            .await?;
        let changed = matches!(out, Outcome::Revoked(true));
        let rec = self
            .node
            .read(|st| st.revoked.get(&id.to_string()).cloned())
            .ok_or_else(|| Status::internal("revocation applied but not found"))?;
        Ok(Response::new(pb::RevokeResponse {
            identity: id.to_string(),
            revoked_at_ms: rec.at_ms,
            revoked_by: rec.by,
            already: !changed,
        }))
    }
}
