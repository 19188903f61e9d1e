//! Log shipping: stage output becomes numbered chunks that are batched into `PushLogs` calls.
//!
//! Stage tasks write bytes through an [`AttemptLog`] into one bounded queue. A single shipper
//! task owns all per-attempt state:
//!
//! - it cuts each attempt's bytes into chunks of at most `chunk_bytes`, numbered 0, 1, 2, ...
//!   with no gaps, and LZ4-compresses each as it is cut (`cd_common::logcodec`), so that work
//!   overlaps the request in flight;
//! - it flushes when `batch_bytes` of new data have arrived or `flush_interval` (jittered ±20%)
//!   after data first waits, sending the unacknowledged chunks in requests of at most
//!   `batch_bytes` and `batch_chunks`, one request in flight so the coordinator sees them in
//!   order; it keeps taking output while a request is out, so the next batch is ready when the
//!   answer comes (production and shipping overlap instead of taking turns);
//! - it keeps every chunk until a `LogAck` with `next_seq > seq` covers it. Chunks that a
//!   response did not acknowledge, or that a failed call carried, are sent again on the next flush
//!   (failures back off exponentially); the coordinator drops duplicates by seq;
//! - a `stale` ack drops the attempt's chunks and cancels the attempt;
//! - [`AttemptLog::finish`] resolves once every chunk of the attempt is acknowledged, so the
//!   result is only reported after the log is complete.
//!
//! Backpressure: while more than `max_buffered` bytes wait for acks the shipper stops reading the
//! queue, writers block, and so does the stage's output pipe.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cd_common::secrets::Masker;
use cd_proto::v1::{LogAck, LogChunk};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::registry::{AttemptControl, AttemptKey, CancelReason};
use crate::util::{Backoff, jitter};

/// Where batches go: the coordinator's `PushLogs` in production, a fake in tests.
pub trait LogSink: Send + Sync + 'static {
    /// Sends one batch and returns the coordinator's acks.
    fn push(
        &self,
        chunks: Vec<LogChunk>,
    ) -> impl Future<Output = Result<Vec<LogAck>, tonic::Status>> + Send;
}

/// Sizes and timings of the shipper.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Largest chunk (32 KiB).
    pub chunk_bytes: usize,
    /// Largest request, and the amount of new data that triggers a flush (2 MiB: with one
    /// request in flight, each a Raft commit, throughput is this much per commit round trip).
    pub batch_bytes: usize,
    /// Most chunks in one request (the coordinator refuses more than 1024).
    pub batch_chunks: usize,
    /// Longest time data waits before a flush (100 ms, jittered ±20%).
    pub flush_interval: Duration,
    /// Bytes held (pending or unacknowledged) before the shipper stops taking more (8 MiB).
    pub max_buffered: usize,
    /// Capacity of the queue from stage tasks to the shipper, in messages.
    pub queue: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            chunk_bytes: 32 * 1024,
            batch_bytes: 2 * 1024 * 1024,
            batch_chunks: 256,
            flush_interval: Duration::from_millis(100),
            max_buffered: 8 * 1024 * 1024,
            queue: 256,
        }
    }
}

/// The one `PushLogs` in flight.
type Push = Pin<Box<dyn Future<Output = Result<Vec<LogAck>, tonic::Status>> + Send>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("the coordinator no longer considers this attempt live; its log was dropped")]
    Stale,
    #[error("the log shipper has stopped")]
    Closed,
}

enum Msg {
    Open {
        key: AttemptKey,
        control: AttemptControl,
    },
    Data {
        key: AttemptKey,
        data: Vec<u8>,
    },
    Finish {
        key: AttemptKey,
        done: oneshot::Sender<Result<(), LogError>>,
    },
    Abandon {
        key: AttemptKey,
    },
}

/// Cloneable handle to the shipper; opens one [`AttemptLog`] per attempt.
#[derive(Clone)]
pub struct LogHandle {
    tx: mpsc::Sender<Msg>,
}

impl LogHandle {
    /// Starts the log of an attempt; `control` is cancelled if an ack reports it stale.
    pub async fn open(
        &self,
        key: AttemptKey,
        control: AttemptControl,
    ) -> Result<AttemptLog, LogError> {
        self.tx
            .send(Msg::Open {
                key: key.clone(),
                control,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        Ok(AttemptLog {
            key,
            tx: self.tx.clone(),
            masker: None,
        })
    }
}

/// The writing end of one attempt's log.
pub struct AttemptLog {
    key: AttemptKey,
    tx: mpsc::Sender<Msg>,
    /// Replaces the stage's secret values with `***` before anything is queued; holds back a
    /// possible start of a value until the next write or `finish`.
    masker: Option<std::sync::Mutex<Masker>>,
}

impl AttemptLog {
    /// From now on, masks these values (the stage's secrets) in everything written.
    pub fn mask(&mut self, values: Vec<Vec<u8>>) {
        let masker = Masker::new(values);
        self.masker = (!masker.is_empty()).then(|| std::sync::Mutex::new(masker));
    }

    /// Appends bytes; waits while the shipper's buffer is full.
    pub async fn write(&self, data: Vec<u8>) -> Result<(), LogError> {
        let data = match &self.masker {
            Some(m) => m.lock().unwrap_or_else(|e| e.into_inner()).push(&data),
            None => data,
        };
        self.send(data).await
    }

    async fn send(&self, data: Vec<u8>) -> Result<(), LogError> {
        if data.is_empty() {
            return Ok(());
        }
        let key = self.key.clone();
        self.tx
            .send(Msg::Data { key, data })
            .await
            .map_err(|_| LogError::Closed)
    }

    /// Appends a line from the agent itself (`[cd-agent] ...`), ignoring a stopped shipper.
    pub async fn note(&self, text: &str) {
        let _ = self
            .write(format!("[cd-agent] {text}\n").into_bytes())
            .await;
    }

    /// Closes the log and waits until every chunk is acknowledged.
    pub async fn finish(self) -> Result<(), LogError> {
        if let Some(m) = &self.masker {
            let rest = m.lock().unwrap_or_else(|e| e.into_inner()).finish();
            self.send(rest).await?;
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Finish {
                key: self.key,
                done,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        wait.await.map_err(|_| LogError::Closed)?
    }

    /// Drops whatever of the log was not acknowledged yet (the coordinator refused the attempt).
    pub async fn abandon(self) {
        let _ = self.tx.send(Msg::Abandon { key: self.key }).await;
    }
}

/// Starts the shipper task. It runs until `stop` fires, or until every handle is dropped and
/// everything it holds has been acknowledged.
pub fn spawn<S: LogSink>(
    sink: Arc<S>,
    config: LogConfig,
    stop: CancellationToken,
) -> (LogHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let shipper = Shipper {
        sink,
        config,
        attempts: BTreeMap::new(),
        buffered: 0,
        fresh: 0,
        flush_at: None,
        retrying: false,
        backoff: Backoff::standard(),
    };
    let task = tokio::spawn(shipper.run(rx, stop));
    (LogHandle { tx }, task)
}

struct AttemptState {
    control: AttemptControl,
    /// Bytes not yet cut into a chunk (always shorter than `chunk_bytes`).
    pending: Vec<u8>,
    next_seq: u64,
    /// Cut chunks waiting for an ack, in seq order.
    unacked: VecDeque<Cut>,
    finishing: Option<oneshot::Sender<Result<(), LogError>>>,
    stale: bool,
}

/// A chunk as it will be sent, compressed when it is cut (while the previous request is out)
/// rather than when a request is built, which would add the compression to every round trip.
struct Cut {
    chunk: LogChunk,
    /// Its bytes before compression: what the batch and buffer limits count.
    raw_len: usize,
}

impl AttemptState {
    fn cut(&mut self, key: &AttemptKey, chunk_bytes: usize, all: bool) {
        while self.pending.len() >= chunk_bytes || (all && !self.pending.is_empty()) {
            let take = self.pending.len().min(chunk_bytes);
            let rest = self.pending.split_off(take);
            let raw = std::mem::replace(&mut self.pending, rest);
            let (data, encoding) = cd_common::logcodec::encode(&raw);
            self.unacked.push_back(Cut {
                chunk: LogChunk {
                    attempt: Some(key.to_ref()),
                    seq: self.next_seq,
                    data,
                    encoding,
                },
                raw_len: raw.len(),
            });
            self.next_seq += 1;
        }
    }

    fn held_bytes(&self) -> usize {
        self.pending.len() + self.unacked.iter().map(|c| c.raw_len).sum::<usize>()
    }

    fn is_drained(&self) -> bool {
        self.pending.is_empty() && self.unacked.is_empty()
    }
}

struct Shipper<S> {
    sink: Arc<S>,
    config: LogConfig,
    attempts: BTreeMap<AttemptKey, AttemptState>,
    /// Bytes held across all attempts (pending + unacknowledged).
    buffered: usize,
    /// Bytes that arrived since the last flush.
    fresh: usize,
    /// When the next flush (or retry) is due; `None` while nothing waits.
    flush_at: Option<Instant>,
    /// A push failed: nothing is sent before `flush_at`, whatever arrives meanwhile.
    retrying: bool,
    backoff: Backoff,
}

impl<S: LogSink> Shipper<S> {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, stop: CancellationToken) {
        let mut open = true;
        let mut inflight: Option<Push> = None;
        loop {
            if !open && self.attempts.is_empty() && inflight.is_none() {
                return;
            }
            let take = open && self.buffered < self.config.max_buffered;
            // A flush falls due only between requests; one that comes due meanwhile waits.
            let due = if inflight.is_none() {
                self.flush_at
            } else {
                None
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                answer = async { inflight.as_mut().expect("guarded by the condition").await },
                    if inflight.is_some() =>
                {
                    inflight = None;
                    self.answered(answer);
                }
                msg = rx.recv(), if take => match msg {
                    Some(msg) => self.handle(msg),
                    None => open = false,
                },
                _ = wait_until(due) => inflight = self.start_push(),
            }
            if inflight.is_none() && self.fresh >= self.config.batch_bytes && !self.retrying {
                inflight = self.start_push();
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Open { key, control } => {
                self.attempts.entry(key).or_insert_with(|| AttemptState {
                    control,
                    pending: Vec::new(),
                    next_seq: 0,
                    unacked: VecDeque::new(),
                    finishing: None,
                    stale: false,
                });
            }
            Msg::Data { key, data } => {
                let Some(state) = self.attempts.get_mut(&key) else {
                    debug!(attempt = %key, "log data for an attempt that is not open; dropped");
                    return;
                };
                if state.stale || state.finishing.is_some() {
                    return;
                }
                self.buffered += data.len();
                self.fresh += data.len();
                state.pending.extend_from_slice(&data);
                state.cut(&key, self.config.chunk_bytes, false);
                self.schedule(jitter(self.config.flush_interval, 0.2));
            }
            Msg::Finish { key, done } => {
                let Some(state) = self.attempts.get_mut(&key) else {
                    let _ = done.send(Ok(()));
                    return;
                };
                state.finishing = Some(done);
                if !state.is_drained() {
                    self.schedule(Duration::ZERO);
                }
                self.settle();
            }
            Msg::Abandon { key } => {
                if let Some(state) = self.attempts.remove(&key) {
                    self.buffered -= state.held_bytes();
                }
            }
        }
    }

    /// Makes sure a flush happens within `after` (an earlier one stays).
    fn schedule(&mut self, after: Duration) {
        if self.retrying {
            return; // the retry time stands
        }
        let at = Instant::now() + after;
        self.flush_at = Some(self.flush_at.map_or(at, |cur| cur.min(at)));
    }

    /// Starts one request with the oldest unacknowledged chunks (at most `batch_bytes` and
    /// `batch_chunks`), or returns `None` when there is nothing to send.
    fn start_push(&mut self) -> Option<Push> {
        self.flush_at = None;
        self.fresh = 0;
        self.retrying = false;
        let chunk_bytes = self.config.chunk_bytes;
        let mut batch = Vec::new();
        let mut bytes = 0;
        'attempts: for (key, state) in &mut self.attempts {
            state.cut(key, chunk_bytes, true);
            for cut in &state.unacked {
                let full = bytes + cut.raw_len > self.config.batch_bytes
                    || batch.len() >= self.config.batch_chunks;
                if !batch.is_empty() && full {
                    break 'attempts;
                }
                bytes += cut.raw_len;
                batch.push(cut.chunk.clone());
            }
        }
        if batch.is_empty() {
            self.settle();
            return None;
        }
        let sink = self.sink.clone();
        Some(Box::pin(async move { sink.push(batch).await }))
    }

    /// Takes a request's answer: drops what it acknowledged, and decides when the next goes.
    fn answered(&mut self, answer: Result<Vec<LogAck>, tonic::Status>) {
        match answer {
            Ok(acks) => {
                self.apply(acks);
                self.backoff.reset();
                self.settle();
                let waiting: usize = self
                    .attempts
                    .values()
                    .flat_map(|s| s.unacked.iter())
                    .map(|c| c.raw_len)
                    .sum();
                let finishing = self
                    .attempts
                    .values()
                    .any(|s| s.finishing.is_some() && !s.is_drained());
                if waiting >= self.config.batch_bytes || finishing {
                    self.schedule(Duration::ZERO);
                } else if self.attempts.values().any(|s| !s.is_drained()) {
                    self.schedule(jitter(self.config.flush_interval, 0.2));
                }
            }
            Err(status) => {
                let delay = self.backoff.next_delay();
                warn!(code = ?status.code(), error = %status.message(), retry_in = ?delay,
                    "pushing logs failed; unacknowledged chunks will be resent");
                self.flush_at = Some(Instant::now() + delay);
                self.retrying = true;
                self.settle();
            }
        }
    }

    fn apply(&mut self, acks: Vec<LogAck>) {
        for ack in acks {
            let Some(key) = ack.attempt.as_ref().map(AttemptKey::from) else {
                continue;
            };
            let Some(state) = self.attempts.get_mut(&key) else {
                continue;
            };
            if ack.stale {
                if !state.stale {
                    warn!(attempt = %key, "coordinator reports the attempt stale; dropping its log and cancelling it");
                }
                self.buffered -= state.held_bytes();
                state.pending.clear();
                state.unacked.clear();
                state.stale = true;
                state.control.cancel(CancelReason::Stale);
                continue;
            }
            while state
                .unacked
                .front()
                .is_some_and(|c| c.chunk.seq < ack.next_seq)
            {
                if let Some(cut) = state.unacked.pop_front() {
                    self.buffered -= cut.raw_len;
                }
            }
        }
    }

    /// Answers `finish` for attempts that are fully acknowledged (or stale) and forgets them.
    fn settle(&mut self) {
        let done: Vec<AttemptKey> = self
            .attempts
            .iter()
            .filter(|(_, s)| s.finishing.is_some() && (s.stale || s.is_drained()))
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            if let Some(mut state) = self.attempts.remove(&key) {
                self.buffered -= state.held_bytes();
                let outcome = if state.stale {
                    Err(LogError::Stale)
                } else {
                    Ok(())
                };
                if let Some(tx) = state.finishing.take() {
                    let _ = tx.send(outcome);
                }
            }
        }
    }
}

async fn wait_until(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "logship_tests.rs"]
mod tests;
