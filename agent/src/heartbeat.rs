//! The heartbeat loop: every interval, tell the coordinator which attempts this agent holds (to
//! keep their leases) and cancel the ones it reports stale.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::connection::{AgentApi, describe};
use crate::registry::{AttemptKey, CancelReason, Registry};

/// Runs until `stop` fires.
pub async fn heartbeat_loop<A: AgentApi>(
    api: Arc<A>,
    registry: Arc<Registry>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let running = registry.live().iter().map(AttemptKey::to_ref).collect();
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = api.heartbeat(running) => answer,
        };
        match answer {
            Ok(response) => {
                if failing {
                    info!("heartbeats are getting through again");
                    failing = false;
                }
                for stale in &response.stale {
                    let key = AttemptKey::from(stale);
                    if registry.cancel(&key, CancelReason::Stale) {
                        warn!(attempt = %key, "the coordinator reports this attempt stale; cancelling it");
                    }
                }
            }
            Err(status) if failing => debug!(error = %describe(&status), "heartbeat failed"),
            Err(status) => {
                warn!(error = %describe(&status), "heartbeat failed; leases may lapse");
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::FakeApi;
    use cd_proto::v1::HeartbeatResponse;

    #[tokio::test]
    async fn stale_attempts_are_cancelled_and_live_ones_reported() {
        let registry = Arc::new(Registry::new());
        let live = AttemptKey {
            run_id: "r".into(),
            stage: "a".into(),
            attempt: 1,
            fencing_term: 0,
        };
        let stale = AttemptKey {
            stage: "b".into(),
            ..live.clone()
        };
        let live_control = registry.try_begin(&live).expect("new");
        let stale_control = registry.try_begin(&stale).expect("new");
        let api = Arc::new(FakeApi::default());
        api.set_heartbeat(HeartbeatResponse {
            lease_until_ms: 0,
            stale: vec![stale.to_ref()],
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(heartbeat_loop(
            api.clone(),
            registry.clone(),
            Duration::from_millis(10),
            stop.clone(),
        ));
        stale_control.token().cancelled().await;
        assert_eq!(stale_control.reason(), Some(&CancelReason::Stale));
        assert!(!live_control.token().is_cancelled());
        let seen = api.heartbeats();
        assert!(seen[0].contains(&live.to_ref()) && seen[0].contains(&stale.to_ref()));
        stop.cancel();
        task.await.expect("heartbeat task");
    }
}
