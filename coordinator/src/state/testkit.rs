//! Helpers shared by the state machine's unit and property tests.

use std::collections::BTreeMap;

use cd_common::spec::*;

use super::command::*;
use super::{Applied, Outcome, State, apply};

pub fn stage(name: &str, needs: &[&str]) -> StageSpec {
    StageSpec {
        name: name.into(),
        run: format!("echo {name}"),
        needs: needs.iter().map(|s| s.to_string()).collect(),
        labels: vec![],
        image: None,
        container: Default::default(),
        env: BTreeMap::new(),
        timeout_ms: None,
        retries: 0,
        environment: None,
        reports: ReportsSpec::default(),
        gate: None,
        rollback: None,
        on_failure: OnFailure::Fail,
        artifacts: vec![],
        monitor: None,
        secrets: Vec::new(),
    }
}

/// build -> acceptance -> deploy (production, gated on accuracy) -> monitor (rollback).
pub fn ml_pipeline(approvals: u32) -> PipelineSpec {
    let mut acceptance = stage("acceptance", &["build"]);
    acceptance.reports.metrics = Some("metrics.json".into());
    let mut deploy = stage("deploy", &["acceptance"]);
    deploy.environment = Some("production".into());
    deploy.rollback = Some("./deploy.sh --rollback".into());
    deploy.gate = Some(GateSpec {
        tests: None,
        metrics: vec![MetricGate {
            name: "accuracy".into(),
            from: "acceptance".into(),
            min: Some(0.9),
            max: None,
            max_regression: Some(0.02),
        }],
        approvals,
        ..Default::default()
    });
    let mut monitor = stage("monitor", &["deploy"]);
    monitor.on_failure = OnFailure::Rollback;
    PipelineSpec {
        name: "ml".into(),
        source: None,
        env: BTreeMap::new(),
        stages: vec![stage("build", &[]), acceptance, deploy, monitor],
        repository: None,
        trigger: Default::default(),
        concurrency: None,
        on_new_run: Default::default(),
    }
}

/// build -> deploy (production, with a rollback command) -> monitor (health checks every
/// second for a minute, `on_failure: rollback`).
pub fn monitored_pipeline() -> PipelineSpec {
    let mut deploy = stage("deploy", &["build"]);
    deploy.environment = Some("production".into());
    deploy.rollback = Some("./deploy.sh --rollback".into());
    let mut monitor = stage("monitor", &["deploy"]);
    monitor.run = String::new();
    monitor.on_failure = OnFailure::Rollback;
    monitor.monitor = Some(MonitorSpec {
        duration_ms: 60_000,
        interval_ms: 1_000,
        failure_threshold: 3,
        timeout_ms: 1_000,
        probe: Probe::Command {
            command: "./healthcheck.sh".into(),
        },
    });
    PipelineSpec {
        name: "svc".into(),
        source: None,
        env: BTreeMap::new(),
        stages: vec![stage("build", &[]), deploy, monitor],
        repository: None,
        trigger: Default::default(),
        concurrency: None,
        on_new_run: Default::default(),
    }
}

pub struct Kit {
    pub state: State,
    /// Every command applied, in order (the fuzzer's corpus).
    pub history: Vec<Command>,
    pub index: u64,
    pub now: i64,
}

impl Kit {
    pub fn new(spec: &PipelineSpec) -> Kit {
        let mut k = Kit {
            state: State::default(),
            history: Vec::new(),
            index: 0,
            now: 1_000,
        };
        k.ok(Kind::ApplyPipeline(ApplyPipeline {
            name: spec.name.clone(),
            spec_yaml: "yaml".into(),
            file_name: "p.yaml".into(),
            spec_json: serde_json::to_string(spec).expect("spec serialises"),
        }));
        for a in ["a1", "a2"] {
            k.ok(Kind::RegisterAgent(RegisterAgent {
                name: a.into(),
                labels: vec![],
                slots: 4,
                version: "t".into(),
            }));
        }
        k
    }

    pub fn apply(&mut self, kind: Kind) -> Applied {
        self.index += 1;
        self.now += 10;
        let cmd = Command::new(self.now, kind);
        self.history.push(cmd.clone());
        apply(&mut self.state, &cmd, self.index)
    }

    pub fn ok(&mut self, kind: Kind) -> Outcome {
        let a = self.apply(kind);
        match a.result {
            Ok(o) => o,
            Err(e) => panic!("command refused: {e}"),
        }
    }

    /// Stamps the next command with `at_ms` exactly (later ones keep adding 10 ms).
    pub fn set_time(&mut self, at_ms: i64) {
        self.now = at_ms - 10;
    }

    pub fn start_run(&mut self, pipeline: &str) -> String {
        self.start_run_with(pipeline, "r", 0)
    }

    pub fn start_run_with(&mut self, pipeline: &str, revision: &str, commit_at_ms: i64) -> String {
        match self.ok(Kind::StartRun(StartRun {
            pipeline: pipeline.into(),
            revision: revision.into(),
            params: BTreeMap::new(),
            trigger: String::new(),
            commit_at_ms,
        })) {
            Outcome::Run(id) => id,
            o => panic!("unexpected {o:?}"),
        }
    }

    pub fn key(run: &str, stage: &str, attempt: u32, agent: &str) -> AttemptKey {
        AttemptKey {
            run_id: run.into(),
            stage: stage.into(),
            attempt,
            agent: agent.into(),
            term: 1,
        }
    }

    /// Assigns the stage's next attempt to `agent`, starts it and reports `result`.
    pub fn run_stage(&mut self, run: &str, stage: &str, agent: &str, result: StageResult) -> u32 {
        let attempt = self.state.runs[run]
            .stage(stage)
            .map_or(0, |s| s.attempts.len()) as u32
            + 1;
        self.ok(Kind::AssignStage(AssignStage {
            run_id: run.into(),
            stage: stage.into(),
            attempt,
            agent: agent.into(),
            lease_until_ms: self.now + 10_000,
            term: 1,
        }));
        self.ok(Kind::StartAttempt(Self::key(run, stage, attempt, agent)));
        self.ok(Kind::ReportResult(ReportResult {
            key: Some(Self::key(run, stage, attempt, agent)),
            result: Some(result),
        }));
        attempt
    }
}

pub fn exit(code: i32) -> StageResult {
    StageResult {
        exit_code: code,
        duration_ms: 5,
        tests: None,
        metrics: BTreeMap::new(),
        cancelled: false,
        errors: vec![],
        oom_killed: false,
        check_at_ms: 0,
    }
}

/// A monitor's result: `code` 0 passed, else failed, deciding check at `check_at_ms`.
pub fn checked(code: i32, check_at_ms: i64) -> StageResult {
    let mut r = exit(code);
    r.check_at_ms = check_at_ms;
    r
}

pub fn with_accuracy(acc: f64) -> StageResult {
    let mut r = exit(0);
    r.metrics.insert("accuracy".into(), acc);
    r
}
