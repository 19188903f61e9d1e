//! Authorization: one table maps every gRPC method on the listener to the roles allowed to
//! call it, and one tower layer applies it to every request before any service sees it.
//!
//! Deny by default: a method missing from the table is refused, so a new RPC cannot ship
//! without a decision (the unit test below reads every method from the descriptor sets and
//! fails when one has no row). Health and reflection are open to every valid identity of the
//! cluster (they reveal only what `.proto` files and liveness already say).
//!
//! The layer refuses with UNAUTHENTICATED when the certificate carries no valid identity of
//! this cluster (saying why), and PERMISSION_DENIED naming the caller, the method and the roles
//! allowed. The same layer enforces the per-identity write rate limit and the metadata bound
//! (RESOURCE_EXHAUSTED naming the limit). An accepted request carries the caller's [`Identity`] in its extensions, so
//! handlers (agent ownership, audit) read it from there instead of re-parsing the certificate.

use std::sync::Arc;
use std::task::{Context, Poll};

use cd_common::certs::{Identity, Role};
use futures::future::BoxFuture;
use rustls::pki_types::CertificateDer;
use tonic::Status;

use super::conn_info::ConnInfo;

const PEER: &[Role] = &[Role::Coordinator];
const AGENT: &[Role] = &[Role::Agent];
const WRITE: &[Role] = &[Role::Operator];
const READ: &[Role] = &[Role::Viewer, Role::Operator];
/// Joining and re-joining nodes ask the leader to add them with their own certificate.
const MEMBERSHIP: &[Role] = &[Role::Operator, Role::Coordinator];
const ANY: &[Role] = &Role::ALL;

/// Full gRPC method path -> roles allowed to call it, and whether it is a write (counted
/// against the caller's write rate limit). The single source of truth.
pub const TABLE: &[(&str, &[Role], bool)] = &[
    // Operator API: reads for viewers and operators, writes and approvals for operators.
    ("/cd.v1.ControlService/ApplyPipeline", WRITE, true),
    ("/cd.v1.ControlService/ListPipelines", READ, false),
    ("/cd.v1.ControlService/GetPipeline", READ, false),
    ("/cd.v1.ControlService/StartRun", WRITE, true),
    ("/cd.v1.ControlService/GetRun", READ, false),
    ("/cd.v1.ControlService/ListRuns", READ, false),
    ("/cd.v1.ControlService/CancelRun", WRITE, true),
    ("/cd.v1.ControlService/WatchRun", READ, false),
    ("/cd.v1.ControlService/FollowLogs", READ, false),
    ("/cd.v1.ControlService/Approve", WRITE, true),
    ("/cd.v1.ControlService/Reject", WRITE, true),
    ("/cd.v1.ControlService/ListAgents", READ, false),
    ("/cd.v1.ControlService/ListEnvironments", READ, false),
    ("/cd.v1.ControlService/EnvironmentHistory", READ, false),
    ("/cd.v1.ControlService/Rollback", WRITE, true),
    ("/cd.v1.ControlService/OpenIncident", WRITE, true),
    ("/cd.v1.ControlService/ResolveIncident", WRITE, true),
    ("/cd.v1.ControlService/ListIncidents", READ, false),
    ("/cd.v1.ControlService/GetMetrics", READ, false),
    ("/cd.v1.ControlService/Revoke", WRITE, true),
    // Who did what is for operators.
    ("/cd.v1.ControlService/ListAudit", WRITE, false),
    // Secrets: operators set and delete; anyone may list names (never values).
    ("/cd.v1.ControlService/SetSecret", WRITE, true),
    ("/cd.v1.ControlService/DeleteSecret", WRITE, true),
    ("/cd.v1.ControlService/ListSecrets", READ, false),
    // Agent API: agents only; the handlers also check that an agent acts only as itself.
    ("/cd.v1.AgentService/Attach", AGENT, false),
    ("/cd.v1.AgentService/Heartbeat", AGENT, false),
    ("/cd.v1.AgentService/StartAttempt", AGENT, false),
    ("/cd.v1.AgentService/PushLogs", AGENT, false),
    ("/cd.v1.AgentService/ReportResult", AGENT, false),
    // Cluster administration.
    ("/cd.v1.ClusterService/Status", READ, false),
    ("/cd.v1.ClusterService/AddNode", MEMBERSHIP, true),
    ("/cd.v1.ClusterService/RemoveNode", WRITE, true),
    ("/cd.v1.ClusterService/TransferLeader", WRITE, true),
    ("/cd.v1.ClusterService/StateDigest", READ, false),
    ("/cd.v1.ClusterService/SetFaults", WRITE, true),
    // Peer (Raft) traffic between coordinators.
    ("/cd.raft.v1.RaftPeer/Send", PEER, false),
    ("/cd.raft.v1.RaftPeer/InstallSnapshot", PEER, false),
    ("/cd.raft.v1.RaftPeer/Stream", PEER, false),
    // Standard services for third-party tools.
    ("/grpc.health.v1.Health/Check", ANY, false),
    ("/grpc.health.v1.Health/Watch", ANY, false),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ANY,
        false,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ANY,
        false,
    ),
];

/// The roles allowed to call `path`, or `None` when the table has no row for it.
pub fn allowed_roles(path: &str) -> Option<&'static [Role]> {
    TABLE
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, r, _)| *r)
}

/// Whether `path` is a write (rate-limited per identity).
pub fn is_write(path: &str) -> bool {
    TABLE.iter().any(|(p, _, w)| *p == path && *w)
}

/// Whether an identity is refused although its certificate is valid (revocation).
pub type RevokedFn = Arc<dyn Fn(&Identity) -> bool + Send + Sync>;

/// Who may call what: the cluster's trust domain plus the revocation check.
#[derive(Clone)]
pub struct Policy {
    pub trust_domain: String,
    pub revoked: RevokedFn,
    /// Per-identity write rate limit; `None`: unlimited.
    pub writes: Option<Arc<super::rate::WriteLimiter>>,
    /// Largest request metadata (all header names and values), in bytes.
    pub max_metadata: usize,
}

impl Policy {
    /// Decides one call from its method path and the client's verified certificate chain
    /// (parses the leaf; the server itself uses [`Policy::decide_for`] with the identity
    /// parsed once per connection).
    pub fn decide(
        &self,
        path: &str,
        certs: Option<&[CertificateDer<'_>]>,
    ) -> Result<Identity, Status> {
        let leaf = certs
            .and_then(|c| c.first())
            .ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
        let id = cd_common::certs::identity_from_der(leaf.as_ref()).map_err(|e| {
            Status::unauthenticated(format!("the client certificate is refused: {e}"))
        })?;
        self.decide_for(path, Ok(&id))
    }

    /// Decides one call from its method path and the caller's identity (or why the
    /// certificate carries none). Revocation is checked here, on every call.
    pub fn decide_for(
        &self,
        path: &str,
        caller: Result<&Identity, &str>,
    ) -> Result<Identity, Status> {
        let id = caller.map_err(Status::unauthenticated)?;
        if id.trust_domain != self.trust_domain {
            return Err(Status::unauthenticated(format!(
                "{id}: trust domain {} is not {}",
                id.trust_domain, self.trust_domain
            )));
        }
        if (self.revoked)(id) {
            return Err(Status::unauthenticated(format!("{id} has been revoked")));
        }
        let Some(roles) = allowed_roles(path) else {
            return Err(Status::permission_denied(format!(
                "{id} may not call {path}: the method is not in the authorization table"
            )));
        };
        if !roles.contains(&id.role) {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            return Err(Status::permission_denied(format!(
                "{id} (role {}) may not call {path}; allowed roles: {}",
                id.role,
                names.join(", ")
            )));
        }
        if let Some(limiter) = &self.writes
            && is_write(path)
        {
            limiter
                .take(&id.to_string(), std::time::Instant::now())
                .map_err(Status::resource_exhausted)?;
        }
        Ok(id.clone())
    }
}

/// The tower layer that applies [`Policy`] to every request on the server.
#[derive(Clone)]
pub struct AuthzLayer {
    policy: Policy,
}

impl AuthzLayer {
    pub fn new(policy: Policy) -> Self {
        AuthzLayer { policy }
    }
}

impl<S> tower_layer::Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authz {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    policy: Policy,
}

impl<S, B, R> tonic::codegen::Service<tonic::codegen::http::Request<B>> for Authz<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<R>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: tonic::codegen::http::Request<B>) -> Self::Future {
        let conn = req.extensions().get::<ConnInfo>().cloned();
        let path = req.uri().path().to_string();
        let metadata: usize = req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        let decision = if metadata > self.policy.max_metadata {
            Err(Status::resource_exhausted(format!(
                "metadata: {metadata} bytes exceeds the limit of {} bytes",
                self.policy.max_metadata
            )))
        } else {
            match &conn {
                Some(c) => self.policy.decide_for(&path, c.identity()),
                None => Err(Status::unauthenticated(
                    "no client certificate was presented",
                )),
            }
        };
        match decision {
            Ok(id) => {
                req.extensions_mut().insert(id);
                // The clone that was made ready is the one that must be called.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(req))
            }
            Err(status) => {
                tracing::warn!(%path, code = ?status.code(), reason = status.message(), "call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
