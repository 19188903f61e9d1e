//! The operator API (cdctl and third-party clients): pipelines, runs, approvals, logs,
//! agents, environments and rollback; incidents and metrics are in `feedback.rs`.

use std::collections::BTreeMap;
use std::pin::Pin;

use cd_proto::v1 as pb;
use cd_proto::v1::control_service_server::ControlService;
use futures::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::sessions::Sessions;
use super::status::{STALE_METADATA, from_propose, from_store, invalid};
use super::{ApiConfig, convert, identity};
use crate::raft::RaftHandle;
use crate::state::command as cmd;
use crate::state::{Event, Kind, Outcome};

#[derive(Clone)]
pub struct ControlApi {
    pub node: RaftHandle,
    pub sessions: Sessions,
    pub cfg: ApiConfig,
    pub shutdown: CancellationToken,
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Log chunks read from the store per batch while streaming.
const LOG_READ_BATCH: usize = 256;

impl ControlApi {
    /// Linearizable reads by default (ReadIndex on the leader; followers point at it). A
    /// request with `cd-stale: true` metadata reads this node's applied state as it is.
    pub(super) async fn barrier<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if req
            .metadata()
            .get(STALE_METADATA)
            .is_some_and(|v| v == "true")
        {
            return Ok(());
        }
        self.node.linearizable().await.map_err(from_propose)
    }

    fn run_pb(&self, id: &str) -> Result<pb::Run, Status> {
        self.node
            .read(|st| st.runs.get(id).map(|r| convert::run(st, r)))
            .ok_or_else(|| Status::not_found(format!("run {id:?} does not exist")))
    }

    /// Adds what this node counts by itself (refused webhook deliveries).
    fn with_node_counts(&self, mut p: pb::Pipeline) -> pb::Pipeline {
        p.webhook_refused = self.cfg.webhook_stats.refused(&p.name);
        p
    }

    /// Proposes a caller's write wrapped for the audit log (`state/audit.rs`).
    pub(super) async fn propose_as(&self, who: &str, kind: Kind) -> Result<Outcome, Status> {
        self.node
            .propose(crate::state::audit::as_caller(who.to_string(), kind))
            .await
            .map_err(from_propose)
    }

    async fn propose_then_run(
        &self,
        who: &str,
        kind: Kind,
        run_id: &str,
    ) -> Result<Response<pb::Run>, Status> {
        self.propose_as(who, kind).await?;
        Ok(Response::new(self.run_pb(run_id)?))
    }
}

#[tonic::async_trait]
impl ControlService for ControlApi {
    type WatchRunStream = Stream_<pb::Run>;
    type FollowLogsStream = Stream_<pb::LogChunk>;

    #[instrument(skip_all, fields(file = %req.get_ref().file_name))]
    async fn apply_pipeline(
        &self,
        req: Request<pb::ApplyPipelineRequest>,
    ) -> Result<Response<pb::ApplyPipelineResponse>, Status> {
        let who = identity::caller(&req);
        let r = req.into_inner();
        let max = self.cfg.limits.max_spec;
        if r.spec_yaml.len() > max {
            return Err(invalid(
                "spec_yaml",
                format!(
                    "{} bytes exceeds the spec limit of {max} bytes",
                    r.spec_yaml.len()
                ),
            ));
        }
        let file = if r.file_name.is_empty() {
            "pipeline.yaml"
        } else {
            &r.file_name
        };
        let mut spec = cd_common::spec::parse(&r.spec_yaml, file)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !r.base_dir.is_empty() {
            spec.resolve_source(std::path::Path::new(&r.base_dir));
        }
        let name = spec.name.clone();
        let spec_json =
            serde_json::to_string(&spec).map_err(|e| Status::internal(e.to_string()))?;
        let out = self
            .propose_as(
                &who,
                Kind::ApplyPipeline(cmd::ApplyPipeline {
                    name: name.clone(),
                    spec_yaml: r.spec_yaml,
                    file_name: file.to_string(),
                    spec_json,
                }),
            )
            .await?;
        let changed = matches!(out, Outcome::Pipeline { changed: true, .. });
        let pipeline = self.node.read(|st| {
            st.pipelines
                .get(&name)
                .and_then(|p| p.latest().map(|v| convert::pipeline(st, p, v)))
        });
        Ok(Response::new(pb::ApplyPipelineResponse {
            pipeline,
            changed,
        }))
    }

    async fn list_pipelines(
        &self,
        req: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        self.barrier(&req).await?;
        let pipelines = self.node.read(|st| {
            st.pipelines
                .values()
                .filter_map(|p| p.latest().map(|v| convert::pipeline(st, p, v)))
                .map(|p| self.with_node_counts(p))
                .collect()
        });
        Ok(Response::new(pb::ListPipelinesResponse { pipelines }))
    }

    async fn get_pipeline(
        &self,
        req: Request<pb::GetPipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        self.barrier(&req).await?;
        let r = req.into_inner();
        self.node
            .read(|st| {
                let p = st.pipelines.get(&r.name)?;
                let v = if r.version == 0 {
                    p.latest()
                } else {
                    p.version(r.version)
                }?;
                Some(convert::pipeline(st, p, v))
            })
            .map(|p| Response::new(self.with_node_counts(p)))
            .ok_or_else(|| match r.version {
                0 => Status::not_found(format!("pipeline {:?} does not exist", r.name)),
                v => Status::not_found(format!("pipeline {:?} has no version {v}", r.name)),
            })
    }

    #[instrument(skip_all, fields(pipeline = %req.get_ref().pipeline))]
    async fn start_run(
        &self,
        req: Request<pb::StartRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let who = identity::caller(&req);
        let r = req.into_inner();
        if r.pipeline.is_empty() {
            return Err(invalid("pipeline", "required"));
        }
        if r.revision.len() > 256 || r.revision.chars().any(char::is_control) {
            return Err(invalid("revision", "at most 256 printable characters"));
        }
        if let Some(k) = r
            .params
            .keys()
            .find(|k| !cd_common::names::is_valid_env_name(k))
        {
            return Err(invalid(
                "params",
                format!("{k:?} is not a valid environment variable name"),
            ));
        }
        let size: usize = r.params.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > self.cfg.limits.max_params {
            return Err(invalid(
                "params",
                format!(
                    "{size} bytes exceeds the limit of {} bytes",
                    self.cfg.limits.max_params
                ),
            ));
        }
        let out = self
            .propose_as(
                &who,
                Kind::StartRun(cmd::StartRun {
                    pipeline: r.pipeline,
                    revision: r.revision,
                    params: r.params.into_iter().collect::<BTreeMap<_, _>>(),
                    trigger: r.trigger,
                    commit_at_ms: r.commit_at_ms,
                }),
            )
            .await?;
        match out {
            Outcome::Run(id) => Ok(Response::new(self.run_pb(&id)?)),
            _ => Err(Status::internal("start run answered without a run id")),
        }
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        self.barrier(&req).await?;
        Ok(Response::new(self.run_pb(&req.get_ref().run_id)?))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        self.barrier(&req).await?;
        let r = req.into_inner();
        let size = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let before: u64 = if r.page_token.is_empty() {
            u64::MAX
        } else {
            r.page_token.parse().map_err(|_| {
                invalid(
                    "page_token",
                    format!("{:?} is not a token this server issued", r.page_token),
                )
            })?
        };
        let (runs, next) = self.node.read(|st| {
            let mut all: Vec<_> = st
                .runs
                .values()
                .filter(|run| {
                    (r.pipeline.is_empty() || run.pipeline == r.pipeline) && run.seq < before
                })
                .collect();
            all.sort_by_key(|run| std::cmp::Reverse(run.seq));
            let more = all.len() > size;
            all.truncate(size);
            let next = if more {
                all.last().map(|x| x.seq.to_string()).unwrap_or_default()
            } else {
                String::new()
            };
            (
                all.into_iter().map(|run| convert::run(st, run)).collect(),
                next,
            )
        });
        Ok(Response::new(pb::ListRunsResponse {
            runs,
            next_page_token: next,
        }))
    }

    #[instrument(skip_all, fields(run = %req.get_ref().run_id))]
    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let who = identity::caller(&req);
        let r = req.into_inner();
        let reason = if r.reason.is_empty() {
            format!("by {who}")
        } else {
            format!("{} (by {who})", r.reason)
        };
        self.propose_then_run(
            &who,
            Kind::CancelRun(cmd::CancelRun {
                run_id: r.run_id.clone(),
                reason,
            }),
            &r.run_id,
        )
        .await
    }

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        self.barrier(&req).await?;
        let id = req.into_inner().run_id;
        let mut events = self.node.subscribe();
        let first = self.run_pb(&id)?;
        let (tx, rx) = super::outbox::outbox(self.cfg.limits.stream_bounds());
        let api = self.clone();
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            while last.state == pb::RunState::Running as i32 {
                let refresh = tokio::select! {
                    _ = tx.closed() => return,
                    _ = api.shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("coordinator is shutting down"))).await;
                        return;
                    }
                    ev = events.recv() => match ev {
                        Ok(ev) => matches!(&ev.event, Event::RunChanged { run_id } if *run_id == id),
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if refresh
                    && let Ok(run) = api.run_pb(&id)
                    && run != last
                {
                    last = run;
                    if tx.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(rx)))
    }

    async fn follow_logs(
        &self,
        req: Request<pb::FollowLogsRequest>,
    ) -> Result<Response<Self::FollowLogsStream>, Status> {
        self.barrier(&req).await?;
        let r = req.into_inner();
        let exists = self.node.read(|st| {
            st.runs
                .get(&r.run_id)
                .map(|run| run.stage(&r.stage).is_some())
        });
        match exists {
            None => {
                return Err(Status::not_found(format!(
                    "run {:?} does not exist",
                    r.run_id
                )));
            }
            Some(false) => {
                return Err(Status::not_found(format!(
                    "run {} has no stage {:?}",
                    r.run_id, r.stage
                )));
            }
            Some(true) => {}
        }
        let mut events = self.node.subscribe();
        let (tx, rx) = super::outbox::outbox(self.cfg.limits.stream_bounds());
        let api = self.clone();
        tokio::spawn(async move {
            let mut pos = (r.attempt, 0u64);
            loop {
                // Drain what is stored past `pos`, then decide whether to wait for more.
                loop {
                    let batch = match api.node.read_logs(
                        &r.run_id,
                        &r.stage,
                        r.attempt,
                        pos,
                        LOG_READ_BATCH,
                    ) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Err(from_store(e))).await;
                            return;
                        }
                    };
                    let n = batch.len();
                    for c in batch {
                        pos = (c.attempt, c.seq + 1);
                        let chunk = pb::LogChunk {
                            attempt: Some(pb::AttemptRef {
                                run_id: r.run_id.clone(),
                                stage: r.stage.clone(),
                                attempt: c.attempt,
                                fencing_term: 0,
                            }),
                            seq: c.seq,
                            data: c.data,
                            encoding: 0,
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    if n < LOG_READ_BATCH {
                        break;
                    }
                }
                let finished = api.node.read(|st| {
                    st.runs
                        .get(&r.run_id)
                        .and_then(|run| run.stage(&r.stage))
                        .is_none_or(|s| s.state.is_final())
                });
                if !r.follow || finished {
                    return;
                }
                // Any relevant event (or a lag) sends us back to read the store from `pos`.
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = api.shutdown.cancelled() => return,
                    ev = events.recv() => match ev {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(rx)))
    }

    #[instrument(skip_all, fields(run = %req.get_ref().run_id, stage = %req.get_ref().stage))]
    async fn approve(&self, req: Request<pb::ApproveRequest>) -> Result<Response<pb::Run>, Status> {
        let identity = identity::caller(&req);
        let r = req.into_inner();
        self.node
            .read(|st| st.check_approver(&r.run_id, &r.stage, &identity))
            .map_err(super::status::from_state)?;
        self.propose_then_run(
            &identity.clone(),
            Kind::Approve(cmd::Approve {
                run_id: r.run_id.clone(),
                stage: r.stage,
                identity,
                comment: r.comment,
            }),
            &r.run_id,
        )
        .await
    }

    #[instrument(skip_all, fields(run = %req.get_ref().run_id, stage = %req.get_ref().stage))]
    async fn reject(&self, req: Request<pb::RejectRequest>) -> Result<Response<pb::Run>, Status> {
        let identity = identity::caller(&req);
        let r = req.into_inner();
        if r.reason.trim().is_empty() {
            return Err(invalid(
                "reason",
                "required: say why the change is rejected",
            ));
        }
        self.node
            .read(|st| st.check_approver(&r.run_id, &r.stage, &identity))
            .map_err(super::status::from_state)?;
        self.propose_then_run(
            &identity.clone(),
            Kind::Reject(cmd::Reject {
                run_id: r.run_id.clone(),
                stage: r.stage,
                identity,
                reason: r.reason,
            }),
            &r.run_id,
        )
        .await
    }

    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.barrier(&req).await?;
        let agents = self.node.read(|st| {
            st.agents
                .values()
                .map(|a| pb::AgentInfo {
                    name: a.name.clone(),
                    labels: a.labels.clone(),
                    slots: a.slots,
                    connected: self.sessions.is_connected(&a.name),
                    last_seen_ms: a.last_seen_ms,
                    running: st
                        .live_attempts()
                        .filter(|(_, _, at)| at.agent == a.name)
                        .count() as u32,
                })
                .collect()
        });
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn list_environments(
        &self,
        req: Request<pb::ListEnvironmentsRequest>,
    ) -> Result<Response<pb::ListEnvironmentsResponse>, Status> {
        self.barrier(&req).await?;
        let environments = self.node.read(|st| {
            let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
            for d in &st.deployments {
                *counts.entry(d.environment.as_str()).or_default() += 1;
            }
            counts
                .into_iter()
                .map(|(env, n)| pb::Environment {
                    name: env.to_string(),
                    current: st.current_deployment(env).map(convert::deployment),
                    deployments: n,
                })
                .collect()
        });
        Ok(Response::new(pb::ListEnvironmentsResponse { environments }))
    }

    async fn environment_history(
        &self,
        req: Request<pb::EnvironmentHistoryRequest>,
    ) -> Result<Response<pb::EnvironmentHistoryResponse>, Status> {
        self.barrier(&req).await?;
        let env = req.into_inner().environment;
        let deployments: Vec<_> = self.node.read(|st| {
            st.deployments
                .iter()
                .rev()
                .filter(|d| d.environment == env)
                .map(convert::deployment)
                .collect()
        });
        if deployments.is_empty() {
            return Err(Status::not_found(format!(
                "environment {env:?} has no deployments"
            )));
        }
        Ok(Response::new(pb::EnvironmentHistoryResponse {
            deployments,
        }))
    }

    #[instrument(skip_all, fields(env = %req.get_ref().environment))]
    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let who = identity::caller(&req);
        let r = req.into_inner();
        let reason = if r.reason.is_empty() {
            format!("requested by {who}")
        } else {
            format!("{} (by {who})", r.reason)
        };
        let out = self
            .propose_as(
                &who,
                Kind::Rollback(cmd::Rollback {
                    environment: r.environment,
                    reason,
                }),
            )
            .await?;
        match out {
            Outcome::Run(id) => Ok(Response::new(self.run_pb(&id)?)),
            _ => Err(Status::internal("rollback answered without a run id")),
        }
    }

    #[instrument(skip_all, fields(env = %req.get_ref().environment))]
    async fn open_incident(
        &self,
        req: Request<pb::OpenIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        self.open_incident_impl(req).await
    }

    #[instrument(skip_all, fields(id = req.get_ref().id))]
    async fn resolve_incident(
        &self,
        req: Request<pb::ResolveIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        self.resolve_incident_impl(req).await
    }

    async fn list_incidents(
        &self,
        req: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        self.list_incidents_impl(req).await
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        self.revoke_impl(req).await
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.barrier(&req).await?;
        let r = req.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let entries = self.node.read(|st| {
            let mut out: Vec<pb::AuditEntry> = st
                .audit
                .iter()
                .rev()
                .filter(|e| {
                    r.identity.is_empty()
                        || e.identity == r.identity
                        || e.identity.rsplit('/').next() == Some(r.identity.as_str())
                })
                .take(limit)
                .map(|e| pb::AuditEntry {
                    seq: e.seq,
                    at_ms: e.at_ms,
                    identity: e.identity.clone(),
                    action: e.action.clone(),
                    target: e.target.clone(),
                })
                .collect();
            out.reverse();
            out
        });
        Ok(Response::new(pb::ListAuditResponse { entries }))
    }

    async fn get_metrics(
        &self,
        req: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::Metrics>, Status> {
        self.get_metrics_impl(req).await
    }

    #[instrument(skip_all, fields(name = %req.get_ref().name))]
    async fn set_secret(
        &self,
        req: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::SecretInfo>, Status> {
        self.set_secret_impl(req).await
    }

    #[instrument(skip_all, fields(name = %req.get_ref().name))]
    async fn delete_secret(
        &self,
        req: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        self.delete_secret_impl(req).await
    }

    async fn list_secrets(
        &self,
        req: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        self.list_secrets_impl(req).await
    }
}
