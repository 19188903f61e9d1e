//! `gate.approvers` and `gate.approval_timeout` in apply: only named approvers decide, and a
//! stage waiting past its timeout fails with that reason (never before the deadline).

use super::command::*;
use super::testkit::*;
use super::*;

const ALICE: &str = "spiffe://conveyor.local/operator/alice";
const BOB: &str = "spiffe://conveyor.local/operator/bob";

/// The ML pipeline whose deploy gate needs one approval by `alice`, within 60 s.
fn kit() -> (Kit, String) {
    let mut spec = ml_pipeline(1);
    let deploy = spec
        .stages
        .iter_mut()
        .find(|s| s.name == "deploy")
        .expect("deploy stage");
    let gate = deploy.gate.as_mut().expect("gate");
    gate.approvers = vec!["alice".into()];
    gate.approval_timeout_ms = Some(60_000);
    let mut k = Kit::new(&spec);
    let run = k.start_run("ml");
    k.run_stage(&run, "build", "a1", exit(0));
    k.run_stage(&run, "acceptance", "a1", with_accuracy(0.95));
    (k, run)
}

fn deploy(k: &Kit, run: &str) -> Stage {
    k.state.runs[run].stage("deploy").expect("deploy").clone()
}

#[test]
fn only_a_named_approver_may_approve_or_reject() {
    let (mut k, run) = kit();
    assert_eq!(deploy(&k, &run).state, StageState::AwaitingApproval);
    let before = k.state.digest();
    for kind in [
        Kind::Approve(Approve {
            run_id: run.clone(),
            stage: "deploy".into(),
            identity: BOB.into(),
            comment: String::new(),
        }),
        Kind::Reject(Reject {
            run_id: run.clone(),
            stage: "deploy".into(),
            identity: BOB.into(),
            reason: "no".into(),
        }),
    ] {
        match k.apply(kind).result {
            Err(StateError::PermissionDenied(m)) => {
                assert!(
                    m.contains(BOB) && m.contains("gate.approvers: alice"),
                    "{m}"
                )
            }
            other => panic!("bob was not refused: {other:?}"),
        }
    }
    assert_eq!(k.state.digest(), before, "a refused decision changed state");
    assert!(k.state.check_approver(&run, "deploy", BOB).is_err());
    assert!(k.state.check_approver(&run, "deploy", ALICE).is_ok());
    k.ok(Kind::Approve(Approve {
        run_id: run.clone(),
        stage: "deploy".into(),
        identity: ALICE.into(),
        comment: "ok".into(),
    }));
    assert_eq!(deploy(&k, &run).state, StageState::Queued);
}

#[test]
fn an_unanswered_approval_fails_the_stage_after_its_timeout_and_not_before() {
    let (mut k, run) = kit();
    let since = deploy(&k, &run).awaiting_since_ms;
    assert!(since > 0);
    let expire = || {
        Kind::ExpireApproval(ExpireApproval {
            run_id: run.clone(),
            stage: "deploy".into(),
        })
    };
    k.set_time(since + 59_000);
    assert!(matches!(
        k.apply(expire()).result,
        Err(StateError::FailedPrecondition(_))
    ));
    assert_eq!(deploy(&k, &run).state, StageState::AwaitingApproval);
    k.set_time(since + 60_000);
    k.ok(expire());
    let s = deploy(&k, &run);
    assert_eq!(s.state, StageState::GateFailed);
    assert_eq!(s.reason, "approval timed out: no decision within 1m");
    assert_eq!(k.state.runs[&run].state, RunState::Failed);
    // A late approval finds nothing to approve.
    let late = k.apply(Kind::Approve(Approve {
        run_id: run.clone(),
        stage: "deploy".into(),
        identity: ALICE.into(),
        comment: String::new(),
    }));
    assert!(matches!(
        late.result,
        Err(StateError::FailedPrecondition(_))
    ));
}

#[test]
fn the_scheduler_proposes_the_expiry_once_the_deadline_has_passed() {
    use crate::scheduler::{PlanInput, plan};
    let (k, run) = kit();
    let since = deploy(&k, &run).awaiting_since_ms;
    let connected = std::collections::BTreeSet::new();
    let expiries = |now_ms: i64| -> Vec<Kind> {
        let input = PlanInput {
            connected: &connected,
            now_ms,
            lease_ms: 10_000,
            may_expire: true,
            term: 1,
        };
        plan(&k.state, &input)
            .into_iter()
            .filter(|p| matches!(p, Kind::ExpireApproval(_)))
            .collect()
    };
    assert!(expiries(since + 59_999).is_empty());
    assert_eq!(
        expiries(since + 60_000),
        vec![Kind::ExpireApproval(ExpireApproval {
            run_id: run.clone(),
            stage: "deploy".into(),
        })]
    );
}
