//! The webhook listener: `POST /hooks/<pipeline>` over TLS (the coordinator's server
//! certificate, no client certificate), for GitHub- and GitLab-style push events.
//!
//! Accepted proofs, checked against the pipeline's secret (`trigger.webhook.secret_env` or
//! `secret_file`, read on this coordinator):
//! - `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` (GitHub, Gitea, and GitLab
//!   when configured to sign), verified in constant time;
//! - `X-Gitlab-Token: <secret>` (GitLab's plain token), compared in constant time.
//!
//! A missing or wrong proof is answered 401 and counted per pipeline on this node (not
//! replicated: a flood of forged requests must not turn into Raft writes). The payload's
//! `ref` (a branch) and commit (`checkout_sha`, else `after`) start a `TriggerRun`, deduplicated
//! by commit like the git poller's; the commit time comes from `head_commit.timestamp`
//! (GitHub) or the matching `commits[].timestamp` (GitLab).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ring::hmac;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::raft::{ProposeError, RaftHandle};
use crate::state::command::TriggerRun;
use crate::state::{Kind, Outcome};

/// Largest payload accepted (GitHub caps deliveries at 25 MB; pushes are far smaller).
pub const MAX_BODY: usize = 1024 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Refused deliveries per pipeline, counted by this node since it started.
#[derive(Debug, Clone, Default)]
pub struct WebhookStats {
    refused: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl WebhookStats {
    pub fn refused(&self, pipeline: &str) -> u64 {
        let m = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        m.get(pipeline).copied().unwrap_or(0)
    }

    fn count_refused(&self, pipeline: &str) {
        let mut m = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(pipeline.to_string()).or_default() += 1;
    }
}

#[derive(Clone)]
struct Ctx {
    node: RaftHandle,
    stats: WebhookStats,
}

/// Serves webhooks on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    node: RaftHandle,
    stats: WebhookStats,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let ctx = Ctx { node, stats };
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return debug!(%peer, "webhook TLS handshake timed out"),
            };
            let svc = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(req, &ctx).await) }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                r = conn => if let Err(e) = r { debug!(%peer, error = %e, "webhook connection ended") },
            }
        });
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, serde_json::json!({ "error": message.into() }))
}

async fn handle(req: Request<Incoming>, ctx: &Ctx) -> Response<Full<Bytes>> {
    let Some(pipeline) = req.uri().path().strip_prefix("/hooks/").map(str::to_string) else {
        return error(
            StatusCode::NOT_FOUND,
            "webhooks are POSTed to /hooks/<pipeline>",
        );
    };
    if req.method() != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    let headers = req.headers().clone();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body exceeds {MAX_BODY} bytes or could not be read"),
            );
        }
    };
    let hook = ctx.node.read(|st| {
        st.pipelines
            .get(&pipeline)
            .and_then(|p| p.latest())
            .map(|v| (v.spec.trigger.webhook.clone(), v.spec.trigger.git.clone()))
    });
    let (hook, git) = match hook {
        None => return error(StatusCode::NOT_FOUND, format!("no pipeline {pipeline:?}")),
        Some((None, _)) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("pipeline {pipeline} has no webhook trigger"),
            );
        }
        Some((Some(h), g)) => (h, g),
    };
    let secret = match read_secret(&hook) {
        Ok(s) => s,
        Err(e) => {
            warn!(pipeline, error = %e, "webhook secret unavailable");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the webhook secret is not configured on this coordinator",
            );
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(why) = verify(
        &secret,
        &body,
        header("x-hub-signature-256"),
        header("x-gitlab-token"),
    ) {
        ctx.stats.count_refused(&pipeline);
        warn!(pipeline, why, "webhook refused");
        return error(StatusCode::UNAUTHORIZED, why);
    }
    if header("x-github-event") == Some("ping") {
        return reply(StatusCode::OK, serde_json::json!({ "pong": true }));
    }
    let push = match parse_push(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let want = hook.branch.clone().or(git.map(|g| g.branch));
    let branch = push.git_ref.strip_prefix("refs/heads/");
    match (&want, branch) {
        (_, None) => return ignored(format!("{} is not a branch", push.git_ref)),
        (Some(w), Some(b)) if w != b => return ignored(format!("branch {b} is not {w}")),
        _ => {}
    }
    if push.commit.is_empty() || push.commit.chars().all(|c| c == '0') {
        return ignored("the push deleted the branch".to_string());
    }
    if !ctx.node.is_leader() {
        let leader = ctx.node.status().borrow().leader_id;
        return not_leader(&ctx.node.member_address(leader).unwrap_or_default());
    }
    start_run(ctx, &pipeline, push).await
}

/// 503 naming the leader (also in a `cd-leader` header), as followers answer gRPC writes.
fn not_leader(addr: &str) -> Response<Full<Bytes>> {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not the leader; send webhooks to the leader ({addr})"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(addr) {
        r.headers_mut().insert("cd-leader", v);
    }
    r
}

/// Proposes the run for a verified push; answers with the run (or the earlier one).
async fn start_run(ctx: &Ctx, pipeline: &str, push: Push) -> Response<Full<Bytes>> {
    let t = TriggerRun {
        pipeline: pipeline.to_string(),
        source: "webhook".into(),
        revision: push.commit.clone(),
        commit_at_ms: push.commit_at_ms,
        fire_ms: 0,
    };
    match ctx.node.propose(Kind::TriggerRun(t)).await {
        Ok(Outcome::Run(id)) => {
            info!(pipeline, commit = %push.commit, run = %id, "webhook started a run");
            reply(StatusCode::CREATED, serde_json::json!({ "run": id }))
        }
        Ok(Outcome::AlreadyTriggered { run_id }) => reply(
            StatusCode::OK,
            serde_json::json!({ "run": run_id, "duplicate": true }),
        ),
        Ok(_) => reply(StatusCode::OK, serde_json::json!({})),
        Err(ProposeError::NotLeader { leader_addr, .. }) => not_leader(&leader_addr),
        Err(ProposeError::Rejected(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

fn ignored(why: String) -> Response<Full<Bytes>> {
    reply(StatusCode::ACCEPTED, serde_json::json!({ "ignored": why }))
}

fn read_secret(hook: &cd_common::spec::WebhookTrigger) -> Result<Vec<u8>, String> {
    let secret = if let Some(var) = &hook.secret_env {
        std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
    } else if let Some(path) = &hook.secret_file {
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {path}: {e}"))?
            .trim_end_matches(['\n', '\r'])
            .to_string()
    } else {
        return Err("no secret configured".into());
    };
    if secret.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(secret.into_bytes())
}

/// Checks the delivery's proof against `secret`; the error says what was wrong.
pub fn verify(
    secret: &[u8],
    body: &[u8],
    hub_signature: Option<&str>,
    gitlab_token: Option<&str>,
) -> Result<(), &'static str> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    if let Some(sig) = hub_signature {
        let hex = sig
            .strip_prefix("sha256=")
            .ok_or("X-Hub-Signature-256 must be `sha256=<hex>`")?;
        let tag = decode_hex(hex).ok_or("X-Hub-Signature-256 is not hex")?;
        return hmac::verify(&key, body, &tag).map_err(|_| "bad signature");
    }
    if let Some(token) = gitlab_token {
        // Constant time: compare the token's MAC with the secret's.
        let expected = hmac::sign(&key, secret);
        return hmac::verify(&key, token.as_bytes(), expected.as_ref())
            .map_err(|_| "bad X-Gitlab-Token");
    }
    Err("missing X-Hub-Signature-256 or X-Gitlab-Token")
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Debug, PartialEq)]
struct Push {
    git_ref: String,
    commit: String,
    commit_at_ms: i64,
}

fn parse_push(body: &[u8]) -> Result<Push, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let text = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap_or_default();
    let git_ref = text("/ref").to_string();
    if git_ref.is_empty() {
        return Err("ref: missing (expected a push event)".into());
    }
    let commit = match text("/checkout_sha") {
        "" => text("/after"),
        sha => sha,
    }
    .to_string();
    if !commit.chars().all(|c| c.is_ascii_hexdigit()) || commit.len() > 64 {
        return Err(format!("after: {commit:?} is not a commit id"));
    }
    let stamp = match text("/head_commit/timestamp") {
        "" => v
            .pointer("/commits")
            .and_then(|c| c.as_array())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("id").and_then(|i| i.as_str()) == Some(commit.as_str()))
            })
            .and_then(|c| c.get("timestamp"))
            .and_then(|t| t.as_str())
            .unwrap_or_default(),
        t => t,
    };
    let commit_at_ms = chrono::DateTime::parse_from_rfc3339(stamp)
        .map(|t| t.timestamp_millis())
        .unwrap_or(0);
    Ok(Push {
        git_ref,
        commit,
        commit_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), body);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256={hex}")
    }

    #[test]
    fn github_signatures_and_gitlab_tokens_are_checked() {
        let body = b"{\"ref\":\"refs/heads/main\"}";
        let good = sign(b"s3cret", body);
        assert_eq!(verify(b"s3cret", body, Some(&good), None), Ok(()));
        assert!(verify(b"other", body, Some(&good), None).is_err());
        assert!(verify(b"s3cret", b"tampered", Some(&good), None).is_err());
        assert!(verify(b"s3cret", body, Some("sha1=abc"), None).is_err());
        assert!(verify(b"s3cret", body, Some("sha256=zz"), None).is_err());
        assert_eq!(verify(b"s3cret", body, None, Some("s3cret")), Ok(()));
        assert!(verify(b"s3cret", body, None, Some("s3cre")).is_err());
        assert!(verify(b"s3cret", body, None, None).is_err());
    }

    #[test]
    fn github_and_gitlab_push_payloads_parse() {
        let gh = br#"{"ref":"refs/heads/main","after":"abc123","head_commit":{"timestamp":"2026-11-28T12:00:00+01:00"}}"#;
        let p = parse_push(gh).unwrap();
        assert_eq!(p.git_ref, "refs/heads/main");
        assert_eq!(p.commit, "abc123");
        assert_eq!(p.commit_at_ms, 1_795_863_600_000);
        let gl = br#"{"ref":"refs/heads/dev","after":"aaa","checkout_sha":"bbb","commits":[{"id":"aaa","timestamp":"2026-01-01T00:00:00Z"},{"id":"bbb","timestamp":"2026-01-01T00:00:01Z"}]}"#;
        let p = parse_push(gl).unwrap();
        assert_eq!(p.commit, "bbb");
        assert_eq!(p.commit_at_ms % 10_000, 1_000);
        assert!(parse_push(b"[]").is_err());
        assert!(parse_push(br#"{"ref":"refs/heads/x","after":"; rm -rf"}"#).is_err());
    }
}
