//! The table of attempts this agent holds: which are live (with their cancellation handles) and
//! which finished recently, so a re-sent assignment is never run twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cd_proto::v1::AttemptRef;
use tokio_util::sync::CancellationToken;

/// How many finished attempts are remembered to ignore re-sent assignments.
const FINISHED_MEMORY: usize = 4096;

/// Identifies one attempt: (run id, stage, attempt number), with the fencing token (the Raft
/// term of the grant) that every claim about it must echo.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptKey {
    pub run_id: String,
    pub stage: String,
    pub attempt: u32,
    pub fencing_term: u64,
}

impl AttemptKey {
    pub fn to_ref(&self) -> AttemptRef {
        AttemptRef {
            run_id: self.run_id.clone(),
            stage: self.stage.clone(),
            attempt: self.attempt,
            fencing_term: self.fencing_term,
        }
    }
}

impl From<&AttemptRef> for AttemptKey {
    fn from(r: &AttemptRef) -> Self {
        Self {
            run_id: r.run_id.clone(),
            stage: r.stage.clone(),
            attempt: r.attempt,
            fencing_term: r.fencing_term,
        }
    }
}

impl fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.run_id, self.stage, self.attempt)
    }
}

/// Why an attempt's token fired. The first reason wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelReason {
    /// The coordinator sent `Cancel`.
    Server(String),
    /// A heartbeat or log ack said the coordinator no longer considers the attempt live.
    Stale,
    /// The assignment's `timeout_ms` elapsed.
    Timeout(u64),
    /// The agent is shutting down.
    Shutdown,
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server(r) if r.is_empty() => write!(f, "cancelled by the coordinator"),
            Self::Server(r) => write!(f, "cancelled by the coordinator: {r}"),
            Self::Stale => write!(f, "the coordinator no longer considers this attempt live"),
            Self::Timeout(ms) => write!(f, "timed out after {}", crate::format_ms(*ms)),
            Self::Shutdown => write!(f, "the agent is shutting down"),
        }
    }
}

/// One attempt's cancellation handle: a token that every source fires, plus the first reason.
#[derive(Debug, Clone, Default)]
pub struct AttemptControl {
    token: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
}

impl AttemptControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `reason` (unless one is already recorded) and fires the token. Idempotent.
    pub fn cancel(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The reason the token fired, if it did.
    pub fn reason(&self) -> Option<&CancelReason> {
        self.reason.get()
    }
}

#[derive(Default)]
struct Inner {
    live: HashMap<AttemptKey, AttemptControl>,
    finished: HashSet<AttemptKey>,
    finished_order: VecDeque<AttemptKey>,
    closed: bool,
}

/// Shared by the attach loop (adds, cancels), heartbeat (lists, cancels) and stage tasks.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The table stays consistent even if a holder panicked: every update is one statement.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `key` for a new stage task. `None` if it is running, finished recently, or the
    /// agent is shutting down.
    pub fn try_begin(&self, key: &AttemptKey) -> Option<AttemptControl> {
        let mut inner = self.lock();
        if inner.closed || inner.live.contains_key(key) || inner.finished.contains(key) {
            return None;
        }
        let control = AttemptControl::new();
        inner.live.insert(key.clone(), control.clone());
        Some(control)
    }

    /// Fires the token of a live attempt. Returns whether the attempt was live.
    pub fn cancel(&self, key: &AttemptKey, reason: CancelReason) -> bool {
        let control = self.lock().live.get(key).cloned();
        match control {
            Some(c) => {
                c.cancel(reason);
                true
            }
            None => false,
        }
    }

    /// Moves `key` from live to finished.
    pub fn finish(&self, key: &AttemptKey) {
        let mut inner = self.lock();
        inner.live.remove(key);
        if inner.finished.insert(key.clone()) {
            inner.finished_order.push_back(key.clone());
        }
        while inner.finished_order.len() > FINISHED_MEMORY {
            if let Some(old) = inner.finished_order.pop_front() {
                inner.finished.remove(&old);
            }
        }
    }

    /// Attempts held right now (waiting for a slot, running, or delivering logs and result).
    pub fn live(&self) -> Vec<AttemptKey> {
        let mut keys: Vec<_> = self.lock().live.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Refuses new attempts from now on and cancels every live one with `reason`.
    pub fn close(&self, reason: CancelReason) {
        let controls: Vec<_> = {
            let mut inner = self.lock();
            inner.closed = true;
            inner.live.values().cloned().collect()
        };
        for c in controls {
            c.cancel(reason.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> AttemptKey {
        AttemptKey {
            run_id: "r1".into(),
            stage: "build".into(),
            attempt: n,
            fencing_term: 0,
        }
    }

    #[test]
    fn an_attempt_runs_once_and_first_reason_wins() {
        let reg = Registry::new();
        let c = reg.try_begin(&key(1)).expect("new attempt");
        assert!(reg.try_begin(&key(1)).is_none(), "running");
        assert!(reg.cancel(&key(1), CancelReason::Timeout(2000)));
        assert!(reg.cancel(&key(1), CancelReason::Shutdown));
        assert!(c.token().is_cancelled());
        assert_eq!(c.reason(), Some(&CancelReason::Timeout(2000)));
        reg.finish(&key(1));
        assert!(reg.try_begin(&key(1)).is_none(), "finished");
        assert!(!reg.cancel(&key(1), CancelReason::Stale));
        assert!(
            reg.try_begin(&key(2)).is_some(),
            "a new attempt number runs"
        );
        reg.close(CancelReason::Shutdown);
        assert!(reg.try_begin(&key(3)).is_none(), "closed");
        assert_eq!(reg.live(), vec![key(2)]);
    }
}
