//! logs: log lines per second from one real `cd-agent` into durable state. A stage prints N
//! lines of 80 bytes (newline included) with awk; the span is the attempt's `started_ms` (the
//! coordinator applying `StartAttempt`, before the command starts) to its `finished_ms` (the
//! coordinator applying `ReportResult`, which the agent sends only after every log chunk was
//! acknowledged as durable). Afterwards the stored log is read back with `FollowLogs`
//! (follow=false) and must be exactly the N lines printed, in order.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use cd_proto::v1 as pb;

use super::node::BenchEnv;
use super::report::Value;

pub const AGENT: &str = "bench-logs";
const PIPELINE: &str = "bench-logs";
/// Line `i` is `i` in 8 digits, a space and 70 zeros: 80 bytes with its newline.
const SPEC: &str = r#"name: bench-logs
stages:
  - name: print
    run: |
      awk -v n="$LINES" 'BEGIN { pad = sprintf("%070d", 0); for (i = 0; i < n; i++) printf "%08d %s\n", i, pad }'
"#;
pub const LINE_BYTES: usize = 80;
/// The largest count whose line numbers still fit in 8 digits.
pub const MAX_LINES: u64 = 99_999_999;

/// One repetition on a fresh coordinator and agent.
pub async fn run(env: &BenchEnv, rep: usize, lines: u64) -> Result<Vec<Value>> {
    let mut node = env.coordinator(&format!("logs-{rep}"))?;
    node.start_agent(env, AGENT).await?;
    let endpoints = [node.endpoint.clone()];
    let values = measure(env, &endpoints, &node.dir, "", lines).await?;
    node.discard();
    Ok(values)
}

/// The measurement with agent `AGENT` already connected: runs the stage through the first of
/// `endpoints` (a single node, or a cluster's leader first), follows the run on any of them.
/// Figure names start with `prefix`.
pub async fn measure(
    env: &BenchEnv,
    endpoints: &[String],
    dir: &Path,
    prefix: &str,
    lines: u64,
) -> Result<Vec<Value>> {
    ensure!(
        (1..=MAX_LINES).contains(&lines),
        "--lines must be in 1..={MAX_LINES}"
    );
    let mut c = cd_tests::client(&endpoints[0], &env.op).await?;
    cd_tests::apply_pipeline(&mut c, SPEC, dir).await?;
    let id = cd_tests::start_run(&mut c, PIPELINE, &[("LINES", &lines.to_string())]).await?;
    let run = cd_tests::wait_run_any(endpoints, &env.op, &id, Duration::from_secs(600), |r| {
        r.state != pb::RunState::Running as i32
    })
    .await?;
    ensure!(
        run.state == pb::RunState::Succeeded as i32,
        "log run did not succeed: {}",
        cd_tests::describe(Some(&run))
    );
    let stage = run
        .stages
        .iter()
        .find(|s| s.name == "print")
        .ok_or_else(|| anyhow!("run {id} has no stage print"))?;
    ensure!(
        stage.attempts.len() == 1,
        "stage print took {} attempts (the span would not be one attempt's): {}",
        stage.attempts.len(),
        cd_tests::describe(Some(&run))
    );
    let a = &stage.attempts[0];
    let span_ms = a.finished_ms - a.started_ms;
    ensure!(
        a.started_ms > 0 && span_ms > 0,
        "attempt times started_ms={} finished_ms={} give no span",
        a.started_ms,
        a.finished_ms
    );

    let log = cd_tests::logs(&mut c, &id, "print")
        .await
        .context("reading the stored log back")?;
    verify(&log, lines)
        .with_context(|| format!("stored log of run {id} (data dir {})", dir.display()))?;

    let secs = span_ms as f64 / 1000.0;
    Ok(vec![
        Value::new(
            format!("{prefix}logs: lines/s into durable state"),
            "lines/s",
            lines as f64 / secs,
        ),
        Value::new(
            format!("{prefix}logs: MB/s (10^6 bytes)"),
            "MB/s",
            log.len() as f64 / 1e6 / secs,
        ),
        Value::new(
            format!("{prefix}logs: StartAttempt -> ReportResult span"),
            "ms",
            span_ms as f64,
        ),
    ])
}

/// The stored log must be exactly lines 0..n as printed: no line lost, repeated, reordered or
/// cut.
fn verify(log: &[u8], n: u64) -> Result<()> {
    let expected_len = n as usize * LINE_BYTES;
    let stored = log.split(|b| *b == b'\n').count().saturating_sub(1);
    if log.len() != expected_len {
        bail!(
            "LOG LINES LOST OR ADDED: expected {n} lines ({expected_len} bytes), stored {} bytes in {stored} lines",
            log.len()
        );
    }
    let pad = "0".repeat(LINE_BYTES - 10);
    let mut want = String::with_capacity(LINE_BYTES);
    for (i, line) in log.chunks(LINE_BYTES).enumerate() {
        want.clear();
        want.push_str(&format!("{i:08} {pad}\n"));
        if line != want.as_bytes() {
            bail!(
                "STORED LOG DIFFERS at line {i} of {n}: expected {:?}, found {:?}",
                want,
                String::from_utf8_lossy(line)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> Vec<u8> {
        let pad = "0".repeat(70);
        (0..n)
            .flat_map(|i| format!("{i:08} {pad}\n").into_bytes())
            .collect()
    }

    #[test]
    fn verify_accepts_exact_and_rejects_changes() {
        let good = lines(3);
        assert_eq!(good.len(), 3 * LINE_BYTES);
        assert!(verify(&good, 3).is_ok());
        assert!(verify(&good, 4).is_err());
        assert!(verify(&good[..good.len() - 1], 3).is_err());
        let mut swapped = lines(3);
        swapped[..LINE_BYTES].copy_from_slice(&lines(2)[LINE_BYTES..]);
        assert!(verify(&swapped, 3).is_err());
    }
}
