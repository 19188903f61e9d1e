//! Property tests: random command sequences never break the state machine's invariants, and
//! apply is deterministic.

use proptest::prelude::*;

use super::command::*;
use super::testkit::*;
use super::*;

#[derive(Debug, Clone)]
enum Op {
    Start,
    Assign {
        run: usize,
        stage: usize,
        agent: usize,
        skew: u32,
    },
    Begin {
        run: usize,
        stage: usize,
        back: u32,
        agent: usize,
    },
    Report {
        run: usize,
        stage: usize,
        back: u32,
        agent: usize,
        code: i32,
        cancelled: bool,
        acc: f64,
    },
    Expire {
        run: usize,
        stage: usize,
        timed_out: bool,
    },
    Logs {
        run: usize,
        stage: usize,
        seq: u64,
    },
    Cancel {
        run: usize,
    },
    Approve {
        run: usize,
    },
    Reject {
        run: usize,
    },
    Rollback,
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0usize..4;
    let s = 0usize..4;
    prop_oneof![
        2 => Just(Op::Start),
        4 => (r.clone(), s.clone(), 0usize..2, 0u32..2).prop_map(|(run, stage, agent, skew)| Op::Assign { run, stage, agent, skew }),
        2 => (r.clone(), s.clone(), 0u32..2, 0usize..2).prop_map(|(run, stage, back, agent)| Op::Begin { run, stage, back, agent }),
        5 => (r.clone(), s.clone(), 0u32..2, 0usize..2, 0i32..2, any::<bool>(), 0.8f64..1.0)
            .prop_map(|(run, stage, back, agent, code, cancelled, acc)| Op::Report { run, stage, back, agent, code, cancelled, acc }),
        1 => (r.clone(), s.clone(), any::<bool>()).prop_map(|(run, stage, timed_out)| Op::Expire { run, stage, timed_out }),
        2 => (r.clone(), s.clone(), 0u64..4).prop_map(|(run, stage, seq)| Op::Logs { run, stage, seq }),
        1 => r.clone().prop_map(|run| Op::Cancel { run }),
        1 => r.clone().prop_map(|run| Op::Approve { run }),
        1 => r.prop_map(|run| Op::Reject { run }),
        1 => Just(Op::Rollback),
    ]
}

const STAGES: [&str; 4] = ["build", "acceptance", "deploy", "monitor"];
const AGENTS: [&str; 2] = ["a1", "a2"];

fn to_kind(k: &Kit, op: &Op) -> Option<Kind> {
    let runs: Vec<&String> = k.state.runs.keys().collect();
    let pick = |i: usize| runs.get(i % runs.len().max(1)).map(|s| s.to_string());
    let attempts = |run: &str, stage: &str| {
        k.state
            .runs
            .get(run)
            .and_then(|r| r.stage(stage))
            .map_or(0, |s| s.attempts.len() as u32)
    };
    Some(match op {
        Op::Start => Kind::StartRun(StartRun {
            pipeline: "ml".into(),
            revision: "r".into(),
            ..Default::default()
        }),
        Op::Assign {
            run,
            stage,
            agent,
            skew,
        } => {
            let run = pick(*run)?;
            let st = STAGES[*stage];
            Kind::AssignStage(AssignStage {
                attempt: attempts(&run, st) + 1 + skew,
                run_id: run,
                stage: st.into(),
                agent: AGENTS[*agent].into(),
                lease_until_ms: k.now + 50,
                term: 1,
            })
        }
        Op::Begin {
            run,
            stage,
            back,
            agent,
        } => {
            let run = pick(*run)?;
            let st = STAGES[*stage];
            Kind::StartAttempt(Kit::key(
                &run,
                st,
                attempts(&run, st).saturating_sub(*back),
                AGENTS[*agent],
            ))
        }
        Op::Report {
            run,
            stage,
            back,
            agent,
            code,
            cancelled,
            acc,
        } => {
            let run = pick(*run)?;
            let st = STAGES[*stage];
            let mut result = with_accuracy(*acc);
            result.exit_code = *code;
            result.cancelled = *cancelled;
            Kind::ReportResult(ReportResult {
                key: Some(Kit::key(
                    &run,
                    st,
                    attempts(&run, st).saturating_sub(*back),
                    AGENTS[*agent],
                )),
                result: Some(result),
            })
        }
        Op::Expire {
            run,
            stage,
            timed_out,
        } => {
            let run = pick(*run)?;
            let st = STAGES[*stage];
            Kind::ExpireAttempt(ExpireAttempt {
                key: Some(Kit::key(&run, st, attempts(&run, st), "")),
                timed_out: *timed_out,
                reason: "x".into(),
            })
        }
        Op::Logs { run, stage, seq } => {
            let run = pick(*run)?;
            let st = STAGES[*stage];
            Kind::AppendLogs(AppendLogs {
                chunks: vec![LogChunk {
                    key: Some(Kit::key(&run, st, attempts(&run, st), "")),
                    seq: *seq,
                    data: vec![1],
                    encoding: 0,
                }],
            })
        }
        Op::Cancel { run } => Kind::CancelRun(CancelRun {
            run_id: pick(*run)?,
            reason: String::new(),
        }),
        Op::Approve { run } => Kind::Approve(Approve {
            run_id: pick(*run)?,
            stage: "deploy".into(),
            identity: "op".into(),
            comment: String::new(),
        }),
        Op::Reject { run } => Kind::Reject(Reject {
            run_id: pick(*run)?,
            stage: "deploy".into(),
            identity: "op".into(),
            reason: "no".into(),
        }),
        Op::Rollback => Kind::Rollback(Rollback {
            environment: "production".into(),
            reason: String::new(),
        }),
    })
}

fn is_claim_on(kind: &Kind) -> Option<&AttemptKey> {
    match kind {
        Kind::ReportResult(r) => r.key.as_ref(),
        Kind::StartAttempt(k) => Some(k),
        _ => None,
    }
}

fn check_invariants(before: &State, after: &State, kind: &Kind, applied: &Applied) {
    for (id, run) in &after.runs {
        for s in &run.stages {
            // At most one live attempt: every attempt but the last has ended.
            for a in s.attempts.iter().rev().skip(1) {
                assert!(
                    a.result.is_some() || !a.end_reason.is_empty(),
                    "{id}/{}: earlier attempt {} still open",
                    s.name,
                    a.number
                );
            }
            if s.state.is_live() {
                let last = s.attempts.last().expect("live stage has an attempt");
                assert!(last.result.is_none() && last.end_reason.is_empty());
            }
            // A finished stage never changes.
            if let Some(prev) = before.runs.get(id).and_then(|r| r.stage(&s.name))
                && prev.state.is_final()
            {
                assert_eq!(prev, s, "final stage {id}/{} changed", s.name);
            }
        }
        let all_final = run.stages.iter().all(|s| s.state.is_final());
        assert_eq!(
            run.state != RunState::Running,
            all_final,
            "{id}: run state {:?} vs stages",
            run.state
        );
        assert_eq!(after.active.contains(id), run.state == RunState::Running);
    }
    // A claim by anything but the live attempt is refused and changes nothing.
    if let Some(key) = is_claim_on(kind) {
        let live = before
            .runs
            .get(&key.run_id)
            .and_then(|r| r.stage(&key.stage))
            .and_then(|s| s.live_attempt())
            .is_some_and(|a| a.number == key.attempt && a.agent == key.agent);
        if !live {
            assert!(applied.result.is_err(), "stale claim accepted: {key:?}");
            assert_eq!(before, after);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_commands_keep_invariants_and_apply_is_deterministic(ops in prop::collection::vec(op(), 1..120)) {
        let spec = ml_pipeline(0);
        let mut k = Kit::new(&spec);
        let mut log = Vec::new();
        for op in &ops {
            let Some(kind) = to_kind(&k, op) else { continue };
            let before = k.state.clone();
            let applied = k.apply(kind.clone());
            check_invariants(&before, &k.state, &kind, &applied);
            log.push(Command::new(k.now, kind));
        }
        // Replaying the same commands on a fresh state gives the same state.
        let mut replay = Kit::new(&spec);
        for (i, cmd) in log.iter().enumerate() {
            apply(&mut replay.state, cmd, i as u64);
        }
        prop_assert_eq!(&replay.state, &k.state);
        // And a snapshot restores it exactly.
        let snap = k.state.to_snapshot().expect("encodes");
        prop_assert_eq!(State::from_snapshot(&snap).expect("decodes"), k.state);
    }
}
