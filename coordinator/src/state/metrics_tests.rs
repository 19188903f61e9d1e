//! MTTR, MTBF and DORA figures over a scripted history with chosen times, checked against
//! values computed by hand in the comments.

use super::super::command::*;
use super::super::testkit::*;
use super::super::{DeploymentStatus, Outcome, Resolution, RunKind};
use super::compute;

/// Runs build and deploy of a new release of `svc`; the deploy's result lands at `deployed_at`.
fn release(
    k: &mut Kit,
    revision: &str,
    commit_at: i64,
    created_at: i64,
    deployed_at: i64,
) -> String {
    k.set_time(created_at);
    let run = k.start_run_with("svc", revision, commit_at);
    k.run_stage(&run, "build", "a1", exit(0));
    k.set_time(deployed_at - 20);
    k.run_stage(&run, "deploy", "a1", exit(0));
    run
}

/// Reports the monitor of `run`: assigned at `assigned_at`, deciding check at `check_at`,
/// result applied 500 ms later.
fn monitor(k: &mut Kit, run: &str, stage: &str, code: i32, assigned_at: i64, check_at: i64) {
    k.set_time(assigned_at);
    k.ok(Kind::AssignStage(AssignStage {
        run_id: run.into(),
        stage: stage.into(),
        attempt: 1,
        agent: "a1".into(),
        lease_until_ms: check_at + 60_000,
        term: 1,
    }));
    k.ok(Kind::StartAttempt(Kit::key(run, stage, 1, "a1")));
    k.set_time(check_at + 500);
    k.ok(Kind::ReportResult(ReportResult {
        key: Some(Kit::key(run, stage, 1, "a1")),
        result: Some(checked(code, check_at)),
    }));
}

fn open_by_hand(k: &mut Kit, at: i64) -> u64 {
    k.set_time(at);
    match k.ok(Kind::OpenIncident(OpenIncident {
        environment: "production".into(),
        reason: "users report errors".into(),
        identity: "operator".into(),
    })) {
        Outcome::Incident(id) => id,
        o => panic!("unexpected {o:?}"),
    }
}

/// The scripted history (ms):
/// - r1: committed 1,000,000, run created 2,000,000, deployed 5,000,000 (lead 4,000,000);
///   monitor passes.
/// - r2: commit time unknown, created 10,000,000, deployed 12,000,000 (lead from creation
///   2,000,000); its monitor fails at 13,000,000 -> incident 1 opens then, the rollback run
///   redeploys r1 at 14,000,000 and its health check passes at 15,000,000 -> resolved then
///   (recovery 2,000,000).
/// - r3: committed 16,000,000, created 17,000,000, deployed 20,000,000 (lead 4,000,000).
/// - incident 2 by hand: 30,000,000 -> 36,000,000 (6,000,000), against r3's deployment.
/// - incident 3 by hand: opened 40,000,000, still open.
fn scripted() -> Kit {
    let mut k = Kit::new(&monitored_pipeline());
    let r1 = release(&mut k, "v1", 1_000_000, 2_000_000, 5_000_000);
    monitor(&mut k, &r1, "monitor", 0, 5_100_000, 6_000_000);
    let r2 = release(&mut k, "v2", 0, 10_000_000, 12_000_000);
    monitor(&mut k, &r2, "monitor", 1, 12_100_000, 13_000_000);
    let rb = k
        .state
        .runs
        .values()
        .find(|r| r.kind == RunKind::Rollback)
        .expect("the failed monitor started a rollback")
        .id
        .clone();
    k.set_time(14_000_000 - 20);
    k.run_stage(&rb, "deploy", "a1", exit(0));
    monitor(&mut k, &rb, "monitor", 0, 14_100_000, 15_000_000);
    let r3 = release(&mut k, "v3", 16_000_000, 17_000_000, 20_000_000);
    monitor(&mut k, &r3, "monitor", 0, 20_100_000, 21_000_000);
    let manual = open_by_hand(&mut k, 30_000_000);
    k.set_time(36_000_000);
    k.ok(Kind::ResolveIncident(ResolveIncident {
        id: manual,
        identity: "operator".into(),
        note: "cache flushed".into(),
    }));
    open_by_hand(&mut k, 40_000_000);
    k
}

#[test]
fn the_scripted_history_is_recorded_as_intended() {
    let k = scripted();
    let d = &k.state.deployments;
    let statuses: Vec<_> = d.iter().map(|d| (d.revision.as_str(), d.status)).collect();
    assert_eq!(
        statuses,
        [
            ("v1", DeploymentStatus::Succeeded),
            ("v2", DeploymentStatus::RolledBack),
            ("v1", DeploymentStatus::Succeeded),
            ("v3", DeploymentStatus::Succeeded),
        ]
    );
    let i = &k.state.incidents;
    assert_eq!(i.len(), 3);
    assert_eq!((i[0].opened_ms, i[0].resolved_ms), (13_000_000, 15_000_000));
    assert_eq!(i[0].resolution, Some(Resolution::Rollback));
    assert_eq!(i[0].deployment, 2, "opened against r2's deployment");
    assert_eq!(i[0].restored_by_deployment, 3);
    assert_eq!((i[1].opened_ms, i[1].resolved_ms), (30_000_000, 36_000_000));
    assert_eq!(i[1].deployment, 4);
    assert!(i[2].is_open());
}

#[test]
fn mttr_and_mtbf_over_all_history() {
    let k = scripted();
    let f = compute(&k.state, "production", 0, 50_000_000);
    // Operating time: first successful deployment 5,000,000 -> now 50,000,000.
    assert_eq!(f.operating_since_ms, 5_000_000);
    assert_eq!(f.operating_ms, 45_000_000);
    // Recovery: 2,000,000 + 6,000,000 + (50,000,000 - 40,000,000 open) = 18,000,000.
    assert_eq!(f.failures, 3);
    assert_eq!(f.open_incidents, 1);
    assert_eq!(f.recovery_ms, 18_000_000);
    // MTTR = 18,000,000 / 3; MTBF = (45,000,000 - 18,000,000) / 3.
    assert_eq!(f.mttr_ms, Some(6_000_000.0));
    assert_eq!(f.mtbf_ms, Some(9_000_000.0));
}

#[test]
fn dora_figures_over_all_history() {
    let k = scripted();
    let f = compute(&k.state, "production", 0, 50_000_000);
    // r1, r2 (rolled back, but it was deployed) and r3; the rollback is not a change.
    assert_eq!(f.deployments, 3);
    // 3 per 45,000,000 ms = 3 / (45,000,000 / 86,400,000) days = 5.76 per day.
    let per_day = f.deployments_per_day.expect("operating time > 0");
    assert!((per_day - 5.76).abs() < 1e-9, "{per_day}");
    // Lead times 4,000,000 (r1), 2,000,000 (r2, from creation), 4,000,000 (r3).
    assert_eq!(f.lead_time_samples, 3);
    assert_eq!(f.lead_time_from_created, 1);
    assert_eq!(f.lead_time_median_ms, Some(4_000_000.0));
    let mean = f.lead_time_mean_ms.expect("samples");
    assert!((mean - 10_000_000.0 / 3.0).abs() < 1e-6, "{mean}");
    // Failed changes: r2 (rolled back) and r3 (incident 2 was opened against it): 2 of 3.
    assert_eq!((f.failed_changes, f.change_deployments), (2, 3));
    assert_eq!(f.change_failure_rate, Some(2.0 / 3.0));
    // Time to restore: median of the resolved ones, 2,000,000 and 6,000,000.
    assert_eq!(f.restored, 2);
    assert_eq!(f.restore_median_ms, Some(4_000_000.0));
}

#[test]
fn a_later_window_counts_only_what_happened_in_it() {
    let k = scripted();
    let f = compute(&k.state, "production", 25_000_000, 50_000_000);
    assert_eq!(f.operating_ms, 25_000_000);
    // Incidents 2 (6,000,000) and 3 (open: 10,000,000).
    assert_eq!(f.failures, 2);
    assert_eq!(f.recovery_ms, 16_000_000);
    assert_eq!(f.mttr_ms, Some(8_000_000.0));
    assert_eq!(f.mtbf_ms, Some(4_500_000.0));
    assert_eq!(f.deployments, 0);
    assert_eq!(f.deployments_per_day, Some(0.0));
    assert_eq!(f.lead_time_median_ms, None);
    assert_eq!(f.change_failure_rate, None);
    assert_eq!(f.restore_median_ms, Some(6_000_000.0));
}

#[test]
fn no_failures_means_no_mttr_and_an_unknown_environment_has_no_operating_time() {
    let k = scripted();
    let early = compute(&k.state, "production", 0, 9_000_000);
    assert_eq!(early.failures, 0);
    assert_eq!((early.mttr_ms, early.mtbf_ms), (None, None));
    assert_eq!(early.operating_ms, 4_000_000);
    let none = compute(&k.state, "staging", 0, 50_000_000);
    assert_eq!(none.operating_ms, 0);
    assert_eq!(none.deployments_per_day, None);
    assert_eq!(none.failures, 0);
}

#[test]
fn an_incident_still_open_at_a_past_now_counts_until_that_now() {
    let k = scripted();
    // At 14,000,000 incident 1 (opened 13,000,000) is open for 1,000,000 so far.
    let f = compute(&k.state, "production", 0, 14_000_000);
    assert_eq!(f.failures, 1);
    assert_eq!(
        f.open_incidents, 1,
        "resolved later, but open at 14,000,000"
    );
    assert_eq!(f.recovery_ms, 1_000_000);
    assert_eq!(f.restored, 0);
}
