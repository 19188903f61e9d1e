//! The scheduler's plan: labels, slots, oldest-first, lease expiry grace and timeouts.

use std::collections::BTreeSet;

use crate::state::command::*;
use crate::state::{Kind, State};

use super::plan::{PlanInput, plan};

fn state_with(
    agents: &[(&str, &[&str], u32)],
    stage_labels: &[&str],
    timeout: Option<u64>,
) -> State {
    use crate::state::apply;
    let mut st = State::default();
    let mut spec = cd_common::spec::PipelineSpec {
        name: "p".into(),
        source: None,
        env: Default::default(),
        stages: vec![],
        repository: None,
        trigger: Default::default(),
        concurrency: None,
        on_new_run: Default::default(),
    };
    for name in ["a", "b"] {
        spec.stages.push(cd_common::spec::StageSpec {
            name: name.into(),
            run: "true".into(),
            needs: vec![],
            labels: stage_labels.iter().map(|s| s.to_string()).collect(),
            image: None,
            container: Default::default(),
            env: Default::default(),
            timeout_ms: timeout,
            retries: 0,
            environment: None,
            reports: Default::default(),
            gate: None,
            rollback: None,
            on_failure: Default::default(),
            artifacts: vec![],
            monitor: None,
            secrets: Vec::new(),
        });
    }
    let mut i = 0;
    let mut go = |st: &mut State, k: Kind| {
        i += 1;
        assert!(
            apply(st, &Command::new(100 + i, k), i as u64)
                .result
                .is_ok()
        );
    };
    go(
        &mut st,
        Kind::ApplyPipeline(ApplyPipeline {
            name: "p".into(),
            spec_yaml: String::new(),
            file_name: String::new(),
            spec_json: serde_json::to_string(&spec).expect("json"),
        }),
    );
    for (name, labels, slots) in agents {
        go(
            &mut st,
            Kind::RegisterAgent(RegisterAgent {
                name: name.to_string(),
                labels: labels.iter().map(|s| s.to_string()).collect(),
                slots: *slots,
                version: String::new(),
            }),
        );
    }
    go(
        &mut st,
        Kind::StartRun(StartRun {
            pipeline: "p".into(),
            ..Default::default()
        }),
    );
    st
}

fn connected(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn assigned(kinds: &[Kind]) -> Vec<(String, String)> {
    kinds
        .iter()
        .filter_map(|k| match k {
            Kind::AssignStage(a) => Some((a.stage.clone(), a.agent.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn stages_go_only_to_connected_agents_with_the_labels_and_free_slots() {
    let st = state_with(
        &[
            ("x", &["linux"], 1),
            ("y", &["linux", "gpu"], 1),
            ("z", &["gpu"], 4),
        ],
        &["gpu"],
        None,
    );
    let c = connected(&["x", "y"]);
    let out = plan(
        &st,
        &PlanInput {
            connected: &c,
            now_ms: 1000,
            lease_ms: 5_000,
            may_expire: true,
            term: 1,
        },
    );
    // Only y has the label and is connected (z is not connected); it has one slot.
    assert_eq!(assigned(&out), vec![("a".to_string(), "y".to_string())]);
}

#[test]
fn work_spreads_to_the_agent_with_most_free_slots() {
    let st = state_with(&[("x", &[], 1), ("y", &[], 3)], &[], None);
    let c = connected(&["x", "y"]);
    let out = plan(
        &st,
        &PlanInput {
            connected: &c,
            now_ms: 1000,
            lease_ms: 5_000,
            may_expire: true,
            term: 1,
        },
    );
    assert_eq!(
        assigned(&out),
        vec![("a".into(), "y".into()), ("b".into(), "y".into())]
    );
}

fn with_live_attempt(timeout: Option<u64>) -> State {
    let mut st = state_with(&[("x", &[], 2)], &[], timeout);
    let r = crate::state::apply(
        &mut st,
        &Command::new(
            200,
            Kind::AssignStage(AssignStage {
                run_id: "p-1".into(),
                stage: "a".into(),
                attempt: 1,
                agent: "x".into(),
                lease_until_ms: 500,
                term: 1,
            }),
        ),
        99,
    );
    assert!(r.result.is_ok());
    st
}

#[test]
fn lapsed_leases_expire_only_after_the_grace_period() {
    let st = with_live_attempt(None);
    let c = connected(&["x"]);
    let expiries = |may_expire: bool| {
        plan(
            &st,
            &PlanInput {
                connected: &c,
                now_ms: 600,
                lease_ms: 10,
                may_expire,
                term: 1,
            },
        )
        .into_iter()
        .filter(|k| matches!(k, Kind::ExpireAttempt(e) if !e.timed_out))
        .count()
    };
    assert_eq!(expiries(false), 0);
    assert_eq!(expiries(true), 1);
}

#[test]
fn timeouts_fire_even_during_the_grace_period() {
    let st = with_live_attempt(Some(50));
    let c = connected(&["x"]);
    let out = plan(
        &st,
        &PlanInput {
            connected: &c,
            now_ms: 260,
            lease_ms: 10,
            may_expire: false,
            term: 1,
        },
    );
    assert!(out.iter().any(|k| matches!(k, Kind::ExpireAttempt(e) if e.timed_out && e.reason == "timed out after 50ms")), "{out:?}");
    let early = plan(
        &st,
        &PlanInput {
            connected: &c,
            now_ms: 240,
            lease_ms: 10,
            may_expire: false,
            term: 1,
        },
    );
    assert!(!early.iter().any(|k| matches!(k, Kind::ExpireAttempt(_))));
}

#[test]
fn agents_that_stopped_renewing_get_no_new_work() {
    // Both connected; x was last seen at registration (t=102), y never renewed either, but
    // only x is within the lease window at t=5_105.
    let mut st = state_with(&[("x", &[], 4), ("y", &[], 4)], &[], None);
    if let Some(a) = st.agents.get_mut("x") {
        a.last_seen_ms = 5_000;
    }
    let c = connected(&["x", "y"]);
    let out = plan(
        &st,
        &PlanInput {
            connected: &c,
            now_ms: 5_105,
            lease_ms: 1_000,
            may_expire: true,
            term: 1,
        },
    );
    assert_eq!(
        assigned(&out),
        vec![("a".into(), "x".into()), ("b".into(), "x".into())]
    );
}

#[test]
fn container_stages_go_only_to_agents_with_docker() {
    let mut st = state_with(
        &[("plain", &[], 4), ("dockerhost", &["docker"], 4)],
        &[],
        None,
    );
    // Give stage `a` an image, as if the pipeline said `image: busybox:local`.
    if let Some(p) = st.pipelines.get_mut("p") {
        p.versions[0].spec.stages[0].image = Some("busybox:local".into());
    }
    let c = connected(&["plain", "dockerhost"]);
    let input = PlanInput {
        connected: &c,
        now_ms: 1000,
        lease_ms: 5_000,
        may_expire: true,
        term: 1,
    };
    let got = assigned(&plan(&st, &input));
    assert!(
        got.contains(&("a".to_string(), "dockerhost".to_string())),
        "{got:?}"
    );
    assert!(
        !got.iter().any(|(s, agent)| s == "a" && agent == "plain"),
        "{got:?}"
    );
    // Without any Docker agent the container stage waits.
    let only_plain = connected(&["plain"]);
    let got = assigned(&plan(
        &st,
        &PlanInput {
            connected: &only_plain,
            ..input
        },
    ));
    assert!(!got.iter().any(|(s, _)| s == "a"), "{got:?}");
}
