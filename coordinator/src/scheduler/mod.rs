//! Leader-only scheduling: matches queued stages to connected agents by labels and free slots,
//! expires lapsed leases and timed-out attempts. It only proposes commands; an assignment
//! exists once applied, and the agent API pushes it then.

mod plan;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub use plan::{PlanInput, plan};

use crate::api::Sessions;
use crate::raft::{ProposeError, RaftHandle};
use crate::state::Event;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub lease: Duration,
    /// How often leases and timeouts are checked when nothing else happens.
    pub tick: Duration,
}

pub async fn run(
    node: RaftHandle,
    sessions: Sessions,
    cfg: SchedulerConfig,
    shutdown: CancellationToken,
) {
    let mut events = node.subscribe();
    let mut ticker = tokio::time::interval(cfg.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut leader_since: Option<i64> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            _ = sessions.changed.notified() => {}
            ev = events.recv() => match ev {
                Ok(ev) if !matches!(ev.event, Event::StageQueued) => continue,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
        let now = cd_common::time::now_ms();
        if !node.is_leader() {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(|| {
            info!("scheduling as leader");
            now
        });
        let connected: BTreeSet<String> = sessions.connected().into_iter().collect();
        let lease_ms = cfg.lease.as_millis() as i64;
        let input = PlanInput {
            connected: &connected,
            now_ms: now,
            lease_ms,
            may_expire: now >= since + lease_ms,
            term: node.status().borrow().term,
        };
        let proposals = node.read(|st| plan(st, &input));
        if proposals.is_empty() {
            continue;
        }
        debug!(count = proposals.len(), "scheduler proposing");
        let results = join_all(proposals.into_iter().map(|k| node.propose(k))).await;
        for r in results {
            match r {
                Ok(_) | Err(ProposeError::Rejected(_)) => {}
                Err(e) => debug!(error = %e, "scheduler proposal not applied"),
            }
        }
    }
}
