//! Every rejection rule of the pipeline spec, as a table of bad files and the exact error
//! each one gives (`file:line: field: message`).

use std::time::{Duration, Instant};

use proptest::prelude::*;

use cd_common::spec::{MAX_SPEC_BYTES, parse};

/// A valid stage to put before or after the one under test.
const BUILD: &str = "  - name: build\n    run: make\n";
/// A deploying stage after `build` (lines 5 to 8 of `with_build`).
const DEPLOY: &str = "  - name: d\n    run: x\n    needs: [build]\n    environment: prod\n";
/// A monitoring stage after `DEPLOY`, its `monitor:` value to follow on line 11.
const MONITOR: &str = "  - name: m\n    needs: [d]\n    monitor: ";

fn cases() -> Vec<(&'static str, String, &'static str)> {
    let with_build = |rest: &str| format!("name: p\nstages:\n{BUILD}{rest}");
    // The build stage with an image; `rest` starts at line 6.
    let with_image = |rest: &str| with_build(&format!("    image: alpine:3.20\n{rest}"));
    let long_image = format!("    image: {}/app\n", "a".repeat(252));
    // Top-level fields from line 2 on, then the build stage.
    let top = |rest: &str| format!("name: p\n{rest}stages:\n{BUILD}");
    vec![
        // --- unknown fields, at every level ---
        ("unknown top field", "name: p\nstagez: []\n".into(), "p.yaml:2: stagez: unknown field `stagez`; allowed fields here: name, source, repository, trigger, concurrency, on_new_run, env, stages"),
        ("unknown stage field", with_build("  - name: t\n    rn: make test\n"), "p.yaml:6: stages[1].rn: unknown field `rn`; allowed fields here: name, run, needs, labels, image, image_pull, resources, network, user, docker, env, timeout, retries, environment, reports, gate, rollback, on_failure, artifacts, monitor, secrets"),
        ("unknown source field", "name: p\nsource: { dir: src }\nstages:\n  - { name: a, run: x }\n".into(), "p.yaml:2: source.dir: unknown field `dir`; allowed fields here: path"),
        ("unknown reports field", with_build("    reports: { html: r.html }\n"), "p.yaml:5: stages[0].reports.html: unknown field `html`; allowed fields here: junit, metrics"),
        ("unknown gate field", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate: { approval: 1 }\n"), "p.yaml:8: stages[1].gate.approval: unknown field `approval`; allowed fields here: tests, metrics, approvals, approvers, approval_timeout"),
        ("unknown tests gate field", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      tests: { from: [build], min_rate: 1 }\n"), "p.yaml:9: stages[1].gate.tests.min_rate: unknown field `min_rate`; allowed fields here: from, min_pass_rate"),
        ("unknown metric gate field", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      metrics:\n        - { name: acc, from: build, minimum: 1 }\n"), "p.yaml:10: stages[1].gate.metrics[0].minimum: unknown field `minimum`; allowed fields here: name, from, min, max, max_regression"),
        // --- missing required fields ---
        ("missing name", "stages:\n  - { name: a, run: x }\n".into(), "p.yaml:1: name: missing required field"),
        ("missing stages", "name: p\n".into(), "p.yaml:1: stages: missing required field"),
        ("missing stage name", with_build("  - run: make test\n"), "p.yaml:5: stages[1].name: missing required field"),
        ("missing run", with_build("  - name: t\n    needs: [build]\n"), "p.yaml:5: stages[1].run: missing required field"),
        ("empty run", with_build("  - name: t\n    run: \"  \"\n"), "p.yaml:6: stages[1].run: must not be empty"),
        ("missing source path", "name: p\nsource: {}\nstages:\n  - { name: a, run: x }\n".into(), "p.yaml:2: source.path: missing required field"),
        ("missing tests from", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      tests: { min_pass_rate: 1 }\n"), "p.yaml:9: stages[1].gate.tests.from: missing required field"),
        ("missing metric from", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      metrics:\n        - { name: acc, min: 1 }\n"), "p.yaml:10: stages[1].gate.metrics[0].from: missing required field"),
        // --- wrong types ---
        ("root is a list", "- name: p\n".into(), "p.yaml:1: (document): expected a mapping, found a list"),
        ("empty file", "".into(), "p.yaml:1: (document): expected a mapping, found nothing (null)"),
        ("stages is a mapping", "name: p\nstages:\n  build: { run: x }\n".into(), "p.yaml:3: stages: expected a list of stages, found a mapping"),
        ("stage is a string", "name: p\nstages:\n  - build\n".into(), "p.yaml:3: stages[0]: expected a mapping, found the string `build`"),
        ("name is a number", "name: 12\nstages:\n  - { name: a, run: x }\n".into(), "p.yaml:1: name: expected a string, found the number 12"),
        ("needs is a string", with_build("  - name: t\n    run: x\n    needs: build\n"), "p.yaml:7: stages[1].needs: expected a list, found the string `build`"),
        ("needs item is a mapping", with_build("  - name: t\n    run: x\n    needs:\n      - { stage: build }\n"), "p.yaml:8: stages[1].needs[0]: expected a string, found a mapping"),
        ("retries is a string", with_build("    retries: two\n"), "p.yaml:5: stages[0].retries: expected a whole number, found the string `two`"),
        ("retries is a float", with_build("    retries: 1.5\n"), "p.yaml:5: stages[0].retries: expected a whole number, found the number 1.5"),
        ("timeout is a number", with_build("    timeout: 20\n"), "p.yaml:5: stages[0].timeout: expected a duration such as `20m` or `1h30m`, found the number 20"),
        ("empty timeout", with_build("    timeout:\n"), "p.yaml:5: stages[0].timeout: expected a duration such as `20m` or `1h30m`, found nothing (null)"),
        ("env is a list", "name: p\nenv: [A]\nstages:\n  - { name: a, run: x }\n".into(), "p.yaml:2: env: expected a mapping, found a list"),
        ("env value is a list", "name: p\nenv:\n  A: [1, 2]\nstages:\n  - { name: a, run: x }\n".into(), "p.yaml:3: env.A: expected a string, number or boolean, found a list"),
        ("env value is null", with_build("    env:\n      A:\n"), "p.yaml:6: stages[0].env.A: expected a string, number or boolean, found nothing (null)"),
        ("gate is a string", with_build("    gate: yes\n"), "p.yaml:5: stages[0].gate: expected a mapping, found the string `yes`"),
        ("min_pass_rate is a string", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      tests: { from: [build], min_pass_rate: high }\n"), "p.yaml:9: stages[1].gate.tests.min_pass_rate: expected a number, found the string `high`"),
        ("approvals negative", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate: { approvals: -1 }\n"), "p.yaml:8: stages[1].gate.approvals: must not be negative, found -1"),
        ("approver is a viewer role", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate: { approvals: 1, approvers: [alice, \"role:viewer\"] }\n"), "p.yaml:8: stages[1].gate.approvers[1]: role viewer cannot approve; only operators may (use `role:operator`)"),
        ("approver identity is an agent", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate: { approvals: 1, approvers: [\"spiffe://c.local/agent/a1\"] }\n"), "p.yaml:8: stages[1].gate.approvers[0]: spiffe://c.local/agent/a1 has role agent; only operators may approve"),
        ("approvers without approvals", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate: { approvers: [alice] }\n"), "p.yaml:8: stages[1].gate.approvers: needs `approvals` of at least 1 (nobody is asked to approve)"),
        ("approval_timeout zero", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate: { approvals: 1, approval_timeout: 0s }\n"), "p.yaml:8: stages[1].gate.approval_timeout: approval_timeout must be longer than zero"),
        ("on_failure unknown", with_build("    on_failure: explode\n"), "p.yaml:5: stages[0].on_failure: expected `fail` or `rollback`, found `explode`"),
        ("labels item is a number", with_build("    labels: [linux, 7]\n"), "p.yaml:5: stages[0].labels[1]: expected a string, found a number"),
        ("label with a space", with_build("    labels: [\"big box\"]\n"), "p.yaml:5: stages[0].labels[0]: label `big box` must not contain spaces"),
        ("secrets is a string", with_build("    secrets: TOKEN\n"), "p.yaml:5: stages[0].secrets: expected a list, found the string `TOKEN`"),
        ("secret name lowercase", with_build("    secrets: [TOKEN, api_key]\n"), "p.yaml:5: stages[0].secrets[1]: `api_key` is not a valid secret name (use A-Z, 0-9 and `_`, not starting with a digit)"),
        ("secret name starts with a digit", with_build("    secrets:\n      - 1TOKEN\n"), "p.yaml:6: stages[0].secrets[0]: `1TOKEN` is not a valid secret name (use A-Z, 0-9 and `_`, not starting with a digit)"),
        ("secret listed twice", with_build("    secrets: [TOKEN, TOKEN]\n"), "p.yaml:5: stages[0].secrets[1]: `TOKEN` is listed twice"),
        ("secret name is a number", with_build("    secrets: [7]\n"), "p.yaml:5: stages[0].secrets[0]: expected a string, found a number"),
        ("tagged value", with_build("    run: !shell make\n"), "p.yaml:5: stages[0].run: YAML tags such as `!shell` are not supported in pipeline files"),
        // --- stage graph ---
        ("duplicate stage names", with_build("  - name: test\n    run: x\n  - name: build\n    run: y\n"), "p.yaml:7: stages[2].name: duplicate stage name `build` (first used by stages[0] at line 3)"),
        ("needs unknown stage", with_build("  - name: test\n    run: x\n    needs: [biuld]\n"), "p.yaml:7: stages[1].needs[0]: no stage is named `biuld`"),
        ("needs itself", with_build("  - name: test\n    run: x\n    needs: [build, test]\n"), "p.yaml:7: stages[1].needs[1]: stage `test` cannot need itself"),
        ("needs listed twice", with_build("  - name: test\n    run: x\n    needs: [build, build]\n"), "p.yaml:7: stages[1].needs[1]: `build` is listed twice"),
        ("two-stage cycle", "name: p\nstages:\n  - name: a\n    run: x\n    needs: [b]\n  - name: b\n    run: x\n    needs: [a]\n".into(), "p.yaml:8: stages[1].needs[0]: dependency cycle: a -> b -> a (each stage needs the next)"),
        ("three-stage cycle", "name: p\nstages:\n  - { name: a, run: x, needs: [c] }\n  - { name: b, run: x, needs: [a] }\n  - { name: c, run: x, needs: [b] }\n  - { name: d, run: x, needs: [a] }\n".into(), "p.yaml:4: stages[1].needs[0]: dependency cycle: a -> c -> b -> a (each stage needs the next)"),
        ("empty stages", "name: p\nstages: []\n".into(), "p.yaml:2: stages: a pipeline needs at least one stage"),
        ("null stages", "name: p\nstages:\n".into(), "p.yaml:2: stages: expected a list of stages, found nothing (null)"),
        // --- values ---
        ("bad duration unit", with_build("    timeout: 20x\n"), "p.yaml:5: stages[0].timeout: invalid duration `20x`: unknown unit `x` (use ms, s, m, h or d)"),
        ("zero duration", with_build("    timeout: 0s\n"), "p.yaml:5: stages[0].timeout: timeout must be longer than zero"),
        ("retries too large", with_build("    retries: 11\n"), "p.yaml:5: stages[0].retries: must be at most 10, found 11"),
        ("retries negative", with_build("    retries: -1\n"), "p.yaml:5: stages[0].retries: must not be negative, found -1"),
        ("min_pass_rate above 1", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      tests: { from: [build], min_pass_rate: 1.5 }\n"), "p.yaml:9: stages[1].gate.tests.min_pass_rate: must be between 0 and 1, found 1.5"),
        ("min_pass_rate below 0", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      tests: { from: [build], min_pass_rate: -0.1 }\n"), "p.yaml:9: stages[1].gate.tests.min_pass_rate: must be between 0 and 1, found -0.1"),
        ("metric gate without bounds", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      metrics:\n        - name: acc\n          from: build\n"), "p.yaml:10: stages[1].gate.metrics[0]: a metric gate needs at least one of min, max or max_regression"),
        ("metric min above max", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      metrics:\n        - { name: acc, from: build, min: 0.9, max: 0.5 }\n"), "p.yaml:10: stages[1].gate.metrics[0]: min (0.9) is greater than max (0.5)"),
        ("metric negative regression", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      metrics:\n        - { name: acc, from: build, max_regression: -0.1 }\n"), "p.yaml:10: stages[1].gate.metrics[0].max_regression: must not be negative, found -0.1"),
        ("metric bound not finite", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      metrics:\n        - { name: acc, from: build, min: .nan }\n"), "p.yaml:10: stages[1].gate.metrics[0].min: must be a finite number"),
        // --- gates read upstream stages only ---
        ("tests gate from unknown stage", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      tests: { from: [nope] }\n"), "p.yaml:9: stages[1].gate.tests.from[0]: no stage is named `nope`"),
        ("tests gate from a sibling", with_build("  - name: t\n    run: x\n    needs: [build]\n  - name: d\n    run: x\n    needs: [build]\n    gate:\n      tests: { from: [build, t] }\n"), "p.yaml:12: stages[2].gate.tests.from[1]: stage `t` is not upstream of `d`; a gate reads only stages that `d` needs, directly or through other stages"),
        ("metric gate from downstream", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      metrics:\n        - { name: acc, from: m, min: 0.5 }\n  - name: m\n    run: x\n    needs: [d]\n"), "p.yaml:10: stages[1].gate.metrics[0].from: stage `m` is not upstream of `d`; a gate reads only stages that `d` needs, directly or through other stages"),
        ("gate from itself", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      tests: { from: [d] }\n"), "p.yaml:9: stages[1].gate.tests.from[0]: the gate of `d` cannot read `d` itself; it runs before it"),
        ("empty tests from", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      tests: { from: [] }\n"), "p.yaml:9: stages[1].gate.tests.from: list at least one stage"),
        // --- names ---
        ("stage name with a path", with_build("  - name: ../x\n    run: y\n"), "p.yaml:5: stages[1].name: `../x` is not a valid name (use letters, digits, `_`, `.` and `-`, starting with a letter or digit)"),
        ("pipeline name with a space", "name: my pipe\nstages:\n  - { name: a, run: x }\n".into(), "p.yaml:1: name: `my pipe` is not a valid name (use letters, digits, `_`, `.` and `-`, starting with a letter or digit)"),
        ("environment name with a slash", with_build("    environment: prod/eu\n"), "p.yaml:5: stages[0].environment: `prod/eu` is not a valid name (use letters, digits, `_`, `.` and `-`, starting with a letter or digit)"),
        ("metric name starting with a dot", with_build("  - name: d\n    run: x\n    needs: [build]\n    gate:\n      metrics:\n        - { name: .acc, from: build, min: 1 }\n"), "p.yaml:10: stages[1].gate.metrics[0].name: `.acc` is not a valid name (use letters, digits, `_`, `.` and `-`, starting with a letter or digit)"),
        // --- paths ---
        ("junit path escapes", with_build("    reports: { junit: ../junit.xml }\n"), "p.yaml:5: stages[0].reports.junit: `../junit.xml` must not contain `..` components"),
        ("metrics path absolute", with_build("    reports: { metrics: /tmp/m.json }\n"), "p.yaml:5: stages[0].reports.metrics: `/tmp/m.json` must be a relative path (inside the workspace)"),
        ("artifact path escapes", with_build("    artifacts: [dist/, out/../../etc]\n"), "p.yaml:5: stages[0].artifacts[1]: `out/../../etc` must not contain `..` components"),
        ("artifact path absolute", with_build("    artifacts: [/etc/passwd]\n"), "p.yaml:5: stages[0].artifacts[0]: `/etc/passwd` must be a relative path (inside the workspace)"),
        ("source path escapes", "name: p\nsource: { path: ../src }\nstages:\n  - { name: a, run: x }\n".into(), "p.yaml:2: source.path: `../src` must not contain `..` components"),
        ("source path absolute escapes", "name: p\nsource:\n  path: /srv/../etc\nstages:\n  - { name: a, run: x }\n".into(), "p.yaml:3: source.path: `/srv/../etc` must not contain `..` components"),
        // --- env names ---
        ("top env name starts with a digit", "name: p\nenv:\n  1A: x\nstages:\n  - { name: a, run: x }\n".into(), "p.yaml:3: env.1A: `1A` is not a valid environment variable name (use letters, digits and `_`, not starting with a digit)"),
        ("stage env name with a dash", with_build("    env:\n      MY-VAR: x\n"), "p.yaml:6: stages[0].env.MY-VAR: `MY-VAR` is not a valid environment variable name (use letters, digits and `_`, not starting with a digit)"),
        // --- monitor ---
        ("monitor without a deploy upstream", with_build("  - name: m\n    needs: [build]\n    monitor: { duration: 1m, interval: 10s, command: ./check }\n"), "p.yaml:7: stages[1].monitor: `monitor` needs a stage upstream of `m` that deploys to an environment"),
        ("monitor on a deploying stage", with_build(&format!("{DEPLOY}  - name: m\n    needs: [d]\n    environment: prod\n    monitor: {{ duration: 1m, interval: 10s, command: ./c }}\n")), "p.yaml:12: stages[2].monitor: a monitoring stage watches a deployment and cannot deploy itself; move `environment` to a stage that `m` needs"),
        ("monitor and run", with_build(&format!("{DEPLOY}  - name: m\n    needs: [d]\n    run: x\n    monitor: {{ duration: 1m, interval: 10s, command: ./c }}\n")), "p.yaml:11: stages[2].run: a stage with `monitor` runs its health checks, not `run`; put the check in `monitor.command`"),
        ("monitor without a probe", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 1m, interval: 10s }}\n")), "p.yaml:11: stages[2].monitor: a monitor needs a probe: `command` or `http`"),
        ("monitor with two probes", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 1m, interval: 10s, command: ./c, http: {{ url: \"http://x/\" }} }}\n")), "p.yaml:11: stages[2].monitor.http: set either `command` or `http`, not both"),
        ("monitor without duration", with_build(&format!("{DEPLOY}{MONITOR}{{ interval: 10s, command: ./c }}\n")), "p.yaml:11: stages[2].monitor.duration: missing required field"),
        ("monitor duration zero", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 0s, interval: 10s, command: ./c }}\n")), "p.yaml:11: stages[2].monitor.duration: duration must be longer than zero"),
        ("monitor interval longer than duration", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 10s, interval: 1m, command: ./c }}\n")), "p.yaml:11: stages[2].monitor.interval: the interval (1m) is longer than the duration (10s); no second check would run"),
        ("monitor threshold zero", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 1m, interval: 10s, failure_threshold: 0, command: ./c }}\n")), "p.yaml:11: stages[2].monitor.failure_threshold: must be at least 1"),
        ("monitor threshold too large", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 1m, interval: 10s, failure_threshold: 1001, command: ./c }}\n")), "p.yaml:11: stages[2].monitor.failure_threshold: must be at most 1000, found 1001"),
        ("monitor empty command", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 1m, interval: 10s, command: \"\" }}\n")), "p.yaml:11: stages[2].monitor.command: must not be empty"),
        ("monitor unknown field", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 1m, interval: 10s, command: ./c, treshold: 3 }}\n")), "p.yaml:11: stages[2].monitor.treshold: unknown field `treshold`; allowed fields here: duration, interval, failure_threshold, timeout, command, http"),
        ("monitor https url", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 1m, interval: 10s, http: {{ url: \"https://x/\" }} }}\n")), "p.yaml:11: stages[2].monitor.http.url: `https://x/` must start with `http://` (the probe speaks plain HTTP/1.1)"),
        ("monitor url without host", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 1m, interval: 10s, http: {{ url: \"http:///health\" }} }}\n")), "p.yaml:11: stages[2].monitor.http.url: `http:///health` names no host"),
        ("monitor bad status", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 1m, interval: 10s, http: {{ url: \"http://x/\", expect_status: 42 }} }}\n")), "p.yaml:11: stages[2].monitor.http.expect_status: must be an HTTP status (100 to 599), found 42"),
        ("monitor http without url", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 1m, interval: 10s, http: {{ expect_status: 200 }} }}\n")), "p.yaml:11: stages[2].monitor.http.url: missing required field"),
        ("monitor timeout twice", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 1m, interval: 10s, timeout: 1s, http: {{ url: \"http://x/\", timeout: 2s }} }}\n")), "p.yaml:11: stages[2].monitor.http.timeout: set `timeout` once: in `http`, or on `monitor` (for any probe)"),
        ("monitor unknown http field", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 1m, interval: 10s, http: {{ url: \"http://x/\", method: POST }} }}\n")), "p.yaml:11: stages[2].monitor.http.method: unknown field `method`; allowed fields here: url, expect_status, timeout"),
        ("monitor bad timeout", with_build(&format!("{DEPLOY}{MONITOR}{{ duration: 1m, interval: 10s, timeout: soon, command: ./c }}\n")), "p.yaml:11: stages[2].monitor.timeout: invalid duration `soon`: expected a number before each unit"),
        // --- on_failure ---
        ("rollback without deploy upstream", with_build("  - name: m\n    run: x\n    needs: [build]\n    on_failure: rollback\n"), "p.yaml:8: stages[1].on_failure: `rollback` needs a stage upstream of `m` that deploys to an environment"),
        ("rollback on a deploy with no deploy upstream", with_build("  - name: d\n    run: x\n    environment: prod\n    on_failure: rollback\n"), "p.yaml:8: stages[1].on_failure: `rollback` needs a stage upstream of `d` that deploys to an environment"),
        // --- container options ---
        ("unknown resources field", with_image("    resources: { cpus: 1, disk: 10g }\n"), "p.yaml:6: stages[0].resources.disk: unknown field `disk`; allowed fields here: cpus, memory"),
        ("resources is a list", with_image("    resources: [1, 2g]\n"), "p.yaml:6: stages[0].resources: expected a mapping, found a list"),
        ("image_pull unknown", with_image("    image_pull: sometimes\n"), "p.yaml:6: stages[0].image_pull: expected `never`, `if-missing` or `always`, found `sometimes`"),
        ("image_pull with an underscore", with_image("    image_pull: if_missing\n"), "p.yaml:6: stages[0].image_pull: expected `never`, `if-missing` or `always`, found `if_missing`"),
        ("image_pull is a boolean", with_image("    image_pull: false\n"), "p.yaml:6: stages[0].image_pull: expected `never`, `if-missing` or `always`, found the boolean false"),
        ("cpus zero", with_image("    resources: { cpus: 0 }\n"), "p.yaml:6: stages[0].resources.cpus: must be between 0.01 (the smallest CPU limit Docker applies) and 1024, found 0"),
        ("cpus negative", with_image("    resources: { cpus: -1 }\n"), "p.yaml:6: stages[0].resources.cpus: must be between 0.01 (the smallest CPU limit Docker applies) and 1024, found -1"),
        ("cpus below Docker's smallest", with_image("    resources: { cpus: 0.001 }\n"), "p.yaml:6: stages[0].resources.cpus: must be between 0.01 (the smallest CPU limit Docker applies) and 1024, found 0.001"),
        ("cpus too large", with_image("    resources: { cpus: 1024.5 }\n"), "p.yaml:6: stages[0].resources.cpus: must be between 0.01 (the smallest CPU limit Docker applies) and 1024, found 1024.5"),
        ("cpus not a number", with_image("    resources: { cpus: two }\n"), "p.yaml:6: stages[0].resources.cpus: expected a number of CPU cores such as `2` or `0.5`, found the string `two`"),
        ("cpus as a negative string", with_image("    resources: { cpus: \"-2\" }\n"), "p.yaml:6: stages[0].resources.cpus: expected a number of CPU cores such as `2` or `0.5`, found the string `-2`"),
        ("cpus not finite", with_image("    resources: { cpus: .inf }\n"), "p.yaml:6: stages[0].resources.cpus: must be a finite number"),
        ("cpus empty", with_image("    resources:\n      cpus:\n"), "p.yaml:7: stages[0].resources.cpus: expected a number of CPU cores such as `2` or `0.5`, found nothing (null)"),
        ("memory too small", with_image("    resources: { memory: 4m }\n"), "p.yaml:6: stages[0].resources.memory: must be at least 6291456 bytes (6 MiB), the smallest memory limit Docker accepts; found 4194304 bytes (4 MiB)"),
        ("memory in bytes too small", with_image("    resources: { memory: 1024 }\n"), "p.yaml:6: stages[0].resources.memory: must be at least 6291456 bytes (6 MiB), the smallest memory limit Docker accepts; found 1024 bytes (1 KiB)"),
        ("memory zero", with_image("    resources: { memory: 0 }\n"), "p.yaml:6: stages[0].resources.memory: must be at least 6291456 bytes (6 MiB), the smallest memory limit Docker accepts; found 0 bytes"),
        ("memory just under the minimum", with_image("    resources:\n      cpus: 1\n      memory: 5.9m\n"), "p.yaml:8: stages[0].resources.memory: must be at least 6291456 bytes (6 MiB), the smallest memory limit Docker accepts; found 6186598 bytes (about 5.9 MiB)"),
        ("memory too large", with_image("    resources: { memory: 2t }\n"), "p.yaml:6: stages[0].resources.memory: must be at most 1099511627776 bytes (1 TiB), found 2199023255552 bytes (2 TiB)"),
        ("memory bad suffix", with_image("    resources: { memory: 256x }\n"), "p.yaml:6: stages[0].resources.memory: invalid size `256x`: unknown unit `x` (use k, m, g or t, e.g. `256m` or `1.5g`; units are binary: 1k = 1024 bytes)"),
        ("memory decimal suffix", with_image("    resources: { memory: 1gb2 }\n"), "p.yaml:6: stages[0].resources.memory: invalid size `1gb2`: unknown unit `gb2` (use k, m, g or t, e.g. `256m` or `1.5g`; units are binary: 1k = 1024 bytes)"),
        ("memory without a number", with_image("    resources: { memory: lots }\n"), "p.yaml:6: stages[0].resources.memory: invalid size `lots`: expected a number (digits, optionally with a fraction such as `1.5`) and a unit, e.g. `256m` or `1.5g`"),
        ("memory negative size", with_image("    resources: { memory: -256m }\n"), "p.yaml:6: stages[0].resources.memory: invalid size `-256m`: it must not be negative"),
        ("memory negative bytes", with_image("    resources: { memory: -1 }\n"), "p.yaml:6: stages[0].resources.memory: must not be negative, found -1"),
        ("memory fractional bytes", with_image("    resources: { memory: 1.5 }\n"), "p.yaml:6: stages[0].resources.memory: expected a size such as `256m` or `1.5g`, or a whole number of bytes, found the number 1.5"),
        ("memory is a list", with_image("    resources: { memory: [1g] }\n"), "p.yaml:6: stages[0].resources.memory: expected a size such as `256m` or `1.5g`, or a whole number of bytes, found a list"),
        ("network unknown", with_image("    network: bridged\n"), "p.yaml:6: stages[0].network: expected `none`, `bridge` or `host`, found `bridged`"),
        ("network empty", with_image("    network:\n"), "p.yaml:6: stages[0].network: expected `none`, `bridge` or `host`, found nothing (null)"),
        ("user with three parts", with_image("    user: a:b:c\n"), "p.yaml:6: stages[0].user: `a:b:c` is not a valid user (write a name or uid, optionally followed by `:group` or `:gid`, e.g. `1000:1000`; use letters, digits, `_`, `.` and `-`)"),
        ("user with a slash", with_image("    user: ../root\n"), "p.yaml:6: stages[0].user: `../root` is not a valid user (write a name or uid, optionally followed by `:group` or `:gid`, e.g. `1000:1000`; use letters, digits, `_`, `.` and `-`)"),
        ("user with a space", with_image("    user: \"app user\"\n"), "p.yaml:6: stages[0].user: user `app user` must not contain whitespace"),
        ("user empty", with_image("    user: \"\"\n"), "p.yaml:6: stages[0].user: must not be empty"),
        ("user too long", with_image(&format!("    user: {}\n", "u".repeat(65))), "p.yaml:6: stages[0].user: user is 65 characters long; the limit is 64"),
        ("user negative uid", with_image("    user: -1\n"), "p.yaml:6: stages[0].user: expected a user such as `1000:1000` or `app`, found the number -1"),
        ("docker is yes", with_image("    docker: yes\n"), "p.yaml:6: stages[0].docker: expected `true` or `false`, found the string `yes`"),
        ("docker is a number", with_image("    docker: 1\n"), "p.yaml:6: stages[0].docker: expected `true` or `false`, found the number 1"),
        ("image_pull without image", with_build("    image_pull: always\n"), "p.yaml:5: stages[0].image_pull: `image_pull` applies only to stages with an `image` (without one the stage runs as a host process)"),
        ("resources without image", with_build("  - name: t\n    run: x\n    resources:\n      cpus: 2\n"), "p.yaml:7: stages[1].resources: `resources` applies only to stages with an `image` (without one the stage runs as a host process)"),
        // --- triggers, repository, concurrency ---
        ("unknown trigger", top("trigger: { cron: x }\n"), "p.yaml:2: trigger.cron: unknown field `cron`; allowed fields here: git, webhook, schedule"),
        ("unknown git trigger field", top("trigger:\n  git: { repository: /r, every: 1m }\n"), "p.yaml:3: trigger.git.every: unknown field `every`; allowed fields here: repository, branch, interval"),
        ("git trigger without repository", top("trigger:\n  git: { branch: main }\n"), "p.yaml:3: trigger.git.repository: missing required field (or set the pipeline's `repository`)"),
        ("git repository starting with a dash", top("trigger:\n  git: { repository: --upload-pack=evil }\n"), "p.yaml:3: trigger.git.repository: `--upload-pack=evil` must not start with `-`"),
        ("repository with a space", top("repository: \"my repo\"\n"), "p.yaml:2: repository: `my repo` must not contain spaces or control characters"),
        ("repository with source", top("repository: /r\nsource: { path: . }\n"), "p.yaml:3: source: `source` and `repository` cannot both be set: the workspace is either a copy of a directory or a checkout of the repository"),
        ("git branch with dots", top("trigger:\n  git: { repository: /r, branch: a..b }\n"), "p.yaml:3: trigger.git.branch: `a..b` is not a valid branch name"),
        ("git interval too short", top("trigger:\n  git: { repository: /r, interval: 10ms }\n"), "p.yaml:3: trigger.git.interval: must be at least 200ms, found 10ms"),
        ("git interval is a number", top("trigger:\n  git: { repository: /r, interval: 30 }\n"), "p.yaml:3: trigger.git.interval: expected a duration such as `30s` or `5m`, found the number 30"),
        ("webhook without secret", top("trigger:\n  webhook: { branch: main }\n"), "p.yaml:3: trigger.webhook: set `secret_env` or `secret_file` (the secret itself never goes in the pipeline file)"),
        ("webhook with two secrets", top("trigger:\n  webhook: { secret_env: S, secret_file: /s }\n"), "p.yaml:3: trigger.webhook: set only one of `secret_env` and `secret_file`"),
        ("webhook secret inline", top("trigger:\n  webhook: { secret: hunter2 }\n"), "p.yaml:3: trigger.webhook.secret: unknown field `secret`; allowed fields here: secret_env, secret_file, branch"),
        ("webhook secret_env invalid", top("trigger:\n  webhook: { secret_env: 1X }\n"), "p.yaml:3: trigger.webhook.secret_env: `1X` is not a valid environment variable name (use letters, digits and `_`, not starting with a digit)"),
        ("webhook secret_file relative", top("trigger:\n  webhook: { secret_file: s.txt }\n"), "p.yaml:3: trigger.webhook.secret_file: `s.txt` must be an absolute path on the coordinator"),
        ("schedule without cron", top("trigger:\n  schedule: {}\n"), "p.yaml:3: trigger.schedule.cron: missing required field"),
        ("schedule bad cron", top("trigger:\n  schedule: { cron: \"61 * * * *\" }\n"), "p.yaml:3: trigger.schedule.cron: invalid cron expression `61 * * * *`: Component error: Number out of bounds. (5 fields: minute hour day-of-month month day-of-week, or 6 with seconds first; times in UTC)"),
        ("concurrency zero", top("concurrency: 0\n"), "p.yaml:2: concurrency: must be at least 1"),
        ("concurrency too large", top("concurrency: 5000\n"), "p.yaml:2: concurrency: must be at most 1000, found 5000"),
        ("concurrency is a string", top("concurrency: one\n"), "p.yaml:2: concurrency: expected a whole number, found the string `one`"),
        ("on_new_run unknown", top("on_new_run: cancel\n"), "p.yaml:2: on_new_run: expected `queue` or `supersede`, found `cancel`"),
        ("network without image", with_build("    network: none\n"), "p.yaml:5: stages[0].network: `network` applies only to stages with an `image` (without one the stage runs as a host process)"),
        ("user without image", with_build("    user: \"1000:1000\"\n"), "p.yaml:5: stages[0].user: `user` applies only to stages with an `image` (without one the stage runs as a host process)"),
        ("docker without image", with_build("    docker: false\n"), "p.yaml:5: stages[0].docker: `docker` applies only to stages with an `image` (without one the stage runs as a host process)"),
        ("merged option without image", with_build("    <<: { network: host }\n"), "p.yaml:5: stages[0].network: `network` applies only to stages with an `image` (without one the stage runs as a host process)"),
        ("invalid option without image", with_build("    docker: yes\n"), "p.yaml:5: stages[0].docker: `docker` applies only to stages with an `image` (without one the stage runs as a host process)"),
        // --- image references ---
        ("empty image", with_build("    image: \"\"\n"), "p.yaml:5: stages[0].image: must not be empty"),
        ("image is a number", with_build("    image: 3\n"), "p.yaml:5: stages[0].image: expected a string, found the number 3"),
        ("image with uppercase", with_build("    image: Conveyor/Builder:local\n"), "p.yaml:5: stages[0].image: `Conveyor/Builder:local` is not a valid image reference: the repository name must be lowercase (`Conveyor`)"),
        ("image with a space", with_build("    image: \"alpine 3.20\"\n"), "p.yaml:5: stages[0].image: `alpine 3.20` is not a valid image reference: it contains whitespace"),
        ("image with a bad tag", with_build("    image: alpine:-3\n"), "p.yaml:5: stages[0].image: `alpine:-3` is not a valid image reference: the tag `-3` is not valid (use letters, digits, `_`, `.` and `-`, not starting with `.` or `-`, at most 128 characters)"),
        ("image with an empty tag", with_build("    image: \"alpine:\"\n"), "p.yaml:5: stages[0].image: `alpine:` is not a valid image reference: the tag after `:` is empty"),
        ("image with a short digest", with_build("    image: alpine@sha256:abc123\n"), "p.yaml:5: stages[0].image: `alpine@sha256:abc123` is not a valid image reference: the digest after `@` must be `sha256:` followed by 64 lowercase hex digits (or `sha384:` with 96, `sha512:` with 128)"),
        ("image with a bad path", with_build("    image: acme/_builder\n"), "p.yaml:5: stages[0].image: `acme/_builder` is not a valid image reference: `_builder` is not a valid repository path component (use lowercase letters and digits, separated by `.`, `_`, `__` or `-`)"),
        ("image with an empty path component", with_build("    image: acme//builder\n"), "p.yaml:5: stages[0].image: `acme//builder` is not a valid image reference: the repository name has an empty path component (`//`, or a `/` at the start or end)"),
        ("image with a bad registry", with_build("    image: my_registry.io:5000/app\n"), "p.yaml:5: stages[0].image: `my_registry.io:5000/app` is not a valid image reference: the registry host `my_registry.io:5000` is not valid (use a host name such as `registry.example.com`, optionally with a port: `localhost:5000`)"),
        ("image without a name", with_build("    image: \":latest\"\n"), "p.yaml:5: stages[0].image: `:latest` is not a valid image reference: the repository name is missing (write e.g. `alpine:3.20`)"),
        ("image name too long", with_build(&long_image), "p.yaml:5: stages[0].image: not a valid image reference: the repository name is 256 characters long; the limit is 255"),
        // --- YAML itself ---
        ("syntax error", "name: p\nstages:\n  - name: a\n    run: x: y\n".into(), "p.yaml:4: (document): invalid YAML: mapping values are not allowed in this context at line 4 column 11"),
        ("duplicate key", "name: p\nstages:\n  - name: a\n    run: x\n    run: y\n".into(), "p.yaml:5: stages[0].run: `run` is set twice in this mapping"),
        ("two documents", "name: p\nstages:\n  - { name: a, run: x }\n---\nname: q\n".into(), "p.yaml:4: (document): the file holds more than one YAML document (`---`); a pipeline file holds exactly one"),
        ("unknown anchor", "name: *nope\nstages: []\n".into(), "p.yaml:1: (document): invalid YAML: unknown anchor at line 1 column 7"),
        ("merge key with a scalar", with_build("    <<: 5\n"), "p.yaml:5: stages[0].<<: a merge key `<<` takes a mapping or a list of mappings"),
        ("merged unknown field", with_build("    <<: { retry: 2 }\n"), "p.yaml:5: stages[0].retry: unknown field `retry`; allowed fields here: name, run, needs, labels, image, image_pull, resources, network, user, docker, env, timeout, retries, environment, reports, gate, rollback, on_failure, artifacts, monitor, secrets"),
        ("tagged document", "!pipeline\nname: p\n".into(), "p.yaml:1: (document): YAML tags such as `!pipeline` are not supported in pipeline files"),
    ]
}

#[test]
fn each_bad_file_gives_its_exact_error() {
    let mut wrong = Vec::new();
    for (what, yaml, expected) in cases() {
        let got = match parse(&yaml, "p.yaml") {
            Ok(spec) => format!("parsed: {spec:?}"),
            Err(err) => err.to_string(),
        };
        if got != expected {
            wrong.push(format!("{what}\n  expected: {expected}\n  got:      {got}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases differ:\n{}",
        wrong.len(),
        cases().len(),
        wrong.join("\n")
    );
}

#[test]
fn a_spec_over_the_size_limit_is_refused_before_parsing() {
    let yaml = format!("name: p\nstages: []\n{}\n", "#".repeat(MAX_SPEC_BYTES));
    let err = parse(&yaml, "big.yaml").expect_err("too big");
    assert_eq!(
        err.to_string(),
        format!(
            "big.yaml:0: (document): the spec is {} bytes; the limit is 262144 bytes",
            yaml.len()
        )
    );
    assert_eq!(err.line, 0);
}

fn assert_alias_bomb(yaml: &str) {
    assert!(yaml.len() <= MAX_SPEC_BYTES, "{} bytes", yaml.len());
    let started = Instant::now();
    let err = parse(yaml, "bomb.yaml").expect_err("alias bomb");
    let took = started.elapsed();
    assert_eq!(
        err.message,
        "YAML aliases expand the document past 1048576 nodes and text bytes; refusing a \
         possible alias bomb"
    );
    assert_eq!(err.field, "(document)");
    assert!(err.line >= 1, "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn billion_laughs_is_refused_quickly() {
    let mut yaml = String::from("name: p\nl0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..=9 {
        let prev = format!("*l{}", level - 1);
        let items = [prev.as_str(); 9].join(", ");
        yaml.push_str(&format!("l{level}: &l{level} [{items}]\n"));
    }
    yaml.push_str("stages: [{ name: a, run: x }]\n");
    assert_alias_bomb(&yaml);
}

#[test]
fn one_big_anchor_repeated_many_times_is_refused_quickly() {
    // yaml_serde's own limit (100 alias jumps per event) lets this through: 20,000 aliases of
    // a 20,000-item list would be 400 million nodes.
    let items = vec!["x"; 20_000].join(",");
    let aliases = vec!["*big"; 20_000].join(",");
    let yaml = format!(
        "name: p\nstages:\n  - name: a\n    run: x\n    labels: &big [{items}]\n  - name: b\n    run: x\n    artifacts: [{aliases}]\n"
    );
    assert_alias_bomb(&yaml);
}

#[test]
fn a_long_string_repeated_through_aliases_is_refused() {
    let long = "y".repeat(100_000);
    let yaml = format!(
        "name: p\nenv:\n  A: &s {long}\n  B: *s\n  C: *s\n  D: *s\n  E: *s\n  F: *s\n  G: *s\n  H: *s\n  I: *s\n  J: *s\n  K: *s\nstages: [{{ name: a, run: x }}]\n"
    );
    assert_alias_bomb(&yaml);
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let deep = |n: usize| {
        format!(
            "name: p\nstages: [{{ name: a, run: x }}]\nenv: {}{}\n",
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    let err = parse(&deep(100), "p.yaml").expect_err("a list");
    assert_eq!(
        err.to_string(),
        "p.yaml:3: env: expected a mapping, found a list"
    );
    let err = parse(&deep(10_000), "p.yaml").expect_err("too deep");
    assert_eq!(
        err.to_string(),
        "p.yaml:3: (document): the document nests deeper than 128 levels"
    );
}

#[test]
fn modest_alias_use_is_fine() {
    let yaml = "name: p\nenv: &common\n  A: \"1\"\nstages:\n  - name: a\n    run: x\n    env: *common\n  - name: b\n    run: x\n    env: *common\n";
    let spec = parse(yaml, "p.yaml").expect("valid");
    assert_eq!(spec.stages[1].env["A"], "1");
}

#[test]
fn errors_display_as_file_line_field_message() {
    let err = parse(
        "name: p\nstages:\n  - name: a\n    run: x\n    retries: 11\n",
        "dir/p.yaml",
    )
    .expect_err("retries");
    assert_eq!(err.file, "dir/p.yaml");
    assert_eq!(err.line, 5);
    assert_eq!(err.field, "stages[0].retries");
    assert_eq!(err.message, "must be at most 10, found 11");
}

/// A valid file to damage in the property test below.
const VALID: &str = "name: p\nenv: { A: \"1\" }\nstages:\n  - name: build\n    run: make\n    timeout: 20m\n  - name: deploy\n    needs: [build]\n    environment: prod\n    run: ./deploy.sh\n    gate:\n      tests: { from: [build], min_pass_rate: 0.9 }\n      metrics:\n        - { name: acc, from: build, min: 0.5 }\n  - name: watch\n    needs: [deploy]\n    run: ./watch.sh\n    on_failure: rollback\n";

proptest! {
    /// Damaged files never panic, and every error points at a line of the file.
    #[test]
    fn damaged_files_give_errors_not_panics(
        start in 0usize..VALID.len(),
        len in 0usize..12,
        insert in "[a-z:\\[\\]{}&*!#\\- \n\"'.,0-9]{0,6}",
    ) {
        let end = (start + len).min(VALID.len());
        let yaml = format!("{}{}{}", &VALID[..start], insert, &VALID[end..]);
        if let Err(err) = parse(&yaml, "p.yaml") {
            let lines = yaml.lines().count() + 1;
            prop_assert!(err.line <= lines, "{err} in {yaml:?}");
            prop_assert!(!err.message.is_empty());
            prop_assert!(!err.field.is_empty());
        }
    }
}

#[test]
fn the_damage_test_starts_from_a_valid_file() {
    parse(VALID, "p.yaml").expect("valid");
}
