//! Authorization against a real coordinator: one table of callers that must be refused, each
//! with a clear error, and for each the replicated state (applied index and digest) is checked
//! unchanged afterwards, so nothing was written.

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

/// What the caller tries.
#[derive(Clone, Copy, Debug)]
enum Call {
    ListRuns,
    StartRun,
    RaftSend,
    Heartbeat { agent: &'static str },
    ReportResult { agent: &'static str },
}

/// How it must fail.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Refused before any service (TLS or HTTP/2 level); the error text names one of these.
    Connection(&'static [&'static str]),
    /// A gRPC status with this code whose message contains all of these.
    Status(Code, &'static [&'static str]),
}

enum Who {
    Plaintext,
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
        Call::StartRun => {
            ControlServiceClient::new(ch)
                .start_run(pb::StartRunRequest {
                    pipeline: "owned".into(),
                    revision: "x".into(),
                    ..Default::default()
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
        (Expect::Connection(words), _) => {
            let text = err
                .chain()
                .map(|e| format!("{e:?}"))
                .collect::<Vec<_>>()
                .join(" / ")
                .to_lowercase();
            eprintln!("{}: refused: {text}", case.name);
            if let Some(s) = status
                && matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated)
            {
                return Err(format!("reached the authorization layer: {s:?}"));
            }
            if words.iter().any(|w| text.contains(w)) {
                Ok(())
            } else {
                Err(format!("error `{text}` names none of {words:?}"))
            }
        }
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

    let other_ca = Certs::new(&s.path("other-ca"))?;
    let viewer = s.certs.tls(Role::Viewer, "ann");
    let op = s.op.clone();
    const DAY: i64 = 86_400;
    let cases = vec![
        Case {
            name: "plaintext client",
            who: Who::Plaintext,
            call: Call::ListRuns,
            expect: Expect::Connection(&["frame_size_error", "connection closed"]),
        },
        Case {
            name: "certificate from another CA",
            // Trusts our CA (so the client accepts the server), presents another CA's leaf.
            who: Who::Tls(TlsPaths {
                ca: s.certs.dir.join("ca.pem"),
                ..other_ca.tls(Role::Operator, "mallory")
            }),
            call: Call::StartRun,
            expect: Expect::Connection(&[
                "unknownca",
                "decrypterror",
                "badsignature",
                "connection closed",
            ]),
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
            expect: Expect::Connection(&["certificateexpired", "connection closed"]),
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

    let mut failures = Vec::new();
    for case in &cases {
        let before = digest(&ep, &op).await?;
        let result = perform(&ep, &case.who, case.call, &assignment).await;
        if let Err(why) = check(case, result) {
            failures.push(format!("{}: {why}", case.name));
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
    Ok(())
}
