//! One attempt's lifecycle: wait for a slot, prepare the workspace, `StartAttempt`, run the
//! command with its output going to the log, stop it when its token fires (cancel, stale,
//! timeout, shutdown), read its reports, wait until the log is acknowledged, then report the
//! result (retried until the coordinator takes or refuses it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cd_proto::v1::monitor_spec::Probe;
use cd_proto::v1::{Assignment, MonitorSpec, StageResult};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::Code;
use tracing::{Instrument, debug, error, info, warn};

use crate::connection::{AgentApi, describe, is_refused};
use crate::executor::{
    ContainerOptions, Executor, Exit, SecretEnv, StageSpec, Workspace, oom_message,
};
use crate::logship::{AttemptLog, LogError, LogHandle};
use crate::monitor;
use crate::registry::{AttemptControl, AttemptKey, CancelReason, Registry};
use crate::reports;
use crate::util::Backoff;

/// What every stage task shares.
pub struct StageContext<A> {
    pub api: Arc<A>,
    pub logs: LogHandle,
    pub executor: Arc<dyn Executor>,
    pub registry: Arc<Registry>,
    pub slots: Arc<Semaphore>,
    pub agent: String,
    pub kill_grace: Duration,
}

/// Runs one attempt to the end and reports it. `control` comes from [`Registry::try_begin`];
/// the attempt is marked finished in the registry when this returns.
pub async fn run_attempt<A: AgentApi>(
    ctx: Arc<StageContext<A>>,
    assignment: Assignment,
    key: AttemptKey,
    control: AttemptControl,
) {
    match ctx.logs.open(key.clone(), control.clone()).await {
        Ok(mut log) => {
            log.mask(
                assignment
                    .secrets
                    .values()
                    .map(|v| v.as_bytes().to_vec())
                    .collect(),
            );
            if let Some(result) = execute(&ctx, &assignment, &key, &control, &log).await {
                deliver(&ctx, &key, result, log).await;
            } else {
                log.abandon().await;
            }
        }
        Err(e) => warn!(error = %e, "cannot open the attempt's log; not running it"),
    }
    ctx.registry.finish(&key);
}

/// Sends the result once every log chunk is acknowledged.
async fn deliver<A: AgentApi>(
    ctx: &StageContext<A>,
    key: &AttemptKey,
    result: StageResult,
    log: AttemptLog,
) {
    match log.finish().await {
        Ok(()) => report(ctx, key, result).await,
        Err(LogError::Stale) => warn!("the coordinator dropped this attempt; result not reported"),
        Err(e) => warn!(error = %e, "log not delivered; result not reported"),
    }
}

/// `ReportResult`, retried with backoff until it is taken. A result refused as stale is dropped;
/// one refused as invalid is sent once more without its report data.
async fn report<A: AgentApi>(ctx: &StageContext<A>, key: &AttemptKey, mut result: StageResult) {
    bound_errors(&mut result.errors);
    let mut backoff = Backoff::standard();
    let mut stripped = false;
    loop {
        match ctx.api.report_result(key.to_ref(), result.clone()).await {
            Ok(()) => {
                info!(
                    exit_code = result.exit_code,
                    cancelled = result.cancelled,
                    duration_ms = result.duration_ms,
                    "result reported"
                );
                return;
            }
            Err(status) if is_refused(&status) => {
                warn!(error = %describe(&status), "the coordinator refused the result as stale; dropped");
                return;
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                if stripped {
                    error!(error = %describe(&status), "the coordinator rejected the result; dropped");
                    return;
                }
                error!(error = %describe(&status), "the coordinator rejected the result; sending it without report data");
                let mut errors = vec![format!(
                    "result rejected by the coordinator: {}",
                    status.message()
                )];
                bound_errors(&mut errors);
                result = StageResult {
                    tests: None,
                    metrics: Default::default(),
                    errors,
                    ..result
                };
                stripped = true;
            }
            Err(status) => {
                let delay = backoff.next_delay();
                warn!(error = %describe(&status), retry_in = ?delay, "reporting the result failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

enum Started {
    Yes,
    Refused,
    Cancelled,
}

/// `StartAttempt`, retried until it is accepted, refused as stale, or the attempt is cancelled.
async fn start_attempt<A: AgentApi>(
    ctx: &StageContext<A>,
    key: &AttemptKey,
    control: &AttemptControl,
) -> Started {
    let mut backoff = Backoff::standard();
    loop {
        match ctx.api.start_attempt(key.to_ref()).await {
            Ok(()) => return Started::Yes,
            Err(status) if is_refused(&status) => {
                warn!(error = %describe(&status), "the coordinator refused to start this attempt; dropped");
                return Started::Refused;
            }
            Err(status) => {
                let delay = backoff.next_delay();
                warn!(error = %describe(&status), retry_in = ?delay, "StartAttempt failed");
                tokio::select! {
                    _ = control.token().cancelled() => return Started::Cancelled,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Everything up to the result; `None` when the coordinator refused the attempt at start.
async fn execute<A: AgentApi>(
    ctx: &StageContext<A>,
    assignment: &Assignment,
    key: &AttemptKey,
    control: &AttemptControl,
    log: &AttemptLog,
) -> Option<StageResult> {
    let token = control.token();
    let _slot = tokio::select! {
        permit = ctx.slots.clone().acquire_owned() => permit.ok(),
        _ = token.cancelled() => None,
    };
    let started = Instant::now();
    let mut spec = stage_spec(assignment, key, &ctx.agent);
    let prepared = if token.is_cancelled() {
        None
    } else {
        Some(ctx.executor.prepare(&spec).await)
    };
    match start_attempt(ctx, key, control).await {
        Started::Yes => {}
        Started::Cancelled => {}
        Started::Refused => {
            if let Some(Ok(ws)) = prepared {
                destroy(ctx, ws).await;
            }
            return None;
        }
    }
    let ws = match prepared {
        None => return Some(cancelled_result(control, log, started).await),
        Some(Err(e)) => return Some(failure(log, started, e.to_string()).await),
        Some(Ok(ws)) => ws,
    };
    if token.is_cancelled() {
        destroy(ctx, ws).await;
        return Some(cancelled_result(control, log, started).await);
    }
    if !assignment.repository.is_empty() {
        match crate::checkout::checkout(ws.path(), &assignment.repository, &assignment.revision)
            .await
        {
            Ok(sha) => {
                log.note(&format!("checked out {} at {sha}", assignment.repository))
                    .await;
            }
            Err(e) => {
                destroy(ctx, ws).await;
                return Some(failure(log, started, e).await);
            }
        }
    }
    spec.env.insert(
        "CD_WORKSPACE".into(),
        ws.path().to_string_lossy().into_owned(),
    );
    let result = match &assignment.monitor {
        Some(m) => run_monitor(ctx, m, &spec, &ws, control, log, started).await,
        None => run_command(ctx, assignment, &spec, &ws, control, log, started).await,
    };
    destroy(ctx, ws).await;
    Some(result)
}

/// A monitoring stage: health checks instead of a command (see `monitor`).
async fn run_monitor<A: AgentApi>(
    ctx: &StageContext<A>,
    m: &MonitorSpec,
    spec: &StageSpec,
    ws: &Workspace,
    control: &AttemptControl,
    log: &AttemptLog,
    started: Instant,
) -> StageResult {
    let how_long = match m.duration_ms {
        0 => "until the first passing check".to_string(),
        ms => format!("for {}", cd_common::duration::format_ms(ms)),
    };
    let what = match &m.probe {
        Some(Probe::Command(command)) => format!("`{command}`"),
        Some(Probe::Http(h)) => format!("GET {} (expect {})", h.url, h.expect_status),
        None => return failure(log, started, "the monitor has no probe".into()).await,
    };
    log.note(&format!(
        "monitoring {what} every {} {how_long}; fails after {} consecutive failed checks",
        cd_common::duration::format_ms(m.interval_ms),
        m.failure_threshold.max(1)
    ))
    .await;
    let token = control.token();
    let timeout = Duration::from_millis(m.timeout_ms.max(1));
    let verdict = match &m.probe {
        Some(Probe::Http(h)) => {
            let mut prober = monitor::HttpProber {
                url: h.url.clone(),
                expect_status: u16::try_from(h.expect_status).unwrap_or(0),
                timeout,
            };
            monitor::watch(m, &mut prober, log, token).await
        }
        Some(Probe::Command(command)) => {
            let mut prober = monitor::CommandProber {
                executor: ctx.executor.as_ref(),
                spec: StageSpec {
                    command: command.clone(),
                    ..spec.clone()
                },
                workspace: ws,
                log,
                cancel: token,
                timeout,
                kill_grace: ctx.kill_grace,
            };
            monitor::watch(m, &mut prober, log, token).await
        }
        None => monitor::Verdict::Stopped,
    };
    match monitor::result(m, &verdict, started) {
        Some(result) => {
            for e in &result.errors {
                log.note(e).await;
            }
            if result.exit_code == 0 {
                log.note("healthy").await;
            }
            result
        }
        None => stopped_result(control, log, started).await,
    }
}

/// Runs the command in a prepared workspace and turns its end into a result.
async fn run_command<A: AgentApi>(
    ctx: &StageContext<A>,
    assignment: &Assignment,
    spec: &StageSpec,
    ws: &Workspace,
    control: &AttemptControl,
    log: &AttemptLog,
    started: Instant,
) -> StageResult {
    let mut execution = match ctx.executor.start(spec, ws).await {
        Ok(execution) => execution,
        Err(e) => return failure(log, started, e.to_string()).await,
    };
    if spec.image.is_empty() {
        info!("command started as a host process");
    } else {
        info!(image = %spec.image, "command started in a container");
    }
    let timer = (assignment.timeout_ms > 0).then(|| {
        let (control, ms) = (control.clone(), assignment.timeout_ms);
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => control.cancel(CancelReason::Timeout(ms)),
                    _ = control.token().cancelled() => {}
                }
            }
            .in_current_span(),
        )
    });
    let output = execution.take_output();
    let pump = async {
        let Some(mut output) = output else { return };
        while let Some(piece) = output.recv().await {
            // A stopped shipper only happens at shutdown; keep draining so the command can end.
            let _ = log.write(piece.data).await;
        }
    };
    let (exit, ()) = tokio::join!(
        execution.wait(control.token().clone(), ctx.kill_grace),
        pump
    );
    if let Some(timer) = timer {
        timer.abort();
    }
    let exit = match exit {
        Ok(exit) => exit,
        Err(e) => return failure(log, started, e.to_string()).await,
    };
    debug!(?exit, "command ended");
    if exit.terminated {
        return stopped_result(control, log, started).await;
    }
    let mut result = StageResult {
        exit_code: exit.exit_code(),
        duration_ms: elapsed_ms(started),
        oom_killed: exit.oom_killed,
        ..Default::default()
    };
    add_reports(&mut result, assignment, ws, log).await;
    log_exit(log, &exit).await;
    if exit.oom_killed {
        // A failure even when the shell survived the kill and exited 0.
        let message = oom_message(spec.container.memory_bytes);
        log.note(&message).await;
        result.errors.push(message);
    }
    result
}

async fn add_reports(
    result: &mut StageResult,
    assignment: &Assignment,
    ws: &Workspace,
    log: &AttemptLog,
) {
    let Some(declared) = assignment.reports.clone() else {
        return;
    };
    if declared.junit.is_empty() && declared.metrics.is_empty() {
        return;
    }
    let path = ws.path().to_path_buf();
    let parsed = tokio::task::spawn_blocking(move || {
        reports::collect(&path, &declared.junit, &declared.metrics)
    })
    .await;
    match parsed {
        Ok(parsed) => {
            for e in &parsed.errors {
                log.note(e).await;
            }
            result.tests = parsed.tests;
            result.metrics = parsed.metrics;
            result.errors.extend(parsed.errors);
        }
        Err(e) => result.errors.push(format!("reading reports failed: {e}")),
    }
}

async fn log_exit(log: &AttemptLog, exit: &Exit) {
    if exit.exit_code() != 0 {
        log.note(&format!("command exited with code {}", exit.exit_code()))
            .await;
    }
}

/// The result for a command the agent stopped: a timeout is a failure, anything else a cancel.
async fn stopped_result(
    control: &AttemptControl,
    log: &AttemptLog,
    started: Instant,
) -> StageResult {
    match control.reason() {
        Some(reason @ CancelReason::Timeout(_)) => {
            let message = reason.to_string();
            log.note(&message).await;
            StageResult {
                exit_code: -1,
                duration_ms: elapsed_ms(started),
                errors: vec![message],
                ..Default::default()
            }
        }
        _ => cancelled_result(control, log, started).await,
    }
}

async fn cancelled_result(
    control: &AttemptControl,
    log: &AttemptLog,
    started: Instant,
) -> StageResult {
    let reason = control
        .reason()
        .map_or_else(|| "cancelled".to_string(), |r| r.to_string());
    log.note(&format!("stage cancelled: {reason}")).await;
    StageResult {
        exit_code: -1,
        duration_ms: elapsed_ms(started),
        cancelled: true,
        ..Default::default()
    }
}

async fn failure(log: &AttemptLog, started: Instant, message: String) -> StageResult {
    log.note(&message).await;
    StageResult {
        exit_code: -1,
        duration_ms: elapsed_ms(started),
        errors: vec![message],
        ..Default::default()
    }
}

async fn destroy<A>(ctx: &StageContext<A>, ws: Workspace) {
    if let Err(e) = ctx.executor.destroy(ws).await {
        warn!(error = %e, "cannot remove the workspace");
    }
}

/// Most error messages in one result, and the longest one kept (the coordinator bounds both).
const MAX_ERRORS: usize = 20;
const MAX_ERROR_BYTES: usize = 2048;

fn bound_errors(errors: &mut Vec<String>) {
    if errors.len() > MAX_ERRORS {
        let dropped = errors.len() - (MAX_ERRORS - 1);
        errors.truncate(MAX_ERRORS - 1);
        errors.push(format!("... and {dropped} more errors"));
    }
    for e in errors.iter_mut() {
        if e.len() > MAX_ERROR_BYTES {
            let mut end = MAX_ERROR_BYTES;
            while !e.is_char_boundary(end) {
                end -= 1;
            }
            e.truncate(end);
            e.push_str("...");
        }
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The executor's view of an assignment: the assignment's env plus the `CD_*` variables (which
/// win over assignment values of the same name). `CD_WORKSPACE` is added once it exists (the
/// Docker backend points it at the workspace's mount, `/workspace`).
pub fn stage_spec(assignment: &Assignment, key: &AttemptKey, agent: &str) -> StageSpec {
    let mut env: BTreeMap<String, String> = assignment
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let vars = [
        ("CD_RUN_ID", key.run_id.clone()),
        ("CD_PIPELINE", assignment.pipeline.clone()),
        ("CD_STAGE", key.stage.clone()),
        ("CD_ATTEMPT", key.attempt.to_string()),
        ("CD_REVISION", assignment.revision.clone()),
        ("CD_ENVIRONMENT", assignment.environment.clone()),
        ("CD_AGENT", agent.to_string()),
    ];
    for (name, value) in vars {
        env.insert(name.to_string(), value);
    }
    StageSpec {
        key: key.clone(),
        command: assignment.command.clone(),
        env,
        secrets: SecretEnv(
            assignment
                .secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        source: (!assignment.source_path.is_empty()).then(|| assignment.source_path.clone().into()),
        image: assignment.image.clone(),
        container: assignment
            .container
            .as_ref()
            .map(|c| ContainerOptions {
                image_pull: c.image_pull.clone(),
                cpus: c.cpus,
                memory_bytes: c.memory_bytes,
                network: c.network.clone(),
                user: c.user.clone(),
                docker_socket: c.docker_socket,
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
#[path = "stage_tests.rs"]
mod tests;
