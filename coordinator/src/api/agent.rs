//! The agent API: a held `Attach` stream carrying assignments and cancellations (no polling),
//! heartbeats that extend leases, and log chunks and results that are fenced by attempt.

use cd_proto::v1 as pb;
use cd_proto::v1::agent_service_server::AgentService;
use futures::Stream;
use std::pin::Pin;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, info_span, instrument, warn};

use super::ApiConfig;
use super::convert;
use super::identity;
use super::masking;
use super::sessions::Sessions;
use super::status::{from_propose, invalid};
use crate::raft::{AppliedEvent, ProposeError, RaftHandle};
use crate::state::command::{self as cmd, AttemptKey};
use crate::state::{Event, Kind, Outcome};

#[derive(Clone)]
pub struct AgentApi {
    pub node: RaftHandle,
    pub sessions: Sessions,
    pub cfg: ApiConfig,
    pub shutdown: CancellationToken,
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<pb::AgentMessage, Status>> + Send>>;

fn valid_name(field: &str, name: &str) -> Result<(), Status> {
    match cd_common::names::name_problem(name) {
        None => Ok(()),
        Some(problem) => Err(invalid(field, problem)),
    }
}

fn key(agent: &str, r: Option<pb::AttemptRef>) -> Result<AttemptKey, Status> {
    let r = r.ok_or_else(|| invalid("attempt", "missing"))?;
    Ok(AttemptKey {
        run_id: r.run_id,
        stage: r.stage,
        attempt: r.attempt,
        agent: agent.to_string(),
        term: r.fencing_term,
    })
}

fn assignment_msg(a: pb::Assignment) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Assignment(a)),
    }
}

impl AgentApi {
    /// Refuses, before anything is proposed, a claim on an attempt that another agent holds.
    /// (Apply fences the same way; this only keeps such a request out of the log.)
    fn check_owner(&self, k: &AttemptKey) -> Result<(), Status> {
        let holder = self.node.read(|st| {
            st.runs
                .get(&k.run_id)
                .and_then(|run| run.stage(&k.stage))
                .and_then(|s| s.live_attempt())
                .filter(|a| a.number == k.attempt && a.agent != k.agent)
                .map(|a| a.agent.clone())
        });
        match holder {
            None => Ok(()),
            Some(holder) => Err(Status::permission_denied(format!(
                "attempt {} of {}/{} belongs to agent {holder}, not {}",
                k.attempt, k.run_id, k.stage, k.agent
            ))),
        }
    }

    /// Every attempt currently held by `agent`, as assignments (sent on every (re)connect).
    fn live_assignments(&self, agent: &str) -> Vec<pb::AgentMessage> {
        let key = self.cfg.secret_key.clone();
        let assignments: Vec<_> = self.node.read(|st| {
            st.live_attempts()
                .filter(|(_, _, a)| a.agent == agent)
                .filter_map(|(run, stage, a)| {
                    convert::assignment(st, &run.id, &stage.name, a.number)
                        .map(|x| masking::attach_secrets(key.as_deref(), st, x))
                })
                .collect()
        });
        assignments
            .into_iter()
            .filter_map(|a| self.deliverable(a))
            .map(assignment_msg)
            .collect()
    }

    /// An assignment with its secrets, or `None` after proposing the attempt's failure (its
    /// secrets cannot be given: the reason names the secret).
    fn deliverable(
        &self,
        a: Result<pb::Assignment, masking::Undeliverable>,
    ) -> Option<pb::Assignment> {
        let u = match a {
            Ok(a) => return Some(a),
            Err(u) => u,
        };
        warn!(run = %u.attempt.run_id, stage = %u.attempt.stage, reason = %u.reason, "stage fails: its secrets cannot be given");
        // Fails the attempt like a timeout (a failure, retried if the stage allows), through
        // the normal path. Sent again on a resend, it is refused as stale: harmless.
        let expire = Kind::ExpireAttempt(cmd::ExpireAttempt {
            key: Some(AttemptKey {
                run_id: u.attempt.run_id,
                stage: u.attempt.stage,
                attempt: u.attempt.attempt,
                agent: String::new(),
                term: u.attempt.fencing_term,
            }),
            timed_out: true,
            reason: u.reason,
        });
        let node = self.node.clone();
        tokio::spawn(
            async move {
                if let Err(e) = node.propose(expire).await {
                    warn!(error = %e, "could not fail the stage");
                }
            }
            .in_current_span(),
        );
        None
    }

    fn event_msg(&self, agent: &str, ev: &AppliedEvent) -> Option<pb::AgentMessage> {
        match &ev.event {
            Event::Assigned {
                agent: a,
                run_id,
                stage,
                attempt,
            } if a == agent => {
                let key = self.cfg.secret_key.clone();
                let found = self.node.read(|st| {
                    convert::assignment(st, run_id, stage, *attempt)
                        .map(|x| masking::attach_secrets(key.as_deref(), st, x))
                });
                found.and_then(|a| self.deliverable(a)).map(assignment_msg)
            }
            Event::CancelAttempt {
                agent: a,
                run_id,
                stage,
                attempt,
                term,
                reason,
            } if a == agent => Some(pb::AgentMessage {
                kind: Some(pb::agent_message::Kind::Cancel(pb::Cancel {
                    attempt: Some(pb::AttemptRef {
                        run_id: run_id.clone(),
                        stage: stage.clone(),
                        attempt: *attempt,
                        fencing_term: *term,
                    }),
                    reason: reason.clone(),
                })),
            }),
            _ => None,
        }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type AttachStream = MsgStream;

    #[instrument(skip_all, fields(agent = %req.get_ref().agent))]
    async fn attach(
        &self,
        req: Request<pb::ConnectRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        identity::require_agent(&req, &req.get_ref().agent)?;
        let me = identity::caller(&req);
        let r = req.into_inner();
        valid_name("agent", &r.agent)?;
        if r.slots == 0 || r.slots > 1024 {
            return Err(invalid("slots", format!("{} is not in 1..=1024", r.slots)));
        }
        for l in &r.labels {
            valid_name("labels", l)?;
        }
        self.node
            .propose(Kind::RegisterAgent(cmd::RegisterAgent {
                name: r.agent.clone(),
                labels: r.labels.clone(),
                slots: r.slots,
                version: r.version.clone(),
            }))
            .await
            .map_err(from_propose)?;
        // Subscribe before reading state so no assignment falls between the two.
        let mut events = self.node.subscribe();
        let (tx, rx) = super::outbox::outbox(self.cfg.limits.stream_bounds());
        // Sent from the task below: the client reads only once this handler has returned.
        let resend = self.live_assignments(&r.agent);
        let generation = self.sessions.connect(&r.agent);
        info!(slots = r.slots, labels = ?r.labels, "agent attached");
        let api = self.clone();
        let agent = r.agent.clone();
        let span = info_span!("attach", agent = %agent);
        let mut status = self.node.status();
        tokio::spawn(
            async move {
                for m in resend {
                    if tx.send(Ok(m)).await.is_err() {
                        api.sessions.disconnect(&agent, generation);
                        return;
                    }
                }
                'stream: loop {
                    let msg = tokio::select! {
                        _ = tx.closed() => break,
                        _ = api.shutdown.cancelled() => break,
                        changed = status.changed() => {
                            if changed.is_err() || api.node.is_leader() {
                                if changed.is_err() { break; }
                                continue;
                            }
                            // Leadership moved: send the agent to the new leader.
                            let s = status.borrow().clone();
                            let addr = api.node.member_address(s.leader_id).unwrap_or_default();
                            let err = from_propose(ProposeError::NotLeader { leader_id: s.leader_id, leader_addr: addr });
                            let _ = tx.send(Err(err)).await;
                            break;
                        }
                        ev = events.recv() => match ev {
                            Ok(ev) if matches!(&ev.event, Event::Revoked { identity } if *identity == me) => {
                                warn!("identity revoked; closing the agent's stream");
                                let _ = tx.send(Err(Status::unauthenticated(format!("{me} has been revoked")))).await;
                                break;
                            }
                            Ok(ev) => api.event_msg(&agent, &ev).map(|m| vec![m]).unwrap_or_default(),
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                warn!(missed = n, "event stream lagged; resending live assignments");
                                api.live_assignments(&agent)
                            }
                            Err(broadcast::error::RecvError::Closed) => break,
                        },
                    };
                    for m in msg {
                        if tx.send(Ok(m)).await.is_err() {
                            break 'stream;
                        }
                    }
                }
                api.sessions.disconnect(&agent, generation);
                info!("agent detached");
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(rx)))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        identity::require_agent(&req, &req.get_ref().agent)?;
        let r = req.into_inner();
        valid_name("agent", &r.agent)?;
        let lease_until_ms = cd_common::time::now_ms() + self.cfg.lease.as_millis() as i64;
        self.node
            .propose(Kind::Heartbeat(cmd::Heartbeat {
                agent: r.agent.clone(),
                lease_until_ms,
            }))
            .await
            .map_err(from_propose)?;
        let stale = self.node.read(|st| {
            r.running
                .iter()
                .filter(|a| {
                    let live = st
                        .runs
                        .get(&a.run_id)
                        .and_then(|run| run.stage(&a.stage))
                        .and_then(|s| s.live_attempt())
                        .is_some_and(|l| {
                            l.number == a.attempt && l.agent == r.agent && l.term == a.fencing_term
                        });
                    !live
                })
                .cloned()
                .collect()
        });
        Ok(Response::new(pb::HeartbeatResponse {
            lease_until_ms,
            stale,
        }))
    }

    async fn start_attempt(
        &self,
        req: Request<pb::StartAttemptRequest>,
    ) -> Result<Response<pb::StartAttemptResponse>, Status> {
        identity::require_agent(&req, &req.get_ref().agent)?;
        let r = req.into_inner();
        let k = key(&r.agent, r.attempt)?;
        self.check_owner(&k)?;
        self.node
            .propose(Kind::StartAttempt(k))
            .await
            .map_err(from_propose)?;
        Ok(Response::new(pb::StartAttemptResponse {}))
    }

    async fn push_logs(
        &self,
        req: Request<pb::PushLogsRequest>,
    ) -> Result<Response<pb::PushLogsResponse>, Status> {
        identity::require_agent(&req, &req.get_ref().agent)?;
        let r = req.into_inner();
        let limits = &self.cfg.limits;
        if r.chunks.len() > limits.max_chunks_per_push {
            return Err(Status::resource_exhausted(format!(
                "chunks: {} in one push exceeds the limit of {}",
                r.chunks.len(),
                limits.max_chunks_per_push
            )));
        }
        let mut chunks = Vec::with_capacity(r.chunks.len());
        for c in r.chunks {
            if c.data.len() > limits.max_log_chunk {
                return Err(invalid(
                    "chunks.data",
                    format!(
                        "{} bytes exceeds the log chunk limit of {} bytes",
                        c.data.len(),
                        limits.max_log_chunk
                    ),
                ));
            }
            // Checked here, on the leader, so apply never meets a chunk it cannot decode.
            cd_common::logcodec::decode(&c.data, c.encoding, limits.max_log_chunk)
                .map_err(|e| invalid("chunks.data", e.to_string()))?;
            let k = key(&r.agent, c.attempt)?;
            self.check_owner(&k)?;
            chunks.push(cmd::LogChunk {
                key: Some(k),
                seq: c.seq,
                data: c.data,
                encoding: c.encoding,
            });
        }
        let key = self.cfg.secret_key.clone();
        let secrets = self
            .node
            .read(|st| masking::StageValues::for_chunks(key.as_deref(), st, &chunks));
        secrets.mask(&mut chunks);
        let out = self
            .node
            .propose(Kind::AppendLogs(cmd::AppendLogs { chunks }))
            .await
            .map_err(from_propose)?;
        let acks = match out {
            Outcome::LogAcks(acks) => acks
                .into_iter()
                .map(|a| pb::LogAck {
                    attempt: Some(pb::AttemptRef {
                        run_id: a.run_id,
                        stage: a.stage,
                        attempt: a.attempt,
                        fencing_term: a.term,
                    }),
                    next_seq: a.next_seq,
                    stale: a.stale,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(Response::new(pb::PushLogsResponse { acks }))
    }

    async fn report_result(
        &self,
        req: Request<pb::ReportResultRequest>,
    ) -> Result<Response<pb::ReportResultResponse>, Status> {
        identity::require_agent(&req, &req.get_ref().agent)?;
        let r = req.into_inner();
        let k = key(&r.agent, r.attempt)?;
        self.check_owner(&k)?;
        let result = r.result.ok_or_else(|| invalid("result", "missing"))?;
        let limits = &self.cfg.limits;
        if result.metrics.len() > limits.max_metrics {
            return Err(invalid(
                "result.metrics",
                format!(
                    "{} entries exceeds the limit of {}",
                    result.metrics.len(),
                    limits.max_metrics
                ),
            ));
        }
        if let Some((name, v)) = result.metrics.iter().find(|(_, v)| !v.is_finite()) {
            return Err(invalid(
                "result.metrics",
                format!("{name} is {v}, not a finite number"),
            ));
        }
        let errors_len: usize = result.errors.iter().map(String::len).sum();
        if errors_len > limits.max_log_chunk {
            return Err(invalid(
                "result.errors",
                format!(
                    "{errors_len} bytes exceeds the limit of {} bytes",
                    limits.max_log_chunk
                ),
            ));
        }
        let mut result = convert::result_from_pb(result);
        let secret_key = self.cfg.secret_key.clone();
        self.node.read(|st| {
            masking::mask_result(secret_key.as_deref(), st, &k.run_id, &k.stage, &mut result)
        });
        self.node
            .propose(Kind::ReportResult(cmd::ReportResult {
                key: Some(k),
                result: Some(result),
            }))
            .await
            .map_err(from_propose)?;
        Ok(Response::new(pb::ReportResultResponse {}))
    }
}
