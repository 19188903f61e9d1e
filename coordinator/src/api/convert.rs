//! Conversions between domain types and generated `cd.v1` messages, one place per type, so
//! nothing below `api/` sees a generated type (STYLE.md, "Generated types stay at the edge").

use std::collections::HashMap;

use cd_common::spec::{MonitorSpec, Probe};
use cd_proto::v1 as pb;

use crate::state::metrics::Figures;
use crate::state::{
    self, Attempt, Deployment, Incident, RunKind, RunState, Stage, StageResult, StageState, State,
    TestCounts,
};

pub fn stage_state(s: StageState) -> pb::StageState {
    match s {
        StageState::Pending => pb::StageState::Pending,
        StageState::Queued => pb::StageState::Queued,
        StageState::Assigned => pb::StageState::Assigned,
        StageState::Running => pb::StageState::Running,
        StageState::Succeeded => pb::StageState::Succeeded,
        StageState::Failed => pb::StageState::Failed,
        StageState::Cancelled => pb::StageState::Cancelled,
        StageState::AwaitingApproval => pb::StageState::AwaitingApproval,
        StageState::GateFailed => pb::StageState::GateFailed,
        StageState::Skipped => pb::StageState::Skipped,
    }
}

pub fn run_state(s: RunState) -> pb::RunState {
    match s {
        RunState::Running => pb::RunState::Running,
        RunState::Succeeded => pb::RunState::Succeeded,
        RunState::Failed => pb::RunState::Failed,
        RunState::Cancelled => pb::RunState::Cancelled,
    }
}

fn kind(k: RunKind) -> String {
    match k {
        RunKind::Release => "release".into(),
        RunKind::Rollback => "rollback".into(),
    }
}

pub fn result_to_pb(r: &StageResult) -> pb::StageResult {
    pb::StageResult {
        exit_code: r.exit_code,
        duration_ms: r.duration_ms,
        tests: r.tests.as_ref().map(|t| pb::TestCounts {
            total: t.total,
            passed: t.passed,
            failed: t.failed,
            errors: t.errors,
            skipped: t.skipped,
        }),
        metrics: r.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        cancelled: r.cancelled,
        errors: r.errors.clone(),
        oom_killed: r.oom_killed,
        check_at_ms: r.check_at_ms,
    }
}

pub fn result_from_pb(r: pb::StageResult) -> StageResult {
    StageResult {
        exit_code: r.exit_code,
        duration_ms: r.duration_ms,
        tests: r.tests.map(|t| TestCounts {
            total: t.total,
            passed: t.passed,
            failed: t.failed,
            errors: t.errors,
            skipped: t.skipped,
        }),
        metrics: r.metrics.into_iter().collect(),
        cancelled: r.cancelled,
        errors: r.errors,
        oom_killed: r.oom_killed,
        check_at_ms: r.check_at_ms,
    }
}

fn attempt(a: &Attempt) -> pb::Attempt {
    pb::Attempt {
        number: a.number,
        agent: a.agent.clone(),
        assigned_ms: a.assigned_ms,
        started_ms: a.started_ms,
        finished_ms: a.finished_ms,
        lease_until_ms: a.lease_until_ms,
        result: a.result.as_ref().map(result_to_pb),
        end_reason: a.end_reason.clone(),
    }
}

fn stage(st: &State, run: &state::Run, s: &Stage) -> pb::Stage {
    let spec = st.stage_spec(run, &s.name);
    pb::Stage {
        name: s.name.clone(),
        state: stage_state(s.state) as i32,
        attempts: s.attempts.iter().map(attempt).collect(),
        reason: s.reason.clone(),
        gate: s.gate.as_ref().map(|g| pb::GateDecision {
            outcome: g.outcome.as_str().into(),
            reasons: g.reasons.clone(),
            at_ms: g.at_ms,
        }),
        approvals: s
            .approvals
            .iter()
            .map(|a| pb::Approval {
                identity: a.identity.clone(),
                approved: a.approved,
                comment: a.comment.clone(),
                at_ms: a.at_ms,
            })
            .collect(),
        environment: spec
            .and_then(|sp| sp.environment.clone())
            .unwrap_or_default(),
        needs: spec.map(|sp| sp.needs.clone()).unwrap_or_default(),
        waiting_for: s.waiting_for.clone(),
    }
}

pub fn run(st: &State, r: &state::Run) -> pb::Run {
    pb::Run {
        id: r.id.clone(),
        pipeline: r.pipeline.clone(),
        pipeline_version: r.pipeline_version,
        revision: r.revision.clone(),
        trigger: r.trigger.clone(),
        state: run_state(r.state) as i32,
        created_ms: r.created_ms,
        finished_ms: r.finished_ms,
        stages: r.stages.iter().map(|s| stage(st, r, s)).collect(),
        params: r
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        kind: kind(r.kind),
        reason: r.reason.clone(),
        commit_at_ms: r.commit_at_ms,
        queued: r.queued,
        superseded_by: r.superseded_by.clone(),
    }
}

pub fn deployment(d: &Deployment) -> pb::Deployment {
    pb::Deployment {
        id: d.id,
        environment: d.environment.clone(),
        run_id: d.run_id.clone(),
        pipeline: d.pipeline.clone(),
        revision: d.revision.clone(),
        stage: d.stage.clone(),
        status: d.status.as_str().into(),
        started_ms: d.started_ms,
        finished_ms: d.finished_ms,
        metrics: d.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        kind: kind(d.kind),
        restores: d.restores,
    }
}

pub fn pipeline(st: &State, p: &state::Pipeline, v: &state::PipelineVersion) -> pb::Pipeline {
    let t = &v.spec.trigger;
    let mut triggers = Vec::new();
    if let Some(g) = &t.git {
        triggers.push(format!(
            "git {} {} every {}",
            g.repository,
            g.branch,
            cd_common::duration::format_ms(g.interval_ms)
        ));
    }
    if t.webhook.is_some() {
        triggers.push("webhook".to_string());
    }
    if let Some(s) = &t.schedule {
        triggers.push(format!("schedule {}", s.cron));
    }
    let seen = st.triggers.get(&p.name);
    let last = seen.and_then(|s| s.commits.last());
    pb::Pipeline {
        name: p.name.clone(),
        version: v.version,
        spec_yaml: v.spec_yaml.clone(),
        file_name: v.file_name.clone(),
        created_ms: v.created_ms,
        stage_names: v.spec.stages.iter().map(|s| s.name.clone()).collect(),
        triggers,
        webhook_refused: 0,
        last_commit: last.map(|(c, _)| c.clone()).unwrap_or_default(),
        last_commit_run: last.map(|(_, r)| r.clone()).unwrap_or_default(),
        last_fire_ms: seen.map_or(0, |s| s.last_fire_ms),
        concurrency: v.spec.concurrency.unwrap_or(0),
        on_new_run: v.spec.on_new_run.as_str().to_string(),
    }
}

/// The command of a monitoring stage's assignment: agents that know `monitor` ignore it; an
/// older one runs it, and the stage fails instead of passing without a single check.
pub const OLD_AGENT_MONITOR: &str =
    "echo 'this agent does not support monitoring stages (monitor:); upgrade cd-agent' >&2; exit 1";

/// The assignment an agent receives for a live attempt: everything it needs to run the stage
/// without asking again. Env precedence: pipeline `env`, then stage `env`, then run params.
pub fn assignment(st: &State, run_id: &str, stage_name: &str, n: u32) -> Option<pb::Assignment> {
    let run = st.runs.get(run_id)?;
    let stage = run.stage(stage_name)?;
    let a = stage.attempts.iter().find(|a| a.number == n)?;
    let spec = st.stage_spec(run, stage_name)?;
    let pipeline_spec = st
        .pipelines
        .get(&run.pipeline)?
        .version(run.pipeline_version)
        .map(|v| &v.spec);
    let mut env: HashMap<String, String> = HashMap::new();
    if let Some(p) = pipeline_spec {
        env.extend(p.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(run.params.iter().map(|(k, v)| (k.clone(), v.clone())));
    Some(pb::Assignment {
        attempt: Some(pb::AttemptRef {
            run_id: run.id.clone(),
            stage: stage_name.to_string(),
            attempt: n,
            fencing_term: a.term,
        }),
        pipeline: run.pipeline.clone(),
        revision: run.revision.clone(),
        command: match &spec.monitor {
            // An agent too old to know `monitor` runs this instead of passing silently.
            Some(_) => OLD_AGENT_MONITOR.to_string(),
            None => spec.run.clone(),
        },
        env,
        timeout_ms: spec.timeout_ms.unwrap_or(0),
        lease_until_ms: a.lease_until_ms,
        reports: Some(pb::Reports {
            junit: spec.reports.junit.clone().unwrap_or_default(),
            metrics: spec.reports.metrics.clone().unwrap_or_default(),
        }),
        source_path: pipeline_spec
            .and_then(|p| p.source.as_ref())
            .map(|s| s.path.clone())
            .unwrap_or_default(),
        environment: spec.environment.clone().unwrap_or_default(),
        repository: pipeline_spec
            .and_then(|p| p.checkout_repository())
            .unwrap_or_default()
            .to_string(),
        image: spec.image.clone().unwrap_or_default(),
        container: spec.image.as_ref().map(|_| {
            let c = &spec.container;
            pb::ContainerOptions {
                image_pull: c.image_pull.as_str().into(),
                cpus: c.cpus.unwrap_or(0.0),
                memory_bytes: c.memory_bytes.unwrap_or(0),
                network: c.network.as_str().into(),
                user: c.user.clone().unwrap_or_default(),
                docker_socket: c.docker_socket,
            }
        }),
        monitor: spec.monitor.as_ref().map(monitor),
        // Filled in by the agent API just before the push (`masking::attach_secrets`).
        secrets: HashMap::new(),
    })
}

fn monitor(m: &MonitorSpec) -> pb::MonitorSpec {
    pb::MonitorSpec {
        duration_ms: m.duration_ms,
        interval_ms: m.interval_ms,
        failure_threshold: m.failure_threshold,
        timeout_ms: m.timeout_ms,
        probe: Some(match &m.probe {
            Probe::Command { command } => pb::monitor_spec::Probe::Command(command.clone()),
            Probe::Http { url, expect_status } => pb::monitor_spec::Probe::Http(pb::HttpProbe {
                url: url.clone(),
                expect_status: u32::from(*expect_status),
            }),
        }),
    }
}

pub fn incident(i: &Incident) -> pb::Incident {
    pb::Incident {
        id: i.id,
        environment: i.environment.clone(),
        opened_ms: i.opened_ms,
        resolved_ms: i.resolved_ms,
        reason: i.reason.clone(),
        opened_by: i.opened_by.clone(),
        deployment: i.deployment,
        run_id: i.run_id.clone(),
        stage: i.stage.clone(),
        rollback_run: i.rollback_run.clone(),
        status: i.resolution.map_or("open", |r| r.as_str()).into(),
        resolved_by: i.resolved_by.clone(),
        restored_by_deployment: i.restored_by_deployment,
        note: i.note.clone(),
    }
}

pub fn metrics(f: &Figures) -> pb::Metrics {
    pb::Metrics {
        environment: f.environment.clone(),
        since_ms: f.since_ms,
        now_ms: f.now_ms,
        operating_since_ms: f.operating_since_ms,
        operating_ms: f.operating_ms,
        failures: f.failures,
        open_incidents: f.open_incidents,
        recovery_ms: f.recovery_ms,
        mttr_ms: f.mttr_ms,
        mtbf_ms: f.mtbf_ms,
        deployments: f.deployments,
        deployments_per_day: f.deployments_per_day,
        lead_time_median_ms: f.lead_time_median_ms,
        lead_time_mean_ms: f.lead_time_mean_ms,
        lead_time_samples: f.lead_time_samples,
        lead_time_from_created: f.lead_time_from_created,
        change_deployments: f.change_deployments,
        failed_changes: f.failed_changes,
        change_failure_rate: f.change_failure_rate,
        restore_median_ms: f.restore_median_ms,
        restored: f.restored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::command::{AssignStage, Kind};
    use crate::state::testkit::{Kit, exit, monitored_pipeline};

    #[test]
    fn a_monitor_stage_is_assigned_with_its_checks_and_a_command_old_agents_fail() {
        let mut k = Kit::new(&monitored_pipeline());
        let run = k.start_run("svc");
        k.run_stage(&run, "build", "a1", exit(0));
        k.run_stage(&run, "deploy", "a1", exit(0));
        k.ok(Kind::AssignStage(AssignStage {
            run_id: run.clone(),
            stage: "monitor".into(),
            attempt: 1,
            agent: "a1".into(),
            lease_until_ms: k.now + 10_000,
            term: 1,
        }));
        let a = assignment(&k.state, &run, "monitor", 1).expect("assignment");
        assert_eq!(a.command, OLD_AGENT_MONITOR);
        let m = a.monitor.expect("monitor");
        assert_eq!(
            (
                m.duration_ms,
                m.interval_ms,
                m.failure_threshold,
                m.timeout_ms
            ),
            (60_000, 1_000, 3, 1_000)
        );
        assert_eq!(
            m.probe,
            Some(pb::monitor_spec::Probe::Command("./healthcheck.sh".into()))
        );
        let deploy = assignment(&k.state, &run, "deploy", 1).expect("assignment");
        assert!(deploy.monitor.is_none());
        assert_eq!(deploy.command, "echo deploy");
    }
}
