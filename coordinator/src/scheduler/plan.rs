//! The scheduler's decisions as a pure function of state, connected agents and the time:
//! which queued stage goes to which agent, and which live attempts have lapsed or timed out.

use std::collections::{BTreeMap, BTreeSet};

use crate::state::command::{AssignStage, AttemptKey, ExpireApproval, ExpireAttempt};
use crate::state::{Kind, StageState, State};

/// The label agents with a working Docker engine advertise.
pub const DOCKER_LABEL: &str = "docker";

pub struct PlanInput<'a> {
    pub connected: &'a BTreeSet<String>,
    pub now_ms: i64,
    pub lease_ms: i64,
    /// False during the grace period after this node became leader: leases granted by an
    /// earlier leader (or before a restart) are not expired until agents had time to renew.
    pub may_expire: bool,
    /// This leader's Raft term, stamped into assignments as their fencing token.
    pub term: u64,
}

pub fn plan(st: &State, input: &PlanInput<'_>) -> Vec<Kind> {
    let mut out = Vec::new();
    let mut used: BTreeMap<&str, u32> = BTreeMap::new();
    for (run, stage, a) in st.live_attempts() {
        *used.entry(a.agent.as_str()).or_default() += 1;
        let key = || AttemptKey {
            run_id: run.id.clone(),
            stage: stage.name.clone(),
            attempt: a.number,
            agent: a.agent.clone(),
            term: a.term,
        };
        let timeout = st.stage_spec(run, &stage.name).and_then(|s| s.timeout_ms);
        let began = if a.started_ms > 0 {
            a.started_ms
        } else {
            a.assigned_ms
        };
        if let Some(t) = timeout
            && input.now_ms >= began + t as i64
        {
            out.push(Kind::ExpireAttempt(ExpireAttempt {
                key: Some(key()),
                timed_out: true,
                reason: format!("timed out after {}", cd_common::duration::format_ms(t)),
            }));
        } else if input.may_expire && a.lease_until_ms < input.now_ms {
            out.push(Kind::ExpireAttempt(ExpireAttempt {
                key: Some(key()),
                timed_out: false,
                reason: format!("lease lapsed: agent {} stopped renewing it", a.agent),
            }));
        }
    }
    // Approvals that waited past their `gate.approval_timeout` fail the stage.
    for run in st.runs.values().filter(|r| r.finished_ms == 0) {
        for stage in &run.stages {
            if stage.state != StageState::AwaitingApproval {
                continue;
            }
            let timeout = st
                .stage_spec(run, &stage.name)
                .and_then(|s| s.gate.as_ref())
                .and_then(|g| g.approval_timeout_ms);
            if let Some(t) = timeout
                && input.now_ms >= stage.awaiting_since_ms + t as i64
            {
                out.push(Kind::ExpireApproval(ExpireApproval {
                    run_id: run.id.clone(),
                    stage: stage.name.clone(),
                }));
            }
        }
    }
    for (run, stage) in st.queued_stages() {
        let Some(spec) = st.stage_spec(run, &stage.name) else {
            continue;
        };
        // The agent with the most free slots that carries every label the stage asks for.
        let best = st
            .agents
            .values()
            .filter(|a| input.connected.contains(&a.name))
            // A connection can outlive the agent's health (a frozen process, a half-open
            // socket): only agents that renewed their leases lately get new work.
            .filter(|a| a.last_seen_ms + input.lease_ms >= input.now_ms)
            .filter(|a| spec.labels.iter().all(|l| a.labels.contains(l)))
            // Container stages need an agent with a working Docker engine.
            .filter(|a| spec.image.is_none() || a.labels.iter().any(|l| l == DOCKER_LABEL))
            .map(|a| {
                (
                    a,
                    a.slots
                        .saturating_sub(*used.get(a.name.as_str()).unwrap_or(&0)),
                )
            })
            .filter(|(_, free)| *free > 0)
            .max_by_key(|(a, free)| (*free, std::cmp::Reverse(a.name.clone())));
        if let Some((agent, _)) = best {
            *used.entry(agent.name.as_str()).or_default() += 1;
            out.push(Kind::AssignStage(AssignStage {
                run_id: run.id.clone(),
                stage: stage.name.clone(),
                attempt: stage.attempts.len() as u32 + 1,
                agent: agent.name.clone(),
                lease_until_ms: input.now_ms + input.lease_ms,
                term: input.term,
            }));
        }
    }
    out
}
