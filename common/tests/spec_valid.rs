//! Valid pipeline files parse to exactly the expected spec.

use std::collections::BTreeMap;

use cd_common::spec::{
    GateSpec, MetricGate, OnFailure, PipelineSpec, ReportsSpec, SourceSpec, StageSpec, TestsGate,
    parse,
};

/// The example from DESIGN.md ("Pipelines"), verbatim.
const DESIGN_EXAMPLE: &str = r#"name: recommender
stages:
  - name: build
    image: conveyor/builder:local      # omit to run as a host process
    labels: [linux]
    run: make build
    artifacts: [dist/]
    timeout: 20m
    retries: 1
  - name: test
    needs: [build]
    run: make test
    reports: { junit: reports/junit.xml }
  - name: deploy-staging
    needs: [test]
    environment: staging
    run: ./deploy.sh staging
  - name: acceptance
    needs: [deploy-staging]
    run: ./acceptance.sh
    reports: { junit: acceptance.xml, metrics: metrics.json }
  - name: deploy-production
    needs: [acceptance]
    environment: production
    gate:
      tests: { from: [acceptance], min_pass_rate: 1.0 }
      metrics:
        - { name: accuracy, from: acceptance, min: 0.90, max_regression: 0.01 }  # vs production
      approvals: 1
    run: ./deploy.sh production
    rollback: ./deploy.sh production --rollback
  - name: monitor
    needs: [deploy-production]
    run: ./healthcheck.sh
    on_failure: rollback
"#;

fn stage(name: &str, run: &str, needs: &[&str]) -> StageSpec {
    StageSpec {
        name: name.to_string(),
        run: run.to_string(),
        needs: needs.iter().map(|s| s.to_string()).collect(),
        labels: Vec::new(),
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
        artifacts: Vec::new(),
    }
}

#[test]
fn design_example_parses_to_the_expected_spec() {
    let spec = parse(DESIGN_EXAMPLE, "recommender.yaml").expect("valid");

    let build = StageSpec {
        image: Some("conveyor/builder:local".to_string()),
        container: Default::default(),
        labels: vec!["linux".to_string()],
        artifacts: vec!["dist/".to_string()],
        timeout_ms: Some(20 * 60 * 1000),
        retries: 1,
        ..stage("build", "make build", &[])
    };
    let test = StageSpec {
        reports: ReportsSpec {
            junit: Some("reports/junit.xml".to_string()),
            metrics: None,
        },
        ..stage("test", "make test", &["build"])
    };
    let staging = StageSpec {
        environment: Some("staging".to_string()),
        ..stage("deploy-staging", "./deploy.sh staging", &["test"])
    };
    let acceptance = StageSpec {
        reports: ReportsSpec {
            junit: Some("acceptance.xml".to_string()),
            metrics: Some("metrics.json".to_string()),
        },
        ..stage("acceptance", "./acceptance.sh", &["deploy-staging"])
    };
    let production = StageSpec {
        environment: Some("production".to_string()),
        gate: Some(GateSpec {
            tests: Some(TestsGate {
                from: vec!["acceptance".to_string()],
                min_pass_rate: 1.0,
            }),
            metrics: vec![MetricGate {
                name: "accuracy".to_string(),
                from: "acceptance".to_string(),
                min: Some(0.90),
                max: None,
                max_regression: Some(0.01),
            }],
            approvals: 1,
        }),
        rollback: Some("./deploy.sh production --rollback".to_string()),
        ..stage(
            "deploy-production",
            "./deploy.sh production",
            &["acceptance"],
        )
    };
    let monitor = StageSpec {
        on_failure: OnFailure::Rollback,
        ..stage("monitor", "./healthcheck.sh", &["deploy-production"])
    };
    let expected = PipelineSpec {
        name: "recommender".to_string(),
        source: None,
        env: BTreeMap::new(),
        stages: vec![build, test, staging, acceptance, production, monitor],
    };
    assert_eq!(spec, expected);
    assert_eq!(
        spec.stage("monitor").map(|s| s.on_failure),
        Some(OnFailure::Rollback)
    );
}

#[test]
fn spec_survives_a_serde_round_trip() {
    let spec = parse(DESIGN_EXAMPLE, "recommender.yaml").expect("valid");
    let json = serde_json::to_string(&spec).expect("serialise");
    let back: PipelineSpec = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, spec);
}

#[test]
fn env_values_keep_their_source_text() {
    let yaml = r#"
name: p
env:
  VERSION: 1.10
  COUNT: 3
  HEX: 0x1F
  DEBUG: true
  NAME: "conveyor"
stages:
  - name: a
    run: env
    env:
      RATIO: 0.50
      EMPTY: ""
"#;
    let spec = parse(yaml, "p.yaml").expect("valid");
    let env: Vec<(&str, &str)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("COUNT", "3"),
            ("DEBUG", "true"),
            ("HEX", "0x1F"),
            ("NAME", "conveyor"),
            ("VERSION", "1.10"),
        ]
    );
    assert_eq!(spec.stages[0].env["RATIO"], "0.50");
    assert_eq!(spec.stages[0].env["EMPTY"], "");
}

#[test]
fn defaults_and_optional_fields() {
    let yaml = r#"
name: p
source: { path: ./src }
stages:
  - name: a
    run: make
  - name: deploy
    needs: [a]
    environment: prod
    run: ./deploy.sh
  - name: check
    needs: [deploy]
    run: ./check.sh
    on_failure: rollback
    gate:
      tests: { from: [a] }
      metrics:
        - { name: latency_ms, from: a, max: 250 }
"#;
    let mut spec = parse(yaml, "p.yaml").expect("valid");
    assert_eq!(
        spec.source,
        Some(SourceSpec {
            path: "./src".to_string()
        })
    );
    let check = spec.stage("check").expect("check");
    let gate = check.gate.as_ref().expect("gate");
    assert_eq!(gate.tests.as_ref().map(|t| t.min_pass_rate), Some(1.0));
    assert_eq!(gate.metrics[0].max, Some(250.0));
    assert_eq!(gate.approvals, 0);
    assert_eq!(spec.stages[0].retries, 0);
    assert_eq!(spec.stages[0].on_failure, OnFailure::Fail);

    spec.resolve_source(std::path::Path::new("/pipelines"));
    assert_eq!(
        spec.source.map(|s| s.path),
        Some("/pipelines/./src".to_string())
    );
}

#[test]
fn absolute_source_path_and_upstream_through_chains() {
    let yaml = r#"
name: p
source:
  path: /srv/app
stages:
  - { name: a, run: x }
  - { name: b, run: x, needs: [a] }
  - { name: c, run: x, needs: [b] }
  - name: d
    run: x
    needs: [c]
    gate:
      tests: { from: [a, b, c], min_pass_rate: 0 }
"#;
    let mut spec = parse(yaml, "p.yaml").expect("valid");
    spec.resolve_source(std::path::Path::new("/elsewhere"));
    assert_eq!(spec.source.map(|s| s.path), Some("/srv/app".to_string()));
}

#[test]
fn durations_in_stages() {
    for (text, ms) in [
        ("500ms", 500),
        ("45s", 45_000),
        ("1h30m", 5_400_000),
        ("1d", 86_400_000),
    ] {
        let yaml = format!("name: p\nstages:\n  - name: a\n    run: x\n    timeout: {text}\n");
        let spec = parse(&yaml, "p.yaml").expect("valid");
        assert_eq!(spec.stages[0].timeout_ms, Some(ms), "{text}");
    }
}

#[test]
fn merge_keys_share_stage_defaults() {
    let yaml = r#"
name: p
x-defaults: &defaults
  timeout: 10m
  retries: 2
stages:
  - name: a
    <<: *defaults
    run: make
    retries: 0
"#;
    // `x-defaults` is not a known top-level field: anchors must live somewhere valid.
    let err = parse(yaml, "p.yaml").expect_err("unknown field");
    assert_eq!(err.field, "x-defaults");

    let yaml = r#"
name: p
stages:
  - name: a
    run: make
    env: &env { A: "1" }
    labels: [linux]
  - <<: { timeout: 10m, retries: 2, env: *env }
    name: b
    run: make test
    retries: 0
"#;
    let spec = parse(yaml, "p.yaml").expect("valid");
    let b = &spec.stages[1];
    assert_eq!(b.timeout_ms, Some(600_000));
    assert_eq!(b.retries, 0, "the stage's own value wins");
    assert_eq!(b.env["A"], "1");
}
