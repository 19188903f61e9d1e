//! The feedback half of the operator API: incidents (open, resolve, list) and the MTTR, MTBF
//! and DORA figures computed from replicated history. `control.rs` delegates here.

use cd_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::control::ControlApi;
use super::status::invalid;
use super::{convert, identity};
use crate::state::command as cmd;
use crate::state::{Kind, MAX_INCIDENT_TEXT as MAX_TEXT, Outcome, metrics};

impl ControlApi {
    fn incident_pb(&self, id: u64) -> Result<pb::Incident, Status> {
        self.node
            .read(|st| {
                st.incidents
                    .get((id as usize).wrapping_sub(1))
                    .map(convert::incident)
            })
            .ok_or_else(|| Status::not_found(format!("incident {id} does not exist")))
    }

    fn answered_incident(&self, out: Outcome) -> Result<Response<pb::Incident>, Status> {
        match out {
            Outcome::Incident(id) => Ok(Response::new(self.incident_pb(id)?)),
            _ => Err(Status::internal("answered without an incident id")),
        }
    }

    pub(super) async fn open_incident_impl(
        &self,
        req: Request<pb::OpenIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let who = identity::caller(&req);
        let r = req.into_inner();
        if r.environment.is_empty() {
            return Err(invalid("environment", "required"));
        }
        check_text("reason", &r.reason, true)?;
        let out = self
            .propose_as(
                &who.clone(),
                Kind::OpenIncident(cmd::OpenIncident {
                    environment: r.environment,
                    reason: r.reason,
                    identity: who,
                }),
            )
            .await?;
        self.answered_incident(out)
    }

    pub(super) async fn resolve_incident_impl(
        &self,
        req: Request<pb::ResolveIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let who = identity::caller(&req);
        let r = req.into_inner();
        if r.id == 0 {
            return Err(invalid("id", "required (incident ids start at 1)"));
        }
        check_text("note", &r.note, false)?;
        let out = self
            .propose_as(
                &who.clone(),
                Kind::ResolveIncident(cmd::ResolveIncident {
                    id: r.id,
                    identity: who,
                    note: r.note,
                }),
            )
            .await?;
        self.answered_incident(out)
    }

    pub(super) async fn list_incidents_impl(
        &self,
        req: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        self.barrier(&req).await?;
        let r = req.into_inner();
        let incidents = self.node.read(|st| {
            st.incidents
                .iter()
                .filter(|i| r.environment.is_empty() || i.environment == r.environment)
                .filter(|i| !r.open_only || i.is_open())
                .map(convert::incident)
                .collect()
        });
        Ok(Response::new(pb::ListIncidentsResponse { incidents }))
    }

    pub(super) async fn get_metrics_impl(
        &self,
        req: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::Metrics>, Status> {
        self.barrier(&req).await?;
        let r = req.into_inner();
        if r.environment.is_empty() {
            return Err(invalid("environment", "required, e.g. production"));
        }
        let now = cd_common::time::now_ms();
        let window = i64::try_from(r.window_ms).unwrap_or(i64::MAX);
        let since = if window == 0 {
            0
        } else {
            now.saturating_sub(window).max(0)
        };
        let figures = self.node.read(|st| {
            let known = st
                .deployments
                .iter()
                .any(|d| d.environment == r.environment);
            known.then(|| metrics::compute(st, &r.environment, since, now))
        });
        match figures {
            Some(f) => Ok(Response::new(convert::metrics(&f))),
            None => Err(Status::not_found(format!(
                "environment {:?} has no deployments",
                r.environment
            ))),
        }
    }
}

/// Refuses text the state machine would refuse, before it is proposed.
fn check_text(field: &str, text: &str, required: bool) -> Result<(), Status> {
    if required && text.trim().is_empty() {
        return Err(invalid(field, "required"));
    }
    if text.len() > MAX_TEXT {
        return Err(invalid(
            field,
            format!("{} bytes exceeds the limit of {MAX_TEXT} bytes", text.len()),
        ));
    }
    Ok(())
}
