//! The monitoring stage: health checks every `interval` for `duration` after a deployment.
//!
//! Each check runs the probe (a command through the executor, in the stage's workspace and,
//! with an image, in a container; or a plain-HTTP GET made by the agent) and writes one line
//! to the stage log: `[cd-agent] check N at <ms since epoch>: ok|FAIL (<detail>)`. The stage
//! fails as soon as `failure_threshold` checks in a row failed, and succeeds when `duration`
//! has passed (or, with `duration` 0, the health check of a rollback, at the first passing
//! check). The result carries `check_at_ms`: when the deciding check ended, so the incident the
//! coordinator opens starts at the failed check, not when the result arrived.

use std::time::Duration;

use cd_proto::v1::{MonitorSpec, StageResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::executor::{Executor, StageSpec, Workspace};
use crate::logship::AttemptLog;

/// One check's outcome: passed or not, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

/// How the watch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Healthy for the whole duration (or, with duration 0, a check passed).
    Healthy { checks: u32, last_at_ms: i64 },
    /// `failure_threshold` consecutive checks failed; the last one ended at `at_ms`.
    Failing {
        checks: u32,
        at_ms: i64,
        detail: String,
    },
    /// The attempt's token fired.
    Stopped,
}

/// What the loop needs to run one check; the stage runner implements it with the executor.
pub trait Prober {
    fn check(&mut self) -> impl Future<Output = Check> + Send;
}

/// Watches with `probe` as `m` says; logs one line per check. `cancel` stops it.
pub async fn watch(
    m: &MonitorSpec,
    prober: &mut impl Prober,
    log: &AttemptLog,
    cancel: &CancellationToken,
) -> Verdict {
    let interval = Duration::from_millis(m.interval_ms.max(1));
    let deadline =
        (m.duration_ms > 0).then(|| Instant::now() + Duration::from_millis(m.duration_ms));
    let threshold = m.failure_threshold.max(1);
    let mut failed_in_a_row = 0;
    let mut checks = 0;
    loop {
        let started = Instant::now();
        let check = tokio::select! {
            _ = cancel.cancelled() => return Verdict::Stopped,
            c = prober.check() => c,
        };
        checks += 1;
        let last_at_ms = cd_common::time::now_ms();
        let word = if check.ok { "ok" } else { "FAIL" };
        log.note(&format!(
            "check {checks} at {last_at_ms}: {word} ({})",
            check.detail
        ))
        .await;
        if check.ok {
            failed_in_a_row = 0;
            if deadline.is_none() {
                return Verdict::Healthy { checks, last_at_ms };
            }
        } else {
            failed_in_a_row += 1;
            if failed_in_a_row >= threshold {
                return Verdict::Failing {
                    checks,
                    at_ms: last_at_ms,
                    detail: check.detail,
                };
            }
        }
        let mut next = started + interval;
        if let Some(end) = deadline
            && next >= end
        {
            next = end;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Verdict::Stopped,
            _ = tokio::time::sleep_until(next) => {}
        }
        if deadline.is_some_and(|end| Instant::now() >= end) {
            return Verdict::Healthy { checks, last_at_ms };
        }
    }
}

/// The result a verdict reports (`None` for a stopped watch: the caller reports the cancel).
pub fn result(m: &MonitorSpec, verdict: &Verdict, started: Instant) -> Option<StageResult> {
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match verdict {
        Verdict::Healthy { last_at_ms, .. } => Some(StageResult {
            exit_code: 0,
            duration_ms,
            check_at_ms: *last_at_ms,
            ..Default::default()
        }),
        Verdict::Failing { at_ms, detail, .. } => Some(StageResult {
            exit_code: 1,
            duration_ms,
            check_at_ms: *at_ms,
            errors: vec![format!(
                "monitor: {} consecutive checks failed; last: {detail}",
                m.failure_threshold.max(1)
            )],
            ..Default::default()
        }),
        Verdict::Stopped => None,
    }
}

/// Runs a command probe through the executor, its output into the stage log.
pub struct CommandProber<'a> {
    pub executor: &'a dyn Executor,
    pub spec: StageSpec,
    pub workspace: &'a Workspace,
    pub log: &'a AttemptLog,
    pub cancel: &'a CancellationToken,
    pub timeout: Duration,
    pub kill_grace: Duration,
}

impl Prober for CommandProber<'_> {
    async fn check(&mut self) -> Check {
        let mut execution = match self.executor.start(&self.spec, self.workspace).await {
            Ok(e) => e,
            Err(e) => {
                return Check {
                    ok: false,
                    detail: e.to_string(),
                };
            }
        };
        let stop = self.cancel.child_token();
        let timer = {
            let (stop, timeout) = (stop.clone(), self.timeout);
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                stop.cancel();
            })
        };
        let output = execution.take_output();
        let log = self.log;
        let pump = async {
            let Some(mut output) = output else { return };
            while let Some(piece) = output.recv().await {
                let _ = log.write(piece.data).await;
            }
        };
        let (exit, ()) = tokio::join!(execution.wait(stop, self.kill_grace), pump);
        timer.abort();
        match exit {
            Err(e) => Check {
                ok: false,
                detail: e.to_string(),
            },
            Ok(exit) if exit.terminated => Check {
                ok: false,
                detail: format!(
                    "timed out after {}",
                    cd_common::duration::format_ms(self.timeout.as_millis() as u64)
                ),
            },
            Ok(exit) => Check {
                ok: exit.exit_code() == 0,
                detail: format!("exit code {}", exit.exit_code()),
            },
        }
    }
}

/// A plain-HTTP GET; passes when the status equals `expect_status`.
pub struct HttpProber {
    pub url: String,
    pub expect_status: u16,
    pub timeout: Duration,
}

impl Prober for HttpProber {
    async fn check(&mut self) -> Check {
        match tokio::time::timeout(self.timeout, http_status(&self.url)).await {
            Err(_) => Check {
                ok: false,
                detail: format!(
                    "GET {}: no answer within {}",
                    self.url,
                    cd_common::duration::format_ms(self.timeout.as_millis() as u64)
                ),
            },
            Ok(Err(e)) => Check {
                ok: false,
                detail: format!("GET {}: {e}", self.url),
            },
            Ok(Ok(status)) => Check {
                ok: status == self.expect_status,
                detail: format!(
                    "GET {}: status {status} (expected {})",
                    self.url, self.expect_status
                ),
            },
        }
    }
}

/// Largest response head read while looking for the status line.
const MAX_HEAD: usize = 8 * 1024;

/// GETs `url` over HTTP/1.1 and returns the response status. Only the status line is read:
/// a health check needs nothing else, and this keeps the probe free of a client stack.
pub async fn http_status(url: &str) -> std::io::Result<u16> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    if let Some(problem) = cd_common::spec::url_problem(url) {
        return Err(bad(problem));
    }
    let rest = url.trim_start_matches("http://");
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path = path.split('#').next().unwrap_or("");
    let path = if path.is_empty() { "/" } else { path };
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'));
    let addr = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: cd-agent-monitor\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > MAX_HEAD {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|s| s.parse::<u16>().ok()),
    ) {
        (Some(v), Some(status)) if v.starts_with("HTTP/") => Ok(status),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not an HTTP response: {:?}",
                line.chars().take(80).collect::<String>()
            ),
        )),
    }
}

#[cfg(test)]
#[path = "monitor_tests.rs"]
mod tests;
