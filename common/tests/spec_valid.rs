//! Valid pipeline files parse to exactly the expected spec.

use std::collections::BTreeMap;

use cd_common::spec::{
    ContainerSpec, GateSpec, ImagePull, MetricGate, MonitorSpec, NetworkMode, OnFailure,
    PipelineSpec, Probe, ReportsSpec, SourceSpec, StageSpec, TestsGate, parse,
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
      approvers: [alice, "spiffe://conveyor.local/operator/bob", "role:operator"]
      approval_timeout: 30m
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
        monitor: None,
        secrets: Vec::new(),
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
            approvers: vec![
                "alice".to_string(),
                "spiffe://conveyor.local/operator/bob".to_string(),
                "role:operator".to_string(),
            ],
            approval_timeout_ms: Some(30 * 60 * 1000),
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
        repository: None,
        trigger: Default::default(),
        concurrency: None,
        on_new_run: Default::default(),
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
fn secrets_are_listed_names_and_absent_from_the_stored_form_when_unused() {
    let yaml = "name: p\nstages:\n  - name: a\n    run: x\n    secrets: [TOKEN, _B2]\n  - name: b\n    run: y\n";
    let spec = parse(yaml, "p.yaml").expect("valid");
    assert_eq!(spec.stages[0].secrets, ["TOKEN", "_B2"]);
    assert!(spec.stages[1].secrets.is_empty());
    // A stage without secrets serialises as before (stored specs keep their form).
    let json = serde_json::to_value(&spec.stages[1]).expect("json");
    assert!(json.get("secrets").is_none(), "{json}");
    let back: PipelineSpec =
        serde_json::from_str(&serde_json::to_string(&spec).expect("json")).expect("back");
    assert_eq!(back, spec);
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

/// A stage that sets every container option.
const CONTAINER_EXAMPLE: &str = r#"name: p
stages:
  - name: build
    image: ghcr.io/acme/builder:1.4
    image_pull: always
    resources:
      cpus: 0.5
      memory: 256m
    network: none
    user: "1000:1000"
    docker: true
    run: make build
  - name: plain
    image: alpine:3.20
    run: make test
"#;

#[test]
fn container_options_parse_to_the_exact_container_spec() {
    let spec = parse(CONTAINER_EXAMPLE, "p.yaml").expect("valid");
    let build = StageSpec {
        image: Some("ghcr.io/acme/builder:1.4".to_string()),
        container: ContainerSpec {
            image_pull: ImagePull::Always,
            cpus: Some(0.5),
            memory_bytes: Some(268_435_456),
            network: NetworkMode::None,
            user: Some("1000:1000".to_string()),
            docker_socket: true,
        },
        ..stage("build", "make build", &[])
    };
    let plain = StageSpec {
        image: Some("alpine:3.20".to_string()),
        ..stage("plain", "make test", &[])
    };
    assert_eq!(spec.stages, vec![build, plain]);
    // The defaults a stage with only an image gets.
    assert_eq!(
        spec.stages[1].container,
        ContainerSpec {
            image_pull: ImagePull::IfMissing,
            cpus: None,
            memory_bytes: None,
            network: NetworkMode::Bridge,
            user: None,
            docker_socket: false,
        }
    );
    let json = serde_json::to_string(&spec).expect("serialise");
    let back: PipelineSpec = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, spec);
}

#[test]
fn container_option_values() {
    let container = |options: &str| {
        let yaml =
            format!("name: p\nstages:\n  - name: a\n    image: alpine\n    run: x\n{options}");
        match parse(&yaml, "p.yaml") {
            Ok(spec) => spec.stages[0].container.clone(),
            Err(err) => panic!("{options:?}: {err}"),
        }
    };
    for (memory, bytes) in [
        ("256m", 268_435_456),
        ("256M", 268_435_456),
        ("256Mi", 268_435_456),
        ("256MiB", 268_435_456),
        ("1g", 1_073_741_824),
        ("1.5g", 1_610_612_736),
        ("0.1g", 107_374_182),
        ("6291456", 6_291_456),
        ("\"8388608\"", 8_388_608),
        ("6m", 6_291_456),
        ("1t", 1_099_511_627_776),
        ("1024G", 1_099_511_627_776),
    ] {
        let c = container(&format!("    resources: {{ memory: {memory} }}\n"));
        assert_eq!(c.memory_bytes, Some(bytes), "{memory}");
        assert_eq!(c.cpus, None);
    }
    for (cpus, value) in [
        ("2", 2.0),
        ("0.01", 0.01),
        ("1024", 1024.0),
        ("\"1.5\"", 1.5),
    ] {
        let c = container(&format!("    resources: {{ cpus: {cpus} }}\n"));
        assert_eq!(c.cpus, Some(value), "{cpus}");
    }
    for (word, pull) in [
        ("never", ImagePull::Never),
        ("if-missing", ImagePull::IfMissing),
        ("always", ImagePull::Always),
    ] {
        assert_eq!(
            container(&format!("    image_pull: {word}\n")).image_pull,
            pull
        );
    }
    for (word, network) in [
        ("none", NetworkMode::None),
        ("bridge", NetworkMode::Bridge),
        ("host", NetworkMode::Host),
    ] {
        assert_eq!(
            container(&format!("    network: {word}\n")).network,
            network
        );
    }
    for (user, expected) in [
        ("1000", "1000"),
        ("\"1000:1000\"", "1000:1000"),
        ("1000:1000", "1000:1000"),
        ("app", "app"),
        ("www-data:staff", "www-data:staff"),
    ] {
        let c = container(&format!("    user: {user}\n"));
        assert_eq!(c.user.as_deref(), Some(expected), "{user}");
    }
    assert!(!container("    docker: false\n").docker_socket);
    assert_eq!(
        container("    resources: {}\n"),
        ContainerSpec::default(),
        "an empty `resources` sets no limits"
    );
}

#[test]
fn image_references_docker_accepts() {
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    for image in [
        "alpine".to_string(),
        "alpine:3.20".to_string(),
        "library/ubuntu:22.04".to_string(),
        "registry.example.com:5000/team/app:v1.2.3-rc_1".to_string(),
        "localhost:5000/app".to_string(),
        format!("alpine@{digest}"),
        format!("ghcr.io/acme/app:1.4@{digest}"),
        format!("{}/app", "a".repeat(251)),
    ] {
        let yaml = format!("name: p\nstages:\n  - name: a\n    image: \"{image}\"\n    run: x\n");
        let spec = parse(&yaml, "p.yaml").unwrap_or_else(|e| panic!("{image}: {e}"));
        assert_eq!(spec.stages[0].image.as_deref(), Some(image.as_str()));
    }
}

#[test]
fn monitor_stages_parse_with_their_defaults() {
    let yaml = "name: p\nstages:\n  - name: deploy\n    run: ./deploy.sh\n    environment: production\n  - name: watch\n    needs: [deploy]\n    on_failure: rollback\n    monitor:\n      duration: 2m\n      interval: 10s\n      command: ./healthcheck.sh\n  - name: probe\n    needs: [deploy]\n    monitor:\n      duration: 1m\n      interval: 250ms\n      failure_threshold: 5\n      http: { url: \"http://127.0.0.1:8080/health\", expect_status: 204, timeout: 2s }\n";
    let spec = parse(yaml, "p.yaml").expect("valid");
    let watch = spec.stage("watch").expect("watch");
    assert_eq!(watch.run, "", "a monitoring stage has no script");
    assert_eq!(
        watch.monitor,
        Some(MonitorSpec {
            duration_ms: 120_000,
            interval_ms: 10_000,
            failure_threshold: 3,
            timeout_ms: 10_000,
            probe: Probe::Command {
                command: "./healthcheck.sh".into()
            },
        })
    );
    assert_eq!(
        spec.stage("probe").and_then(|s| s.monitor.clone()),
        Some(MonitorSpec {
            duration_ms: 60_000,
            interval_ms: 250,
            failure_threshold: 5,
            timeout_ms: 2_000,
            probe: Probe::Http {
                url: "http://127.0.0.1:8080/health".into(),
                expect_status: 204,
            },
        })
    );
}

#[test]
fn triggers_concurrency_and_repository_parse() {
    let yaml = r#"
name: app
repository: https://git.example.com/acme/app.git
trigger:
  git: { branch: release, interval: 30s }
  webhook: { secret_env: APP_HOOK_SECRET }
  schedule: { cron: "0 3 * * *" }
concurrency: 2
on_new_run: supersede
stages:
  - { name: build, run: make }
"#;
    let mut spec = parse(yaml, "app.yaml").expect("valid");
    let git = spec.trigger.git.clone().expect("git trigger");
    assert_eq!(git.repository, "https://git.example.com/acme/app.git");
    assert_eq!((git.branch.as_str(), git.interval_ms), ("release", 30_000));
    assert_eq!(
        spec.trigger
            .webhook
            .as_ref()
            .and_then(|w| w.secret_env.as_deref()),
        Some("APP_HOOK_SECRET")
    );
    assert_eq!(
        spec.trigger.schedule.as_ref().map(|s| s.cron.as_str()),
        Some("0 3 * * *")
    );
    assert_eq!(spec.concurrency, Some(2));
    assert_eq!(spec.on_new_run, cd_common::spec::OnNewRun::Supersede);
    // URLs stay as they are; a relative path resolves against the pipeline file's folder.
    spec.resolve_source(std::path::Path::new("/pipelines"));
    assert_eq!(
        spec.checkout_repository(),
        Some("https://git.example.com/acme/app.git")
    );
    let mut local = parse(
        "name: app\ntrigger:\n  git: { repository: ../app }\nstages:\n  - { name: b, run: x }\n",
        "app.yaml",
    )
    .expect("valid");
    local.resolve_source(std::path::Path::new("/pipelines"));
    assert_eq!(local.checkout_repository(), Some("/pipelines/../app"));
    assert_eq!(
        local.trigger.git.map(|g| g.branch),
        Some("main".to_string())
    );
}
