//! Unit tests of trigger apply: one run per commit and per schedule fire time, however often
//! the same trigger is proposed.

use cd_common::spec::{GitTrigger, ScheduleTrigger, WebhookTrigger};

use super::command::*;
use super::testkit::*;
use super::*;

fn triggered_spec() -> cd_common::spec::PipelineSpec {
    let mut spec = ml_pipeline(0);
    spec.trigger.git = Some(GitTrigger {
        repository: "/repo".into(),
        branch: "main".into(),
        interval_ms: 1000,
    });
    spec.trigger.webhook = Some(WebhookTrigger {
        secret_env: Some("S".into()),
        secret_file: None,
        branch: None,
    });
    spec.trigger.schedule = Some(ScheduleTrigger {
        cron: "* * * * * *".into(),
    });
    spec
}

fn git(sha: &str) -> Kind {
    Kind::TriggerRun(TriggerRun {
        pipeline: "ml".into(),
        source: "git".into(),
        revision: sha.into(),
        commit_at_ms: 42_000,
        fire_ms: 0,
    })
}

fn fire(ms: i64) -> Kind {
    Kind::TriggerRun(TriggerRun {
        pipeline: "ml".into(),
        source: "schedule".into(),
        revision: "main".into(),
        commit_at_ms: 0,
        fire_ms: ms,
    })
}

#[test]
fn a_commit_starts_one_run_pinned_to_it_however_often_it_is_proposed() {
    let mut k = Kit::new(&triggered_spec());
    let first = k.ok(git("aaa"));
    let Outcome::Run(run) = first else {
        panic!("expected a run, got {first:?}")
    };
    let r = &k.state.runs[&run];
    assert_eq!((r.revision.as_str(), r.trigger.as_str()), ("aaa", "git"));
    assert_eq!(r.commit_at_ms, 42_000);
    // A new leader polling again proposes the same commit: no second run.
    assert_eq!(
        k.ok(git("aaa")),
        Outcome::AlreadyTriggered {
            run_id: run.clone()
        }
    );
    assert_eq!(k.state.runs.len(), 1);
    // A webhook delivering the same commit is deduplicated too; a new commit is not.
    let mut hook = git("aaa");
    if let Kind::TriggerRun(t) = &mut hook {
        t.source = "webhook".into();
    }
    assert!(matches!(k.ok(hook), Outcome::AlreadyTriggered { .. }));
    assert!(matches!(k.ok(git("bbb")), Outcome::Run(_)));
    assert_eq!(k.state.runs.len(), 2);
}

#[test]
fn a_schedule_fires_once_per_fire_time() {
    let mut k = Kit::new(&triggered_spec());
    assert!(matches!(k.ok(fire(5_000)), Outcome::Run(_)));
    assert!(matches!(
        k.ok(fire(5_000)),
        Outcome::AlreadyTriggered { .. }
    ));
    assert!(matches!(
        k.ok(fire(4_000)),
        Outcome::AlreadyTriggered { .. }
    ));
    assert!(matches!(k.ok(fire(6_000)), Outcome::Run(_)));
    assert_eq!(k.state.runs.len(), 2);
}

#[test]
fn a_trigger_the_pipeline_does_not_have_is_refused() {
    let mut k = Kit::new(&ml_pipeline(0));
    let err = k.apply(git("aaa")).result.expect_err("refused");
    assert!(err.to_string().contains("no git trigger"), "{err}");
    assert!(k.state.runs.is_empty());
}

#[test]
fn remembered_commits_are_bounded() {
    let mut k = Kit::new(&triggered_spec());
    for i in 0..(triggers::RECENT_COMMITS + 10) {
        k.ok(git(&format!("c{i}")));
    }
    let seen = &k.state.triggers["ml"];
    assert_eq!(seen.commits.len(), triggers::RECENT_COMMITS);
    assert!(seen.has_commit(&format!("c{}", triggers::RECENT_COMMITS + 9)));
    assert!(!seen.has_commit("c0"));
}
