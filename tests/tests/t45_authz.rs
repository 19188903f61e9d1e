//! Authorization against a real coordinator: one table of callers that must be refused, each
//! with a clear error, and for each the replicated state (applied index and digest) is checked
//! unchanged afterwards, so nothing was written. Then the rest of the security work over real
//! processes: approval timeout, revocation of a connected agent, rotation of the
//! coordinator's certificate, configured bounds and write rate limits.

use std::time::Duration;

use cd_common::certs::Role;
use cd_common::tls::TlsPaths;
use cd_proto::raft_v1 as raftpb;
use cd_proto::raft_v1::raft_peer_client::RaftPeerClient;
use cd_proto::v1 as pb;
use cd_proto::v1::agent_service_client::AgentServiceClient;
use cd_proto::v1::cluster_service_client::ClusterServiceClient;
use cd_proto::v1::control_service_client::ControlServiceClient;
use cd_tests::*;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// A stage only agent `b` can take (its label), so the attempt is b's.
const ONLY_B: &str = r#"
name: owned
stages:
  - name: work
    labels: [only-b]
    run: echo hi
"#;

/// A stage that waits for alice's approval (and would give up after ten minutes).
const GATED: &str = r#"
name: gated
stages:
  - name: ship
    gate:
      approvals: 1
      approvers: [alice]
      approval_timeout: 10m
    run: echo shipped
"#;

/// What the caller tries.
#[derive(Clone, Debug)]
enum Call {
    ListRuns,
    ListAudit,
    StartRun,
    SetSecret,
    RaftSend,
    RaftStream,
    Heartbeat { agent: &'static str },
    ReportResult { agent: &'static str },
    Approve { run_id: String },
    Reject { run_id: String },
    ApplySpec { yaml: String },
    PushLog { agent: &'static str, bytes: usize },
    ReportErrors { agent: &'static str, bytes: usize },
}

/// A pipeline whose YAML aliases expand a few bytes into billions (a "billion laughs").
fn alias_bomb() -> String {
    let mut y =
        String::from("name: bomb\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        y += &format!("x{i}: &a{i} [{}]\n", vec![prev; 10].join(", "));
    }
    y + "stages:\n  - { name: a, run: x }\n"
}

/// How it must fail.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Refused before any service, in the TLS handshake: the client sees only a failed
    /// connection, so the reason is checked where it is given, in the coordinator's log
    /// (`tls accept error: ...` containing this text).
    Connection(&'static str),
    /// A gRPC status with this code whose message contains all of these.
    Status(Code, &'static [&'static str]),
}

enum Who {
    Plaintext,
    /// TLS trusting the cluster CA, but presenting no certificate.
    NoCertificate(std::path::PathBuf),
    Tls(TlsPaths),
}

struct Case {
    name: &'static str,
    who: Who,
    call: Call,
    expect: Expect,
}

async fn channel(endpoint: &str, who: &Who) -> anyhow::Result<Channel> {
    Ok(match who {
        Who::Plaintext => {
            Endpoint::from_shared(endpoint.replace("https://", "http://"))?
                .connect()
                .await?
        }
        Who::NoCertificate(ca) => {
            let ca = tonic::transport::Certificate::from_pem(std::fs::read(ca)?);
            Endpoint::from_shared(endpoint.to_string())?
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(ca)
                        .domain_name("localhost"),
                )?
                .connect()
                .await?
        }
        Who::Tls(tls) => {
            Endpoint::from_shared(endpoint.to_string())?
                .tls_config(cd_common::tls::client_tls(tls, "localhost")?)?
                .connect()
                .await?
        }
    })
}

async fn perform(
    endpoint: &str,
    who: &Who,
    call: Call,
    attempt: &pb::AttemptRef,
) -> anyhow::Result<()> {
    let ch = channel(endpoint, who).await?;
    match call {
        Call::ListRuns => {
            ControlServiceClient::new(ch)
                .list_runs(pb::ListRunsRequest::default())
                .await?;
        }
        Call::ListAudit => {
            ControlServiceClient::new(ch)
                .list_audit(pb::ListAuditRequest::default())
                .await?;
        }
        Call::SetSecret => {
            ControlServiceClient::new(ch)
                .set_secret(pb::SetSecretRequest {
                    name: "TOKEN".into(),
                    value: b"viewer-must-not-set-this".to_vec(),
                })
                .await?;
        }
        Call::StartRun => {
            ControlServiceClient::new(ch)
                .start_run(pb::StartRunRequest {
                    pipeline: "owned".into(),
                    revision: "x".into(),
                    ..Default::default()
                })
                .await?;
        }
        Call::Approve { run_id } => {
            ControlServiceClient::new(ch)
                .approve(pb::ApproveRequest {
                    run_id,
                    stage: "ship".into(),
                    comment: "lgtm".into(),
                })
                .await?;
        }
        Call::Reject { run_id } => {
            ControlServiceClient::new(ch)
                .reject(pb::RejectRequest {
                    run_id,
                    stage: "ship".into(),
                    reason: "no".into(),
                })
                .await?;
        }
        Call::ApplySpec { yaml } => {
            ControlServiceClient::new(ch)
                .apply_pipeline(pb::ApplyPipelineRequest {
                    spec_yaml: yaml,
                    file_name: "evil.yaml".into(),
                    base_dir: String::new(),
                })
                .await?;
        }
        Call::PushLog { agent, bytes } => {
            AgentServiceClient::new(ch)
                .push_logs(pb::PushLogsRequest {
                    agent: agent.into(),
                    chunks: vec![pb::LogChunk {
                        attempt: Some(attempt.clone()),
                        seq: 0,
                        data: vec![b'x'; bytes],
                        ..Default::default()
                    }],
                })
                .await?;
        }
        Call::ReportErrors { agent, bytes } => {
            AgentServiceClient::new(ch)
                .report_result(pb::ReportResultRequest {
                    agent: agent.into(),
                    attempt: Some(attempt.clone()),
                    result: Some(pb::StageResult {
                        exit_code: 1,
                        errors: vec!["e".repeat(bytes)],
                        ..Default::default()
                    }),
                })
                .await?;
        }
        Call::RaftSend => {
            RaftPeerClient::new(ch)
                .send(raftpb::MessageBatch {
                    from: 7,
                    messages: Vec::new(),
                })
                .await?;
        }
        Call::RaftStream => {
            RaftPeerClient::new(ch)
                .stream(tokio_stream::iter([raftpb::MessageBatch {
                    from: 7,
                    messages: Vec::new(),
                }]))
                .await?;
        }
        Call::Heartbeat { agent } => {
            AgentServiceClient::new(ch)
                .heartbeat(pb::HeartbeatRequest {
                    agent: agent.into(),
                    running: vec![attempt.clone()],
                })
                .await?;
        }
        Call::ReportResult { agent } => {
            AgentServiceClient::new(ch)
                .report_result(pb::ReportResultRequest {
                    agent: agent.into(),
                    attempt: Some(attempt.clone()),
                    result: Some(pb::StageResult {
                        exit_code: 0,
                        ..Default::default()
                    }),
                })
                .await?;
        }
    }
    Ok(())
}

async fn digest(endpoint: &str, op: &TlsPaths) -> anyhow::Result<(u64, String)> {
    let ch = channel(endpoint, &Who::Tls(op.clone())).await?;
    let d = ClusterServiceClient::new(ch)
        .state_digest(pb::StateDigestRequest {})
        .await?
        .into_inner();
    Ok((d.applied, format!("{:?}", d.digest)))
}

fn check(case: &Case, result: anyhow::Result<()>) -> Result<(), String> {
    let err = match result {
        Ok(()) => return Err("was served".into()),
        Err(e) => e,
    };
    let status = err.downcast_ref::<tonic::Status>();
    match (case.expect, status) {
        (Expect::Status(code, words), Some(s)) => {
            if s.code() != code {
                return Err(format!(
                    "got {:?} `{}`, want {code:?}",
                    s.code(),
                    s.message()
                ));
            }
            match words.iter().find(|w| !s.message().contains(**w)) {
                Some(w) => Err(format!("message `{}` lacks `{w}`", s.message())),
                None => Ok(()),
            }
        }
        (Expect::Connection(_), Some(s)) if s.metadata().contains_key("content-type") => {
            Err(format!("answered by the server: {s:?}"))
        }
        (Expect::Connection(_), _) => Ok(()),
        (Expect::Status(..), None) => Err(format!("not a gRPC status: {err:?}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_unauthorized_caller_is_refused_with_a_clear_error_and_nothing_is_written()
-> anyhow::Result<()> {
    // A long lease: nothing expires (and nothing is proposed) while the cases run.
    let s = Single::start(&[], &["--lease", "300s"], &[]).await?;
    let ep = s.coord.endpoint.clone();
    let mut c = s.client().await?;
    apply_pipeline(&mut c, ONLY_B, s.tmp.path()).await?;

    // Agent b holds an attempt (a raw client on the agent API: attach and take the assignment);
    // agent a is registered too, with nothing to do.
    let b = s.certs.tls(Role::Agent, "b");
    let a = s.certs.tls(Role::Agent, "a");
    let attach = |tls: TlsPaths, name: &'static str, label: &'static str| {
        let ep = ep.clone();
        async move {
            let ch = channel(&ep, &Who::Tls(tls)).await?;
            let stream = AgentServiceClient::new(ch)
                .attach(pb::ConnectRequest {
                    agent: name.into(),
                    labels: vec![label.into()],
                    slots: 1,
                    version: "test".into(),
                })
                .await?
                .into_inner();
            anyhow::Ok(stream)
        }
    };
    let _a_stream = attach(a.clone(), "a", "other").await?;
    let mut b_stream = attach(b.clone(), "b", "only-b").await?;
    let run_id = start_run(&mut c, "owned", &[]).await?;
    let assignment = tokio::time::timeout(Duration::from_secs(30), b_stream.message())
        .await??
        .and_then(|m| match m.kind {
            Some(pb::agent_message::Kind::Assignment(a)) => a.attempt,
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("agent b got no assignment"))?;
    assert_eq!(assignment.run_id, run_id);

    // A run waiting for alice's approval.
    apply_pipeline(&mut c, GATED, s.tmp.path()).await?;
    let gated = start_run(&mut c, "gated", &[]).await?;
    s.wait_run(&gated, Duration::from_secs(30), |r| {
        stage_is(r, "ship", StageState::AwaitingApproval)
    })
    .await?;
    let bob = s.certs.tls(Role::Operator, "bob");
    // Agent `gone` and operator `carol` are revoked (their certificates stay valid).
    let gone = s.certs.tls(Role::Agent, "gone");
    let carol = s.certs.tls(Role::Operator, "carol");
    for id in [
        "spiffe://conveyor.local/agent/gone",
        "spiffe://conveyor.local/operator/carol",
    ] {
        c.revoke(pb::RevokeRequest {
            identity: id.into(),
            reason: "test".into(),
        })
        .await?;
    }
    let alice = s.certs.tls(Role::Operator, "alice");

    let other_ca = Certs::new(&s.path("other-ca"))?;
    let viewer = s.certs.tls(Role::Viewer, "ann");
    let op = s.op.clone();
    const DAY: i64 = 86_400;
    let mut cases = vec![
        Case {
            name: "plaintext client",
            who: Who::Plaintext,
            call: Call::ListRuns,
            expect: Expect::Connection("InvalidContentType"),
        },
        Case {
            name: "TLS client without a certificate",
            who: Who::NoCertificate(s.certs.dir.join("ca.pem")),
            call: Call::ListRuns,
            expect: Expect::Connection("peer sent no certificates"),
        },
        Case {
            name: "certificate from another CA",
            // Trusts our CA (so the client accepts the server), presents another CA's leaf.
            who: Who::Tls(TlsPaths {
                ca: s.certs.dir.join("ca.pem"),
                ..other_ca.tls(Role::Operator, "mallory")
            }),
            call: Call::StartRun,
            expect: Expect::Connection("invalid peer certificate: BadSignature"),
        },
        Case {
            name: "expired certificate",
            who: Who::Tls(s.certs.custom(
                "expired",
                &["spiffe://conveyor.local/operator/old"],
                -3 * DAY,
                -DAY,
            )),
            call: Call::StartRun,
            // Refused in the TLS handshake: the client sees the alert or, when the server's
            // alert loses the race with the close, only the closed connection.
            expect: Expect::Connection("invalid peer certificate: certificate expired"),
        },
        Case {
            name: "no SPIFFE id",
            who: Who::Tls(s.certs.custom("bare", &[], -60, DAY)),
            call: Call::ListRuns,
            expect: Expect::Status(Code::Unauthenticated, &["no URI SAN"]),
        },
        Case {
            name: "URI SAN that is not spiffe",
            who: Who::Tls(s.certs.custom("web", &["https://example.com/op"], -60, DAY)),
            call: Call::ListRuns,
            expect: Expect::Status(Code::Unauthenticated, &["not a spiffe:// identity"]),
        },
        Case {
            name: "malformed SPIFFE id",
            who: Who::Tls(
                s.certs
                    .custom("short", &["spiffe://conveyor.local/operator"], -60, DAY),
            ),
            call: Call::ListRuns,
            expect: Expect::Status(Code::Unauthenticated, &["expected the form"]),
        },
        Case {
            name: "unknown role",
            who: Who::Tls(
                s.certs
                    .custom("adm", &["spiffe://conveyor.local/admin/root"], -60, DAY),
            ),
            call: Call::StartRun,
            expect: Expect::Status(Code::Unauthenticated, &["unknown role `admin`"]),
        },
        Case {
            name: "another trust domain from our CA",
            who: Who::Tls(
                s.certs
                    .custom("td", &["spiffe://evil.example/operator/eve"], -60, DAY),
            ),
            call: Call::StartRun,
            expect: Expect::Status(
                Code::Unauthenticated,
                &["trust domain evil.example is not conveyor.local"],
            ),
        },
        Case {
            name: "viewer starting a run",
            who: Who::Tls(viewer.clone()),
            call: Call::StartRun,
            expect: Expect::Status(
                Code::PermissionDenied,
                &[
                    "spiffe://conveyor.local/viewer/ann",
                    "/cd.v1.ControlService/StartRun",
                    "allowed roles: operator",
                ],
            ),
        },
        Case {
            name: "viewer setting a secret",
            who: Who::Tls(viewer.clone()),
            call: Call::SetSecret,
            expect: Expect::Status(
                Code::PermissionDenied,
                &[
                    "spiffe://conveyor.local/viewer/ann",
                    "/cd.v1.ControlService/SetSecret",
                    "allowed roles: operator",
                ],
            ),
        },
        Case {
            name: "agent opening the peer raft stream",
            who: Who::Tls(a.clone()),
            call: Call::RaftStream,
            expect: Expect::Status(
                Code::PermissionDenied,
                &["agent/a", "RaftPeer/Stream", "allowed roles: coordinator"],
            ),
        },
        Case {
            name: "operator calling the peer raft service",
            who: Who::Tls(op.clone()),
            call: Call::RaftSend,
            expect: Expect::Status(
                Code::PermissionDenied,
                &[
                    "operator/operator",
                    "RaftPeer/Send",
                    "allowed roles: coordinator",
                ],
            ),
        },
        Case {
            name: "agent calling the operator API",
            who: Who::Tls(a.clone()),
            call: Call::StartRun,
            expect: Expect::Status(
                Code::PermissionDenied,
                &["agent/a", "ControlService/StartRun"],
            ),
        },
        Case {
            name: "operator calling the agent API",
            who: Who::Tls(op.clone()),
            call: Call::ReportResult { agent: "b" },
            expect: Expect::Status(Code::PermissionDenied, &["allowed roles: agent"]),
        },
        Case {
            name: "agent reporting a result as another agent",
            who: Who::Tls(a.clone()),
            call: Call::ReportResult { agent: "b" },
            expect: Expect::Status(
                Code::PermissionDenied,
                &["agent/a may act only as agent a", "\"b\""],
            ),
        },
        Case {
            name: "agent heartbeating as another agent",
            who: Who::Tls(a.clone()),
            call: Call::Heartbeat { agent: "b" },
            expect: Expect::Status(Code::PermissionDenied, &["may act only as agent a"]),
        },
        Case {
            name: "agent reporting a result for another agent's attempt",
            who: Who::Tls(a.clone()),
            call: Call::ReportResult { agent: "a" },
            expect: Expect::Status(Code::PermissionDenied, &["belongs to agent b, not a"]),
        },
    ];

    const MIB: usize = 1024 * 1024;
    cases.extend([
        Case {
            name: "oversized spec",
            who: Who::Tls(op.clone()),
            call: Call::ApplySpec {
                yaml: format!(
                    "name: big\n#{}\nstages:\n  - {{ name: a, run: x }}\n",
                    "x".repeat(MIB)
                ),
            },
            expect: Expect::Status(
                Code::InvalidArgument,
                &["spec_yaml", "exceeds the spec limit of"],
            ),
        },
        Case {
            name: "YAML alias bomb",
            who: Who::Tls(op.clone()),
            call: Call::ApplySpec { yaml: alias_bomb() },
            expect: Expect::Status(Code::InvalidArgument, &["evil.yaml", "alias"]),
        },
        Case {
            name: "stage name with ../",
            who: Who::Tls(op.clone()),
            call: Call::ApplySpec {
                yaml: "name: p\nstages:\n  - { name: ../up, run: x }\n".into(),
            },
            expect: Expect::Status(Code::InvalidArgument, &["evil.yaml:3", "stages[0].name"]),
        },
        Case {
            name: "artifact path with ../",
            who: Who::Tls(op.clone()),
            call: Call::ApplySpec {
                yaml: "name: p\nstages:\n  - name: a\n    run: x\n    artifacts: [../../etc]\n"
                    .into(),
            },
            expect: Expect::Status(
                Code::InvalidArgument,
                &["evil.yaml:5", "stages[0].artifacts[0]"],
            ),
        },
        Case {
            name: "oversized log chunk",
            who: Who::Tls(b.clone()),
            call: Call::PushLog {
                agent: "b",
                bytes: MIB + 1,
            },
            expect: Expect::Status(
                Code::InvalidArgument,
                &["chunks.data", "log chunk limit of 1048576 bytes"],
            ),
        },
        Case {
            name: "oversized result",
            who: Who::Tls(b.clone()),
            call: Call::ReportErrors {
                agent: "b",
                bytes: MIB + 1,
            },
            expect: Expect::Status(
                Code::InvalidArgument,
                &["result.errors", "limit of 1048576 bytes"],
            ),
        },
        Case {
            name: "viewer reading the audit log",
            who: Who::Tls(viewer.clone()),
            call: Call::ListAudit,
            expect: Expect::Status(Code::PermissionDenied, &["allowed roles: operator"]),
        },
        Case {
            name: "revoked agent reconnecting",
            who: Who::Tls(gone.clone()),
            call: Call::Heartbeat { agent: "gone" },
            expect: Expect::Status(
                Code::Unauthenticated,
                &["spiffe://conveyor.local/agent/gone has been revoked"],
            ),
        },
        Case {
            name: "revoked operator reading",
            who: Who::Tls(carol.clone()),
            call: Call::ListRuns,
            expect: Expect::Status(Code::Unauthenticated, &["operator/carol has been revoked"]),
        },
        Case {
            name: "approval by an operator not in gate.approvers",
            who: Who::Tls(bob.clone()),
            call: Call::Approve {
                run_id: gated.clone(),
            },
            expect: Expect::Status(
                Code::PermissionDenied,
                &[
                    "spiffe://conveyor.local/operator/bob",
                    "gate.approvers: alice",
                ],
            ),
        },
        Case {
            name: "rejection by an operator not in gate.approvers",
            who: Who::Tls(bob.clone()),
            call: Call::Reject {
                run_id: gated.clone(),
            },
            expect: Expect::Status(Code::PermissionDenied, &["gate.approvers: alice"]),
        },
        Case {
            name: "approval by a viewer named in gate.approvers' name",
            who: Who::Tls(s.certs.tls(Role::Viewer, "alice-viewer")),
            call: Call::Approve {
                run_id: gated.clone(),
            },
            expect: Expect::Status(Code::PermissionDenied, &["allowed roles: operator"]),
        },
    ]);

    let mut failures = Vec::new();
    for case in &cases {
        let before = digest(&ep, &op).await?;
        let log_before = s.coord.proc.log_text().len();
        let result = perform(&ep, &case.who, case.call.clone(), &assignment).await;
        if let Err(why) = check(case, result) {
            failures.push(format!("{}: {why}", case.name));
        }
        if let Expect::Connection(reason) = case.expect {
            let logged = eventually(
                &format!("the coordinator to log why it refused the {}", case.name),
                Duration::from_secs(10),
                || async {
                    let log = s.coord.proc.log_text();
                    let new = log.get(log_before..).unwrap_or_default().to_string();
                    new.lines()
                        .find(|l| l.contains("tls accept error"))
                        .map(str::to_string)
                },
            )
            .await;
            match logged {
                Ok(line) if line.contains(reason) => {}
                Ok(line) => failures.push(format!("{}: log `{line}` lacks `{reason}`", case.name)),
                Err(e) => failures.push(format!("{}: {e}", case.name)),
            }
        }
        let after = digest(&ep, &op).await?;
        if before != after {
            failures.push(format!(
                "{}: state changed (applied {} -> {})",
                case.name, before.0, after.0
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The same callers in their own roles are served: the refusals above were about identity.
    let viewer_runs = perform(&ep, &Who::Tls(viewer), Call::ListRuns, &assignment).await;
    assert!(viewer_runs.is_ok(), "viewer read: {viewer_runs:?}");
    let own = perform(
        &ep,
        &Who::Tls(b),
        Call::ReportResult { agent: "b" },
        &assignment,
    )
    .await;
    assert!(own.is_ok(), "agent b reporting its own attempt: {own:?}");
    let run = s.wait_final(&run_id, Duration::from_secs(30)).await?;
    assert_eq!(
        run.state,
        pb::RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    let approved = perform(
        &ep,
        &Who::Tls(alice),
        Call::Approve {
            run_id: gated.clone(),
        },
        &assignment,
    )
    .await;
    assert!(approved.is_ok(), "alice approving: {approved:?}");
    let run = s
        .wait_run(&gated, Duration::from_secs(30), |r| {
            !stage_is(r, "ship", StageState::AwaitingApproval)
        })
        .await?;
    assert!(
        stage(&run, "ship")
            .approvals
            .iter()
            .any(|a| a.identity.ends_with("/operator/alice")),
        "{}",
        describe(Some(&run))
    );

    // Every write is in the audit log with its caller; no refused call is.
    let audit = c
        .list_audit(pb::ListAuditRequest::default())
        .await?
        .into_inner()
        .entries;
    let rows: Vec<(String, String, String)> = audit
        .iter()
        .map(|e| (e.identity.clone(), e.action.clone(), e.target.clone()))
        .collect();
    let op_id = "spiffe://conveyor.local/operator/operator".to_string();
    for expected in [
        (op_id.clone(), "apply".to_string(), "owned".to_string()),
        (op_id.clone(), "start".to_string(), run_id.clone()),
        (op_id.clone(), "apply".to_string(), "gated".to_string()),
        (op_id.clone(), "start".to_string(), gated.clone()),
        (
            op_id.clone(),
            "revoke".to_string(),
            "spiffe://conveyor.local/agent/gone".to_string(),
        ),
        (
            op_id.clone(),
            "revoke".to_string(),
            "spiffe://conveyor.local/operator/carol".to_string(),
        ),
        (
            "spiffe://conveyor.local/operator/alice".to_string(),
            "approve".to_string(),
            format!("{gated}/ship"),
        ),
    ] {
        assert!(
            rows.contains(&expected),
            "{expected:?} missing from {rows:#?}"
        );
    }
    assert_eq!(rows.len(), 7, "only the successful writes: {rows:#?}");
    assert!(
        audit
            .windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].at_ms <= w[1].at_ms)
    );
    let out = s.cdctl().args(["audit", "--identity", "alice"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("spiffe://conveyor.local/operator/alice") && text.contains("approve"),
        "{text}"
    );
    assert!(
        !text.contains("operator/operator"),
        "filtered by identity: {text}"
    );
    Ok(())
}

/// A stage nobody approves fails after `gate.approval_timeout`, saying so; it never hangs.
#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_approval_fails_the_stage_after_its_timeout() -> anyhow::Result<()> {
    let s = Single::start(&[], &[], &[]).await?;
    let mut c = s.client().await?;
    apply_pipeline(&mut c, &GATED.replace("10m", "2s"), s.tmp.path()).await?;
    let id = start_run(&mut c, "gated", &[]).await?;
    let run = s.wait_final(&id, Duration::from_secs(30)).await?;
    assert_eq!(
        run.state,
        pb::RunState::Failed as i32,
        "{}",
        describe(Some(&run))
    );
    let ship = stage(&run, "ship");
    assert_eq!(ship.state, StageState::GateFailed as i32);
    assert!(
        ship.reason
            .contains("approval timed out: no decision within 2s"),
        "{}",
        ship.reason
    );
    Ok(())
}

/// A stage that hangs on r1 and finishes anywhere else.
const MOVES: &str = r#"
name: moves
stages:
  - name: work
    run: |
      if [ "$CD_AGENT" = r1 ]; then sleep 300; fi
      echo "done on $CD_AGENT"
"#;

/// `cdctl revoke` disconnects a connected agent at once and refuses it on every reconnect,
/// though its certificate is still valid; the stage it held moves to another agent once its
/// lease lapses. Coordinators cannot be revoked this way.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agent_is_disconnected_and_refused_on_reconnect() -> anyhow::Result<()> {
    let fast = ["--heartbeat", "500ms"];
    let mut s = Single::start(&["r1"], &["--lease", "3s"], &fast).await?;
    let mut c = s.client().await?;
    apply_pipeline(&mut c, MOVES, s.tmp.path()).await?;
    let run_id = start_run(&mut c, "moves", &[]).await?;
    s.wait_run(&run_id, Duration::from_secs(30), |r| {
        stage_is(r, "work", StageState::Running)
    })
    .await?;
    s.add_agent("r2", &fast)?;
    s.wait_agents(&["r2"]).await?;

    let out = s
        .cdctl()
        .args([
            "revoke",
            "spiffe://conveyor.local/agent/r1",
            "--reason",
            "stolen",
        ])
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("revoked spiffe://conveyor.local/agent/r1"),
        "{text}"
    );

    eventually("r1 to be disconnected", Duration::from_secs(20), || {
        let mut c = c.clone();
        async move {
            let agents = c
                .list_agents(pb::ListAgentsRequest {})
                .await
                .ok()?
                .into_inner()
                .agents;
            let r1 = agents.iter().find(|a| a.name == "r1")?;
            let r2 = agents.iter().find(|a| a.name == "r2")?;
            (!r1.connected && r2.connected).then_some(())
        }
    })
    .await?;
    // The agent keeps trying; every attempt is refused, and its log says why.
    let agent = &s.agents[0];
    eventually(
        "r1 to log that it was revoked",
        Duration::from_secs(20),
        || async {
            let log = agent.proc.log_text();
            (log.matches("has been revoked").count() >= 2).then_some(())
        },
    )
    .await?;
    let agents = c
        .list_agents(pb::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    assert!(
        agents.iter().any(|a| a.name == "r1" && !a.connected),
        "{agents:?}"
    );

    // Revoking twice is harmless; a coordinator is refused with the reason.
    let again = s
        .cdctl()
        .args(["revoke", "spiffe://conveyor.local/agent/r1"])
        .output()?;
    assert!(String::from_utf8_lossy(&again.stdout).contains("already revoked"));
    let err = c
        .revoke(pb::RevokeRequest {
            identity: "spiffe://conveyor.local/coordinator/node-1".into(),
            reason: String::new(),
        })
        .await
        .expect_err("a coordinator cannot be revoked");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("cdctl cluster remove"),
        "{}",
        err.message()
    );

    // r1's stage is taken from it when its lease lapses and finishes on r2.
    let run = s.wait_final(&run_id, Duration::from_secs(60)).await?;
    assert_eq!(
        run.state,
        pb::RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    let attempts = &stage(&run, "work").attempts;
    assert_eq!(attempts.first().map(|a| a.agent.as_str()), Some("r1"));
    assert_eq!(attempts.last().map(|a| a.agent.as_str()), Some("r2"));
    Ok(())
}

/// A client that accepts only a server certificate naming rotated.example.
async fn rotated(endpoint: &str, tls: &TlsPaths) -> anyhow::Result<()> {
    let ch = Endpoint::from_shared(endpoint.to_string())?
        .tls_config(cd_common::tls::client_tls(tls, "rotated.example")?)?
        .connect()
        .await?;
    ControlServiceClient::new(ch)
        .list_pipelines(pb::ListPipelinesRequest {})
        .await?;
    Ok(())
}

/// The coordinator's own certificate rotates without a restart: new files are picked up
/// (file change or SIGHUP), new connections get the new certificate, open ones keep working,
/// and a broken pair is refused while the old one stays in service.
#[tokio::test(flavor = "multi_thread")]
async fn the_coordinators_certificate_rotates_without_a_restart() -> anyhow::Result<()> {
    let s = Single::start(&[], &[], &[]).await?;
    let pid = s.coord.proc.pid();
    let mut before = s.client().await?;
    let node = TlsPaths::in_dir(&s.certs.dir, "node-1");
    assert!(
        rotated(&s.coord.endpoint, &s.op).await.is_err(),
        "the first certificate does not name rotated.example"
    );

    // Issue the new pair elsewhere and move it over the node's files.
    let fresh = s.path("fresh");
    cd_common::certs::issue(
        &s.certs.dir,
        &fresh,
        Role::Coordinator,
        "node-1",
        &["rotated.example".to_string()],
        30,
    )?;
    std::fs::rename(fresh.join("node-1-key.pem"), &node.key)?;
    std::fs::rename(fresh.join("node-1.pem"), &node.cert)?;
    eventually(
        "new connections to get the new certificate",
        Duration::from_secs(20),
        || async { rotated(&s.coord.endpoint, &s.op).await.ok() },
    )
    .await?;
    assert!(
        s.coord
            .proc
            .log_text()
            .contains("reloaded this node's certificate")
    );
    before.list_pipelines(pb::ListPipelinesRequest {}).await?;

    // SIGHUP reloads too (and no longer ends the process).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )?;
    eventually("a reload on SIGHUP", Duration::from_secs(20), || async {
        s.coord
            .proc
            .log_text()
            .contains("why=\"SIGHUP\"")
            .then_some(())
    })
    .await?;

    // A broken certificate file is refused; the node keeps serving the last good one.
    std::fs::write(&node.cert, "not a certificate")?;
    eventually(
        "the broken file to be refused",
        Duration::from_secs(20),
        || async {
            s.coord
                .proc
                .log_text()
                .contains("certificate reload failed")
                .then_some(())
        },
    )
    .await?;
    rotated(&s.coord.endpoint, &s.op).await?;
    assert!(
        alive(pid) && s.coord.proc.pid() == pid,
        "the coordinator restarted"
    );
    Ok(())
}

/// A rotated coordinator certificate reaches the other coordinators too: after node 1's files
/// change, its peer links open new connections, and a peer logs the new certificate's serial
/// when node 1's Raft stream arrives (no restart; the cluster keeps committing).
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_is_presented_to_peers_without_a_restart() -> anyhow::Result<()> {
    let c = cd_tests::cluster::Cluster::start(3, &[], &[], &[]).await?;
    let pid = c.node(1).proc.as_ref().map(|p| p.pid());
    let old = cd_common::certs::serial_of_pem_file(&c.node(1).tls.cert)?;
    let opened = |serial: &str| {
        let needle = format!("cert_serial={serial}");
        [2, 3].iter().any(|id| {
            c.log(*id)
                .lines()
                .any(|l| l.contains("peer stream opened") && l.contains(&needle))
        })
    };
    eventually(
        "node 1's first stream to reach a peer",
        Duration::from_secs(20),
        || async { opened(&old).then_some(()) },
    )
    .await?;

    let fresh = c.path("fresh");
    cd_common::certs::issue(&c.certs.dir, &fresh, Role::Coordinator, "node-1", &[], 30)?;
    let new = cd_common::certs::serial_of_pem_file(&fresh.join("node-1.pem"))?;
    assert_ne!(old, new, "the new certificate has its own serial");
    let node = &c.node(1).tls;
    std::fs::rename(fresh.join("node-1-key.pem"), &node.key)?;
    std::fs::rename(fresh.join("node-1.pem"), &node.cert)?;
    eventually(
        "a peer to see node 1's new certificate",
        Duration::from_secs(20),
        || async { opened(&new).then_some(()) },
    )
    .await?;
    assert!(
        c.log(1)
            .contains("certificate reloaded; new connection to peer"),
        "node 1 says why it reconnected"
    );
    assert_eq!(
        c.node(1).proc.as_ref().map(|p| p.pid()),
        pid,
        "node 1 restarted"
    );
    // The cluster still commits through the new connections.
    let mut ctl = c.leader_control().await?;
    ctl.apply_pipeline(pb::ApplyPipelineRequest {
        spec_yaml: "name: after-rotation\nstages:\n  - { name: a, run: 'true' }\n".into(),
        file_name: "after-rotation.yaml".into(),
        base_dir: String::new(),
    })
    .await?;
    c.wait_converged(Duration::from_secs(20)).await?;
    for id in [2, 3] {
        let names = cd_tests::cluster::stale_pipeline_names(&mut c.control(id).await?).await?;
        assert!(
            names.iter().any(|n| n == "after-rotation"),
            "node {id}: {names:?}"
        );
    }
    Ok(())
}

/// Bounds from the command line: a lowered spec limit is enforced and named, and one
/// identity's writes past its rate limit get RESOURCE_EXHAUSTED while others are unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn configured_bounds_and_per_identity_write_rate_limits() -> anyhow::Result<()> {
    let s = Single::start(
        &[],
        &[
            "--max-spec-bytes",
            "2000",
            "--write-rate",
            "0.1",
            "--write-burst",
            "3",
        ],
        &[],
    )
    .await?;
    let mut c = s.client().await?;
    let big = format!(
        "name: big\n#{}\nstages:\n  - {{ name: a, run: x }}\n",
        "x".repeat(2000)
    );
    let err = c
        .apply_pipeline(pb::ApplyPipelineRequest {
            spec_yaml: big,
            file_name: "big.yaml".into(),
            base_dir: String::new(),
        })
        .await
        .expect_err("over the configured limit");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("exceeds the spec limit of 2000 bytes"),
        "{}",
        err.message()
    );

    // The limit counts write calls (the refused apply above was one): two more pass, the
    // next is limited.
    let small = "name: p\nstages:\n  - { name: a, run: x }\n";
    for _ in 0..2 {
        apply_pipeline(&mut c, small, s.tmp.path()).await?;
    }
    let limited = apply_pipeline(&mut c, small, s.tmp.path())
        .await
        .expect_err("limited");
    let status = limited.downcast_ref::<tonic::Status>().expect("a status");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains(
            "operator/operator exceeded the write rate limit of 0.1 per second (burst 3)"
        ),
        "{}",
        status.message()
    );
    // Metadata past its bound is refused naming the limit (8 KiB by default).
    let mut req = tonic::Request::new(pb::ListPipelinesRequest {});
    req.metadata_mut()
        .insert("x-padding", "p".repeat(10_000).parse()?);
    let err = c.list_pipelines(req).await.expect_err("too much metadata");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("exceeds the limit of 8192 bytes"),
        "{}",
        err.message()
    );
    // Reads are not limited; another operator has its own budget.
    c.list_pipelines(pb::ListPipelinesRequest {}).await?;
    let mut other = client(&s.coord.endpoint, &s.certs.tls(Role::Operator, "dana")).await?;
    apply_pipeline(&mut other, small, s.tmp.path()).await?;
    Ok(())
}

/// A client that stops reading a server stream is cut off once the stream's queue has been
/// full for `--stream-stall-timeout`, with RESOURCE_EXHAUSTED naming `--max-stream-inflight`;
/// the coordinator goes on serving the same logs to a client that reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_a_stream_is_cut_off_naming_the_limit() -> anyhow::Result<()> {
    let s = Single::start(
        &["a1"],
        &[
            "--max-stream-inflight",
            "1",
            "--stream-stall-timeout",
            "300ms",
        ],
        &[],
    )
    .await?;
    let mut c = s.client().await?;
    // ~31 MB of output: far more than HTTP/2's windows and the socket buffers hold.
    apply_pipeline(
        &mut c,
        "name: chatty\nstages:\n  - { name: talk, run: 'seq 1 4000000' }\n",
        s.tmp.path(),
    )
    .await?;
    let run = start_run(&mut c, "chatty", &[]).await?;
    let done = s.wait_final(&run, Duration::from_secs(180)).await?;
    assert!(
        stage_is(&done, "talk", pb::StageState::Succeeded),
        "{}",
        describe(Some(&done))
    );
    let expected: Vec<u8> = (1..=4_000_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    assert!(
        logs(&mut c, &run, "talk").await? == expected,
        "stored logs differ from seq's output"
    );

    let mut stalled = c
        .follow_logs(pb::FollowLogsRequest {
            run_id: run.clone(),
            stage: "talk".into(),
            attempt: 0,
            follow: false,
        })
        .await?
        .into_inner();
    let first = stalled.message().await?.expect("a first chunk");
    let mut got = first.data.len();
    eventually(
        "the coordinator to end the stream nobody reads",
        Duration::from_secs(60),
        || {
            let text = s.coord.proc.log_text();
            async move {
                text.contains("client stopped reading; stream ended")
                    .then_some(())
            }
        },
    )
    .await?;
    let err = loop {
        match stalled.message().await {
            Ok(Some(chunk)) => got += chunk.data.len(),
            Ok(None) => panic!("the stream ended without an error after {got} bytes"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("--max-stream-inflight 1"),
        "{}",
        err.message()
    );
    assert!(got < expected.len(), "the whole log was sent ({got} bytes)");
    assert!(
        logs(&mut c, &run, "talk").await? == expected,
        "a reading client still gets it all"
    );
    Ok(())
}
