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
/// Line `i` is `i` in 8 digits, a space and 70 bytes of log-like text (a clock, a level, a
/// module and a test case: one of 10,007 texts, picked by a hash of `i`): 80 bytes with its
/// newline. Like real build output it repeats words but seldom whole lines, so LZ4 (agents
/// compress chunks) shrinks it about 3x, not 50x as the all-zero lines used before. The texts
/// are made once so awk prints as fast as before (the stage must not be the bottleneck);
/// `line`, below, makes the same bytes for checking.
const SPEC: &str = r#"name: bench-logs
stages:
  - name: print
    run: |
      awk -v n="$LINES" 'BEGIN {
        split("INFO DEBUG WARN INFO", lv, " ");
        split("scheduler runner api store gate agent deploy metrics", md, " ");
        split("assign apply start finish check push read write", fn, " ");
        for (h = 0; h < 10007; h++)
          t[h] = sprintf("%-70.70s", sprintf("12:%02d:%02d.%03d %-5s %s::%s case_%05d took %d.%03ds", int(h / 600) % 60, int(h / 10) % 60, (h * 37) % 1000, lv[h % 4 + 1], md[h % 8 + 1], fn[int(h / 8) % 8 + 1], h, h % 7, (h * 31) % 1000));
        for (i = 0; i < n; i++)
          printf "%08d %s\n", i, t[(i * 7919 + 13) % 10007]
      }'
"#;

/// Line `i` as the stage prints it, newline included.
fn line(i: u64) -> String {
    const LV: [&str; 4] = ["INFO", "DEBUG", "WARN", "INFO"];
    const MD: [&str; 8] = [
        "scheduler",
        "runner",
        "api",
        "store",
        "gate",
        "agent",
        "deploy",
        "metrics",
    ];
    const FN: [&str; 8] = [
        "assign", "apply", "start", "finish", "check", "push", "read", "write",
    ];
    let h = (i * 7919 + 13) % 10007;
    let t = format!(
        "12:{:02}:{:02}.{:03} {:<5} {}::{} case_{:05} took {}.{:03}s",
        (h / 600) % 60,
        (h / 10) % 60,
        (h * 37) % 1000,
        LV[(h % 4) as usize],
        MD[(h % 8) as usize],
        FN[((h / 8) % 8) as usize],
        h,
        h % 7,
        (h * 31) % 1000
    );
    format!("{i:08} {t:<70.70}\n")
}
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
    for (i, got) in log.chunks(LINE_BYTES).enumerate() {
        let want = line(i as u64);
        if got != want.as_bytes() {
            bail!(
                "STORED LOG DIFFERS at line {i} of {n}: expected {:?}, found {:?}",
                want,
                String::from_utf8_lossy(got)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> Vec<u8> {
        (0..n as u64).flat_map(|i| line(i).into_bytes()).collect()
    }

    /// The awk program and `line` must agree byte for byte.
    #[test]
    fn awk_prints_what_line_expects() {
        let spec = cd_common::spec::parse(SPEC, "bench-logs.yaml").expect("valid spec");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&spec.stages[0].run)
            .env("LINES", "2500")
            .output()
            .expect("sh runs");
        assert!(out.status.success());
        assert!(
            verify(&out.stdout, 2500).is_ok(),
            "{:?}",
            verify(&out.stdout, 2500)
        );
    }

    /// How much the agent's LZ4 shrinks this text, for BENCHMARKS.md.
    #[test]
    fn the_text_compresses_like_logs_not_like_zeros() {
        let text = lines(1000);
        let (packed, _) = cd_common::logcodec::encode(&text[..32 * 1024]);
        let ratio = (32 * 1024) as f64 / packed.len() as f64;
        eprintln!("bench log text: LZ4 ratio {ratio:.2} per 32 KiB chunk");
        assert!((1.5..6.0).contains(&ratio), "ratio {ratio:.2}");
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
