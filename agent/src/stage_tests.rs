//! Whole-attempt tests: real processes, the real log shipper, a fake coordinator.

use super::*;
use std::collections::HashMap;

use cd_proto::v1::{AttemptRef, Reports, TestCounts};
use tokio_util::sync::CancellationToken;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::executor::process::ProcessExecutor;
use crate::executor::{ExecError, Execution, OutputPiece};
use crate::logship::{self, LogConfig};
use crate::test_support::FakeApi;

const LIMIT: Duration = Duration::from_secs(30);

struct Harness {
    api: Arc<FakeApi>,
    ctx: Arc<StageContext<FakeApi>>,
    root: tempfile::TempDir,
    _stop: tokio_util::sync::DropGuard,
}

fn harness() -> Harness {
    let root = tempfile::tempdir().expect("tempdir");
    harness_with(Arc::new(ProcessExecutor::new(root.path())), root)
}

fn harness_with(executor: Arc<dyn Executor>, root: tempfile::TempDir) -> Harness {
    let api = Arc::new(FakeApi::default());
    let stop = CancellationToken::new();
    let config = LogConfig {
        chunk_bytes: 1024,
        batch_bytes: 4096,
        flush_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let (logs, _task) = logship::spawn(api.clone(), config, stop.clone());
    let ctx = Arc::new(StageContext {
        api: api.clone(),
        logs,
        executor,
        registry: Arc::new(Registry::new()),
        slots: Arc::new(Semaphore::new(2)),
        agent: "agent-1".into(),
        kill_grace: Duration::from_secs(2),
    });
    Harness {
        api,
        ctx,
        root,
        _stop: stop.drop_guard(),
    }
}

fn assignment(stage: &str, command: &str) -> Assignment {
    Assignment {
        attempt: Some(AttemptRef {
            run_id: "run-7".into(),
            stage: stage.into(),
            attempt: 2,
            fencing_term: 0,
        }),
        pipeline: "web".into(),
        revision: "abc123".into(),
        command: command.into(),
        env: HashMap::from([("GREETING".to_string(), "hi".to_string())]),
        environment: "staging".into(),
        ..Default::default()
    }
}

impl Harness {
    /// Runs the attempt to its end; returns its key and control.
    async fn run(&self, a: Assignment) -> (AttemptKey, AttemptControl) {
        let key = AttemptKey::from(a.attempt.as_ref().expect("attempt"));
        let control = self.ctx.registry.try_begin(&key).expect("new attempt");
        let task = run_attempt(self.ctx.clone(), a, key.clone(), control.clone());
        tokio::time::timeout(LIMIT, task)
            .await
            .expect("attempt finished in time");
        (key, control)
    }

    fn result(&self, key: &AttemptKey) -> StageResult {
        let results = self.api.results();
        assert_eq!(results.len(), 1, "exactly one result: {results:?}");
        assert_eq!(results[0].0, key.to_ref());
        results[0].1.clone()
    }
}

#[tokio::test]
async fn output_reaches_the_log_in_order_with_contiguous_seq() {
    let h = harness();
    let script = "echo \"$GREETING $CD_RUN_ID $CD_PIPELINE $CD_STAGE $CD_ATTEMPT $CD_REVISION \
                  $CD_ENVIRONMENT $CD_AGENT\"; test \"$(pwd)\" = \"$CD_WORKSPACE\" && echo in-workspace; \
                  i=1; while [ $i -le 400 ]; do echo line-$i; echo warn-$i >&2; i=$((i+1)); done; \
                  printf 'no newline at the end'";
    let (key, _) = h.run(assignment("build", script)).await;

    let result = h.result(&key);
    assert_eq!(result.exit_code, 0);
    assert!(!result.cancelled);
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    assert_eq!(h.api.started(), vec![key.to_ref()]);

    let chunks = h.api.chunks(&key);
    assert!(chunks.len() > 5, "the output spans many chunks");
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.seq, i as u64);
        assert!(c.data.len() <= 1024);
    }
    let text = h.api.log_text(&key);
    assert!(text.starts_with("hi run-7 web build 2 abc123 staging agent-1\nin-workspace\n"));
    // stdout's partial last line is kept (stderr lines may still follow it).
    let tail = text
        .find("no newline at the end")
        .expect("partial last line kept");
    assert!(tail > text.find("line-400\n").expect("last line"), "{text}");
    let positions = |prefix: &str| -> Vec<usize> {
        (1..=400)
            .map(|i| {
                text.find(&format!("{prefix}-{i}\n"))
                    .unwrap_or_else(|| panic!("{prefix}-{i} missing"))
            })
            .collect()
    };
    for prefix in ["line", "warn"] {
        let pos = positions(prefix);
        assert!(
            pos.windows(2).all(|w| w[0] < w[1]),
            "{prefix} lines in order"
        );
    }
    assert!(
        std::fs::read_dir(h.root.path())
            .expect("root")
            .next()
            .is_none(),
        "workspace removed"
    );
    assert!(
        h.ctx.registry.try_begin(&key).is_none(),
        "finished attempts do not rerun"
    );
}

#[tokio::test]
async fn exit_code_and_reports_are_reported() {
    let h = harness();
    let mut a = assignment(
        "test",
        "mkdir -p out; \
         echo '<testsuite><testcase name=\"a\"/><testcase name=\"b\"><failure/></testcase></testsuite>' > out/junit.xml; \
         echo '{\"accuracy\": 0.95}' > metrics.json; exit 4",
    );
    a.reports = Some(Reports {
        junit: "out/junit.xml".into(),
        metrics: "metrics.json".into(),
    });
    let (key, _) = h.run(a).await;
    let result = h.result(&key);
    assert_eq!(result.exit_code, 4);
    assert_eq!(
        result.tests,
        Some(TestCounts {
            total: 2,
            passed: 1,
            failed: 1,
            errors: 0,
            skipped: 0
        })
    );
    assert_eq!(result.metrics.get("accuracy"), Some(&0.95));
    assert!(result.errors.is_empty());
    assert!(h.api.log_text(&key).contains("command exited with code 4"));
}

#[tokio::test]
async fn a_missing_report_is_an_error_not_a_failure() {
    let h = harness();
    let mut a = assignment("accept", "true");
    a.reports = Some(Reports {
        junit: "../outside.xml".into(),
        metrics: "metrics.json".into(),
    });
    let (key, _) = h.run(a).await;
    let result = h.result(&key);
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.tests, None);
    assert_eq!(
        result.errors,
        vec![
            "junit report ../outside.xml: path escapes the workspace".to_string(),
            "metrics report metrics.json: file not found".to_string(),
        ]
    );
}

#[tokio::test]
async fn a_timeout_is_a_failure_with_the_timed_out_error() {
    let h = harness();
    let mut a = assignment("slow", "echo begin; sleep 100");
    a.timeout_ms = 300;
    let (key, _) = h.run(a).await;
    let result = h.result(&key);
    assert!(!result.cancelled);
    assert_eq!(result.exit_code, -1);
    assert_eq!(result.errors, vec!["timed out after 300ms".to_string()]);
    assert!(result.duration_ms >= 300);
    let log = h.api.log_text(&key);
    assert!(
        log.starts_with("begin\n") && log.contains("timed out after 300ms"),
        "{log}"
    );
}

#[tokio::test]
async fn a_server_cancel_is_reported_as_cancelled() {
    let h = harness();
    let a = assignment("deploy", "echo started; sleep 100");
    let key = AttemptKey::from(a.attempt.as_ref().expect("attempt"));
    let control = h.ctx.registry.try_begin(&key).expect("new");
    let task = tokio::spawn(run_attempt(h.ctx.clone(), a, key.clone(), control));
    tokio::time::timeout(LIMIT, async {
        while !h.api.log_text(&key).contains("started") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the command started");
    assert!(
        h.ctx
            .registry
            .cancel(&key, CancelReason::Server("user asked".into()))
    );
    tokio::time::timeout(LIMIT, task)
        .await
        .expect("ended in time")
        .expect("task");
    let result = h.result(&key);
    assert!(result.cancelled);
    assert!(result.errors.is_empty());
    assert!(h.api.log_text(&key).contains("user asked"));
}

#[tokio::test]
async fn a_copy_failure_fails_the_stage_with_a_clear_message() {
    let h = harness();
    let mut a = assignment("build", "echo should-not-run");
    a.source_path = "/nonexistent/conveyor-src".into();
    let (key, _) = h.run(a).await;
    let result = h.result(&key);
    assert_eq!(result.exit_code, -1);
    assert_eq!(result.errors.len(), 1);
    assert!(
        result.errors[0].contains("cannot copy source /nonexistent/conveyor-src"),
        "{:?}",
        result.errors
    );
    let log = h.api.log_text(&key);
    assert!(log.contains("cannot copy source") && !log.contains("should-not-run"));
}

#[tokio::test]
async fn a_refused_start_runs_nothing_and_reports_nothing() {
    let h = harness();
    h.api.refuse_start();
    let (key, _) = h.run(assignment("build", "echo ran > /dev/stderr")).await;
    assert!(h.api.results().is_empty());
    assert!(h.api.chunks(&key).is_empty());
}

#[tokio::test]
async fn a_stale_log_cancels_and_drops_the_result() {
    let h = harness();
    let a = assignment("build", "echo one; sleep 100");
    let key = AttemptKey::from(a.attempt.as_ref().expect("attempt"));
    h.api.mark_stale(&key);
    let (_, control) = h.run(a).await;
    assert_eq!(control.reason(), Some(&CancelReason::Stale));
    assert!(h.api.results().is_empty());
}

#[tokio::test]
async fn an_invalid_result_is_resent_without_report_data() {
    let h = harness();
    h.api.reject_results(1);
    let mut a = assignment("accept", "echo '{\"accuracy\": 0.9}' > m.json; exit 2");
    a.reports = Some(Reports {
        junit: String::new(),
        metrics: "m.json".into(),
    });
    let (key, _) = h.run(a).await;
    let result = h.result(&key);
    assert_eq!(result.exit_code, 2);
    assert!(result.metrics.is_empty());
    assert_eq!(
        result.errors,
        vec!["result rejected by the coordinator: result.metrics: too many".to_string()]
    );
}

#[test]
fn error_lists_are_bounded() {
    let mut errors: Vec<String> = (0..30).map(|i| format!("e{i}")).collect();
    errors[0] = "é".repeat(5000);
    bound_errors(&mut errors);
    assert_eq!(errors.len(), MAX_ERRORS);
    assert!(errors[0].len() <= MAX_ERROR_BYTES + 3);
    assert_eq!(errors[MAX_ERRORS - 1], "... and 11 more errors");
}

/// An executor whose command ends at once with a given exit, as a container backend reports it.
struct Ends(Exit, ProcessExecutor);

struct Ended(Exit);

impl Executor for Ends {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn prepare<'a>(&'a self, spec: &'a StageSpec) -> BoxFuture<'a, Result<Workspace, ExecError>> {
        self.1.prepare(spec)
    }
    fn start<'a>(
        &'a self,
        _spec: &'a StageSpec,
        _workspace: &'a Workspace,
    ) -> BoxFuture<'a, Result<Box<dyn Execution>, ExecError>> {
        let exit = self.0;
        Box::pin(async move { Ok(Box::new(Ended(exit)) as Box<dyn Execution>) })
    }
    fn destroy(&self, workspace: Workspace) -> BoxFuture<'_, Result<(), ExecError>> {
        self.1.destroy(workspace)
    }
}

impl Execution for Ended {
    fn take_output(&mut self) -> Option<mpsc::Receiver<OutputPiece>> {
        None
    }
    fn wait(
        self: Box<Self>,
        _cancel: CancellationToken,
        _grace: Duration,
    ) -> BoxFuture<'static, Result<Exit, ExecError>> {
        let exit = self.0;
        Box::pin(async move { Ok(exit) })
    }
}

#[tokio::test]
async fn an_oom_kill_fails_the_stage_naming_the_memory_limit() {
    let root = tempfile::tempdir().expect("tempdir");
    let oom = Exit {
        code: Some(0),
        signal: None,
        terminated: false,
        oom_killed: true,
    };
    let h = harness_with(Arc::new(Ends(oom, ProcessExecutor::new(root.path()))), root);
    let mut a = assignment("hog", "irrelevant");
    a.image = "busybox:1".into();
    a.container = Some(cd_proto::v1::ContainerOptions {
        memory_bytes: 64 << 20,
        ..Default::default()
    });
    let (key, _) = h.run(a).await;
    let result = h.result(&key);
    assert!(result.oom_killed);
    assert_eq!(result.exit_code, 0, "the shell survived the kill");
    assert_eq!(
        result.errors,
        ["killed by the OOM killer (memory limit 64 MiB)"]
    );
    assert!(
        h.api
            .log_text(&key)
            .contains("killed by the OOM killer (memory limit 64 MiB)")
    );
}

fn monitored(command: &str, duration_ms: u64, threshold: u32) -> Assignment {
    Assignment {
        command: String::new(),
        monitor: Some(cd_proto::v1::MonitorSpec {
            duration_ms,
            interval_ms: 40,
            failure_threshold: threshold,
            timeout_ms: 5_000,
            probe: Some(cd_proto::v1::monitor_spec::Probe::Command(command.into())),
        }),
        ..assignment("monitor", "")
    }
}

/// Counts checks in the workspace (it lives as long as the stage): `$n` is this check's number.
const COUNT: &str = "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; ";

#[tokio::test]
async fn a_healthy_monitor_succeeds_after_its_duration_with_one_log_line_per_check() {
    let h = harness();
    let before = cd_common::time::now_ms();
    let (key, _) = h
        .run(monitored(&format!("{COUNT}echo probe-$n"), 400, 2))
        .await;
    let result = h.result(&key);
    assert_eq!(result.exit_code, 0, "{:?}", result.errors);
    assert!(result.duration_ms >= 400, "{}", result.duration_ms);
    assert!(
        result.check_at_ms >= before,
        "the last check's time is reported"
    );
    let text = h.api.log_text(&key);
    assert!(text.contains("[cd-agent] monitoring `"), "{text}");
    assert!(
        text.contains("probe-1\n") && text.contains("probe-3\n"),
        "{text}"
    );
    assert!(text.contains("[cd-agent] check 1 at "), "{text}");
    assert!(text.contains(": ok (exit code 0)"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
}

#[tokio::test]
async fn consecutive_failures_reaching_the_threshold_fail_the_stage_at_that_check() {
    let h = harness();
    let before = cd_common::time::now_ms();
    // Check 1 passes, checks 2 and 3 fail: the third check crosses the threshold of 2.
    let (key, _) = h
        .run(monitored(&format!("{COUNT}[ $n -lt 2 ]"), 60_000, 2))
        .await;
    let after = cd_common::time::now_ms();
    let result = h.result(&key);
    assert_eq!(result.exit_code, 1);
    assert_eq!(
        result.errors,
        ["monitor: 2 consecutive checks failed; last: exit code 1"]
    );
    assert!(result.duration_ms < 60_000, "stopped early");
    assert!((before..=after).contains(&result.check_at_ms));
    let text = h.api.log_text(&key);
    let line = format!(
        "[cd-agent] check 3 at {}: FAIL (exit code 1)",
        result.check_at_ms
    );
    assert!(
        text.contains(&line),
        "the failing check's time is the reported one: {text}"
    );
    assert!(!text.contains("check 4 at"), "{text}");
}

#[tokio::test]
async fn failures_that_are_not_consecutive_do_not_fail_the_stage() {
    let h = harness();
    // Fails every other check; threshold 2 is never reached.
    let (key, _) = h
        .run(monitored(&format!("{COUNT}[ $((n % 2)) -eq 0 ]"), 400, 2))
        .await;
    let result = h.result(&key);
    assert_eq!(result.exit_code, 0, "{:?}", result.errors);
    let text = h.api.log_text(&key);
    assert!(text.contains("FAIL") && text.contains(": ok ("), "{text}");
}

#[tokio::test]
async fn a_zero_duration_monitor_stops_at_the_first_passing_check() {
    let h = harness();
    let (key, _) = h
        .run(monitored(&format!("{COUNT}[ $n -ge 3 ]"), 0, 5))
        .await;
    let result = h.result(&key);
    assert_eq!(result.exit_code, 0);
    let text = h.api.log_text(&key);
    assert!(text.contains("until the first passing check"), "{text}");
    assert!(
        text.contains("check 3 at") && !text.contains("check 4 at"),
        "{text}"
    );
}

#[tokio::test]
async fn a_cancelled_monitor_reports_a_cancel() {
    let h = harness();
    let a = monitored("true", 60_000, 3);
    let key = AttemptKey::from(a.attempt.as_ref().expect("attempt"));
    let control = h.ctx.registry.try_begin(&key).expect("new attempt");
    let task = tokio::spawn(run_attempt(h.ctx.clone(), a, key.clone(), control.clone()));
    let start = std::time::Instant::now();
    while !h.api.log_text(&key).contains("check 1 at") {
        assert!(start.elapsed() < LIMIT, "no check ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    control.cancel(crate::registry::CancelReason::Server("stop".into()));
    tokio::time::timeout(LIMIT, task)
        .await
        .expect("in time")
        .expect("task");
    let result = h.result(&key);
    assert!(result.cancelled, "{result:?}");
}
