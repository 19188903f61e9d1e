//! The link to the cluster: one lazily built mutual-TLS `Channel` per endpoint (reused for every
//! call), the choice of endpoint (try in order, follow a follower's `cd-leader` hint), the held
//! `Attach` stream with its reconnect loop, and the unary calls behind [`AgentApi`].

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cd_common::tls::{TlsPaths, client_tls};
use cd_proto::v1::agent_service_client::AgentServiceClient;
use cd_proto::v1::{
    AgentMessage, AttemptRef, ConnectRequest, HeartbeatRequest, HeartbeatResponse, LogAck,
    LogChunk, PushLogsRequest, ReportResultRequest, StageResult, StartAttemptRequest,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Response, Status};
use tracing::{debug, error, info, warn};

use crate::AgentError;
use crate::logship::LogSink;
use crate::util::Backoff;

/// Metadata key a follower uses to name the leader.
pub const LEADER_METADATA: &str = "cd-leader";
/// Longest wait for one unary call.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The unary calls stage tasks and the heartbeat make; implemented by [`Connection`], faked in
/// tests.
pub trait AgentApi: Send + Sync + 'static {
    fn start_attempt(&self, attempt: AttemptRef)
    -> impl Future<Output = Result<(), Status>> + Send;
    fn report_result(
        &self,
        attempt: AttemptRef,
        result: StageResult,
    ) -> impl Future<Output = Result<(), Status>> + Send;
    fn heartbeat(
        &self,
        running: Vec<AttemptRef>,
    ) -> impl Future<Output = Result<HeartbeatResponse, Status>> + Send;
}

/// Whether the coordinator refused a call because the attempt is no longer live.
pub fn is_refused(status: &Status) -> bool {
    matches!(status.code(), Code::FailedPrecondition | Code::NotFound)
}

/// A status with its whole error chain, so certificate problems are visible in the log.
pub fn describe(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        let part = err.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = err.source();
    }
    text
}

struct Slot {
    url: String,
    host: String,
    channel: Option<Channel>,
}

struct State {
    slots: Vec<Slot>,
    current: usize,
}

/// Channels to the coordinators and which one is in use. Shared by every task of the agent.
pub struct Connection {
    agent: String,
    tls: TlsPaths,
    state: Mutex<State>,
}

impl Connection {
    /// Checks every endpoint address; no connection is made yet.
    pub fn new(agent: &str, endpoints: &[String], tls: TlsPaths) -> Result<Self, AgentError> {
        let mut slots = Vec::new();
        for url in endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let host = host_of(url).map_err(|message| AgentError::Endpoint {
                endpoint: url.to_string(),
                message,
            })?;
            slots.push(Slot {
                url: url.trim_end_matches('/').to_string(),
                host,
                channel: None,
            });
        }
        if slots.is_empty() {
            return Err(AgentError::Config("no coordinator endpoint given".into()));
        }
        Ok(Self {
            agent: agent.to_string(),
            tls,
            state: Mutex::new(State { slots, current: 0 }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoint in use and a client on its (cached) channel.
    pub fn client(&self) -> Result<(String, AgentServiceClient<Channel>), Status> {
        let mut state = self.lock();
        let current = state.current;
        let slot = &mut state.slots[current];
        if slot.channel.is_none() {
            slot.channel = Some(self.channel(slot)?);
        }
        let channel = slot
            .channel
            .clone()
            .ok_or_else(|| Status::internal("no channel"))?;
        Ok((slot.url.clone(), AgentServiceClient::new(channel)))
    }

    fn channel(&self, slot: &Slot) -> Result<Channel, Status> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            Status::unavailable(format!("{what} for {}: {e}", slot.url))
        };
        let tls =
            client_tls(&self.tls, &slot.host).map_err(|e| unavailable("TLS configuration", &e))?;
        let endpoint = Endpoint::from_shared(slot.url.clone())
            .map_err(|e| unavailable("endpoint", &e))?
            .tls_config(tls)
            .map_err(|e| unavailable("TLS configuration", &e))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_lazy())
    }

    /// After a failed call to `url`: follow a `cd-leader` hint, or move on to the next endpoint
    /// when the node is unreachable. Only the endpoint still in use is moved away from, so
    /// concurrent failures do not skip past a good node.
    pub fn note_failure(&self, url: &str, status: &Status) {
        if !matches!(status.code(), Code::Unavailable | Code::Unknown) {
            return;
        }
        let mut state = self.lock();
        let current = state.current;
        if state.slots[current].url != url {
            return;
        }
        let hint = status
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(leader_url)
            .filter(|hint| hint != url);
        if let Some(hint) = hint {
            if let Some(i) = state.slots.iter().position(|s| s.url == hint) {
                state.current = i;
            } else {
                match host_of(&hint) {
                    Ok(host) => {
                        state.slots.push(Slot {
                            url: hint.clone(),
                            host,
                            channel: None,
                        });
                        state.current = state.slots.len() - 1;
                    }
                    Err(e) => {
                        warn!(hint = %hint, error = %e, "ignoring an unusable leader hint");
                        return;
                    }
                }
            }
            info!(from = %url, leader = %hint, "following the leader hint");
            return;
        }
        state.current = (current + 1) % state.slots.len();
        let next = &state.slots[state.current].url;
        if next != url {
            info!(from = %url, to = %next, "trying the next coordinator endpoint");
        }
    }

    /// Runs one unary call on the current endpoint with a timeout, noting failures.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: FnOnce(AgentServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let (url, client) = self.client()?;
        let status = match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => status,
            Err(_) => Status::unavailable(format!("no answer from {url} within {CALL_TIMEOUT:?}")),
        };
        self.note_failure(&url, &status);
        Err(status)
    }

    /// Holds the `Attach` stream, handing each message to `on_message`, and reconnects with
    /// jittered backoff (100 ms doubling to 5 s) until `stop` fires. Never fatal.
    pub async fn attach_loop(
        self: Arc<Self>,
        request: ConnectRequest,
        mut on_message: impl FnMut(AgentMessage) + Send,
        stop: CancellationToken,
    ) {
        let mut backoff = Backoff::standard();
        loop {
            let (url, status) = tokio::select! {
                _ = stop.cancelled() => return,
                ended = self.attach_once(&request, &mut on_message, &mut backoff) => ended,
            };
            self.note_failure(&url, &status);
            let delay = backoff.next_delay();
            if status.code() == Code::Ok {
                warn!(endpoint = %url, retry_in = ?delay, "assignment stream ended; reconnecting");
            } else {
                error!(endpoint = %url, error = %describe(&status), retry_in = ?delay,
                    "cannot hold the assignment stream; reconnecting");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attach: returns the endpoint and why the stream ended (`Code::Ok` for a clean end).
    async fn attach_once(
        &self,
        request: &ConnectRequest,
        on_message: &mut (impl FnMut(AgentMessage) + Send),
        backoff: &mut Backoff,
    ) -> (String, Status) {
        let (url, mut client) = match self.client() {
            Ok(c) => c,
            Err(status) => {
                let state = self.lock();
                return (state.slots[state.current].url.clone(), status);
            }
        };
        debug!(endpoint = %url, "attaching");
        let mut stream = match client.attach(request.clone()).await {
            Ok(response) => response.into_inner(),
            Err(status) => return (url, status),
        };
        info!(endpoint = %url, "attached; waiting for assignments");
        backoff.reset();
        loop {
            match stream.message().await {
                Ok(Some(message)) => on_message(message),
                Ok(None) => return (url, Status::new(Code::Ok, "stream ended")),
                Err(status) => return (url, status),
            }
        }
    }
}

impl AgentApi for Connection {
    async fn start_attempt(&self, attempt: AttemptRef) -> Result<(), Status> {
        let request = StartAttemptRequest {
            agent: self.agent.clone(),
            attempt: Some(attempt),
        };
        self.call(|mut c| async move { c.start_attempt(request).await })
            .await
            .map(|_| ())
    }

    async fn report_result(&self, attempt: AttemptRef, result: StageResult) -> Result<(), Status> {
        let request = ReportResultRequest {
            agent: self.agent.clone(),
            attempt: Some(attempt),
            result: Some(result),
        };
        self.call(|mut c| async move { c.report_result(request).await })
            .await
            .map(|_| ())
    }

    async fn heartbeat(&self, running: Vec<AttemptRef>) -> Result<HeartbeatResponse, Status> {
        let request = HeartbeatRequest {
            agent: self.agent.clone(),
            running,
        };
        self.call(|mut c| async move { c.heartbeat(request).await })
            .await
    }
}

impl LogSink for Connection {
    async fn push(&self, chunks: Vec<LogChunk>) -> Result<Vec<LogAck>, Status> {
        let request = PushLogsRequest {
            agent: self.agent.clone(),
            chunks,
        };
        self.call(|mut c| async move { c.push_logs(request).await })
            .await
            .map(|r| r.acks)
    }
}

/// The address in a leader hint: a URL, or `host:port` (taken as https). A hint that is not an
/// address (a bare node id) gives `None`, and the next configured endpoint is tried instead.
fn leader_url(text: &str) -> Option<String> {
    let text = text.trim().trim_end_matches('/');
    if text.contains("://") {
        return Some(text.to_string());
    }
    let (_, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    Some(format!("https://{text}"))
}

/// The host name the server certificate is checked against.
fn host_of(url: &str) -> Result<String, String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(other) => return Err(format!("scheme {other}: only https is supported")),
        None => return Err("missing https:// scheme".into()),
    }
    let host = uri.host().ok_or_else(|| "missing host".to_string())?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn conn(endpoints: &[&str]) -> Connection {
        let tls = TlsPaths {
            ca: "ca.pem".into(),
            cert: "a.pem".into(),
            key: "a.key".into(),
        };
        let endpoints: Vec<String> = endpoints.iter().map(|s| s.to_string()).collect();
        Connection::new("a1", &endpoints, tls).expect("valid endpoints")
    }

    fn current(c: &Connection) -> String {
        let state = c.lock();
        state.slots[state.current].url.clone()
    }

    #[test]
    fn endpoints_are_checked_and_hosts_extracted() {
        assert_eq!(
            host_of("https://127.0.0.1:7400").as_deref(),
            Ok("127.0.0.1")
        );
        assert_eq!(host_of("https://[::1]:7400").as_deref(), Ok("::1"));
        assert_eq!(
            host_of("https://node-2.local:7400").as_deref(),
            Ok("node-2.local")
        );
        assert!(host_of("http://127.0.0.1:7400").is_err());
        assert!(host_of("127.0.0.1:7400").is_err());
        let tls = TlsPaths {
            ca: "c".into(),
            cert: "c".into(),
            key: "k".into(),
        };
        assert!(Connection::new("a", &["ftp://x".into()], tls.clone()).is_err());
        assert!(Connection::new("a", &[], tls).is_err());
    }

    #[test]
    fn unavailable_rotates_and_leader_hint_is_followed() {
        let c = conn(&["https://127.0.0.1:7401", "https://127.0.0.1:7402"]);
        assert_eq!(current(&c), "https://127.0.0.1:7401");

        // Not a routing problem: stay.
        c.note_failure("https://127.0.0.1:7401", &Status::permission_denied("no"));
        assert_eq!(current(&c), "https://127.0.0.1:7401");

        // Unreachable: next endpoint, wrapping around.
        c.note_failure("https://127.0.0.1:7401", &Status::unavailable("down"));
        assert_eq!(current(&c), "https://127.0.0.1:7402");
        // A late failure from the old endpoint does not move us again.
        c.note_failure("https://127.0.0.1:7401", &Status::unavailable("down"));
        assert_eq!(current(&c), "https://127.0.0.1:7402");

        // A follower names a leader we did not know.
        let mut status = Status::unavailable("not the leader");
        status.metadata_mut().insert(
            LEADER_METADATA,
            MetadataValue::from_static("127.0.0.1:7403"),
        );
        c.note_failure("https://127.0.0.1:7402", &status);
        assert_eq!(current(&c), "https://127.0.0.1:7403");

        // ... and one we know.
        let mut status = Status::unavailable("not the leader");
        status.metadata_mut().insert(
            LEADER_METADATA,
            MetadataValue::from_static("https://127.0.0.1:7401/"),
        );
        c.note_failure("https://127.0.0.1:7403", &status);
        assert_eq!(current(&c), "https://127.0.0.1:7401");
        assert_eq!(c.lock().slots.len(), 3);

        // A hint that names a node id rather than an address: just try the next endpoint.
        let mut status = Status::unavailable("not the leader; node 2 is");
        status
            .metadata_mut()
            .insert(LEADER_METADATA, MetadataValue::from_static("2"));
        c.note_failure("https://127.0.0.1:7401", &status);
        assert_eq!(current(&c), "https://127.0.0.1:7402");
        assert_eq!(c.lock().slots.len(), 3);
    }

    #[test]
    fn refusals_are_recognised() {
        assert!(is_refused(&Status::failed_precondition("stale")));
        assert!(is_refused(&Status::not_found("gone")));
        assert!(!is_refused(&Status::unavailable("down")));
    }
}
