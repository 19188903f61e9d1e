//! An in-process fake coordinator for unit tests: it implements [`AgentApi`] and [`LogSink`]
//! the way the real one behaves (logs kept in seq order, duplicates dropped, gaps not acked) and
//! can be told to fail, hold back acks, or call an attempt stale.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use cd_proto::v1::{AttemptRef, HeartbeatResponse, LogAck, LogChunk, StageResult};
use tonic::Status;

use crate::connection::AgentApi;
use crate::logship::LogSink;
use crate::registry::AttemptKey;

#[derive(Default)]
struct State {
    heartbeat: HeartbeatResponse,
    heartbeats: Vec<Vec<AttemptRef>>,
    started: Vec<AttemptRef>,
    results: Vec<(AttemptRef, StageResult)>,
    pushes: Vec<Vec<LogChunk>>,
    /// Durable log per attempt, contiguous from seq 0.
    logs: HashMap<AttemptKey, Vec<LogChunk>>,
    /// Fail this many pushes (UNAVAILABLE) before accepting any.
    fail_pushes: usize,
    /// Accept at most this many new chunks per attempt per push.
    accept_per_push: Option<usize>,
    stale: HashSet<AttemptKey>,
    refuse_start: bool,
    /// Reject this many results with INVALID_ARGUMENT.
    invalid_results: usize,
}

#[derive(Default)]
pub struct FakeApi {
    state: Mutex<State>,
}

impl FakeApi {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_heartbeat(&self, response: HeartbeatResponse) {
        self.lock().heartbeat = response;
    }
    pub fn heartbeats(&self) -> Vec<Vec<AttemptRef>> {
        self.lock().heartbeats.clone()
    }
    pub fn fail_pushes(&self, n: usize) {
        self.lock().fail_pushes = n;
    }
    pub fn accept_per_push(&self, n: usize) {
        self.lock().accept_per_push = Some(n);
    }
    pub fn mark_stale(&self, key: &AttemptKey) {
        self.lock().stale.insert(key.clone());
    }
    pub fn refuse_start(&self) {
        self.lock().refuse_start = true;
    }
    pub fn reject_results(&self, n: usize) {
        self.lock().invalid_results = n;
    }
    pub fn started(&self) -> Vec<AttemptRef> {
        self.lock().started.clone()
    }
    pub fn results(&self) -> Vec<(AttemptRef, StageResult)> {
        self.lock().results.clone()
    }
    pub fn pushes(&self) -> Vec<Vec<LogChunk>> {
        self.lock().pushes.clone()
    }
    /// The durable chunks of an attempt, in seq order.
    pub fn chunks(&self, key: &AttemptKey) -> Vec<LogChunk> {
        self.lock().logs.get(key).cloned().unwrap_or_default()
    }
    /// The durable log of an attempt as text.
    pub fn log_text(&self, key: &AttemptKey) -> String {
        let bytes: Vec<u8> = self.chunks(key).into_iter().flat_map(|c| c.data).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl AgentApi for FakeApi {
    async fn start_attempt(&self, attempt: AttemptRef) -> Result<(), Status> {
        let mut state = self.lock();
        if state.refuse_start {
            return Err(Status::failed_precondition("attempt is stale"));
        }
        state.started.push(attempt);
        Ok(())
    }

    async fn report_result(&self, attempt: AttemptRef, result: StageResult) -> Result<(), Status> {
        let mut state = self.lock();
        if state.invalid_results > 0 {
            state.invalid_results -= 1;
            return Err(Status::invalid_argument("result.metrics: too many"));
        }
        state.results.push((attempt, result));
        Ok(())
    }

    async fn heartbeat(&self, running: Vec<AttemptRef>) -> Result<HeartbeatResponse, Status> {
        let mut state = self.lock();
        state.heartbeats.push(running);
        Ok(state.heartbeat.clone())
    }
}

impl LogSink for FakeApi {
    async fn push(&self, chunks: Vec<LogChunk>) -> Result<Vec<LogAck>, Status> {
        // Decoded as the coordinator does, so tests see the bytes the stage printed.
        let mut decoded = Vec::with_capacity(chunks.len());
        for mut c in chunks {
            c.data = cd_common::logcodec::decode(&c.data, c.encoding, usize::MAX)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            c.encoding = cd_common::logcodec::RAW;
            decoded.push(c);
        }
        let chunks = decoded;
        let mut state = self.lock();
        state.pushes.push(chunks.clone());
        if state.fail_pushes > 0 {
            state.fail_pushes -= 1;
            return Err(Status::unavailable("coordinator restarting"));
        }
        let mut accepted: HashMap<AttemptKey, usize> = HashMap::new();
        let mut order = Vec::new();
        for chunk in chunks {
            let Some(key) = chunk.attempt.as_ref().map(AttemptKey::from) else {
                continue;
            };
            if !order.contains(&key) {
                order.push(key.clone());
            }
            if state.stale.contains(&key) {
                continue;
            }
            let limit = state.accept_per_push.unwrap_or(usize::MAX);
            let taken = accepted.entry(key.clone()).or_default();
            let log = state.logs.entry(key).or_default();
            if chunk.seq == log.len() as u64 && *taken < limit {
                log.push(chunk);
                *taken += 1;
            }
        }
        Ok(order
            .into_iter()
            .map(|key| LogAck {
                attempt: Some(key.to_ref()),
                next_seq: state.logs.get(&key).map_or(0, |l| l.len() as u64),
                stale: state.stale.contains(&key),
            })
            .collect())
    }
}
