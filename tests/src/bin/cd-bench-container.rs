//! `cd-bench-container`: what running a stage in a container costs next to running it as a host
//! process, on a real release `cd-coordinator` and `cd-agent` over mutual TLS on 127.0.0.1 and
//! the local Docker engine, with the busybox test image (`conveyor-test/busybox:local`, built
//! locally, `image_pull: never`). Prints a Markdown table of medians over repetitions.
//!
//! Build and run: `cargo build --release --workspace && ./target/release/cd-bench-container`.
//! It is a binary, never a test: `cargo test` does not run it. A missing Docker engine fails it.
//!
//! Each repetition starts a fresh coordinator (empty data dir) and a fresh agent, runs one
//! unmeasured warm-up of each one-line stage, then measures, alternating host process and
//! container:
//!
//! - **first log**: a stage `echo first; true`. The clock for "attempt start -> first chunk"
//!   starts at the attempt's `started_ms` (the coordinator applying `StartAttempt`, before the
//!   command starts) and stops when the first log chunk arrives on a `FollowLogs` (follow=true)
//!   stream the bench opened right after the `StartRun` reply (both wall clocks of this host, in
//!   ms). "StartRun -> first chunk" and "total" are client monotonic clocks from before
//!   `StartRun` is sent to the first chunk, or to the first `WatchRun` message with the run final.
//!   "attempt span" is `finished_ms - started_ms` (the coordinator applying `ReportResult`).
//! - **logs**: a stage printing N lines of 80 bytes with busybox awk (the same static busybox
//!   binary on the host and in the image). Span = `finished_ms - started_ms`; the agent reports
//!   the result only after every log chunk was acknowledged durable. The stored log is read back
//!   with `FollowLogs` (follow=false) and must be exactly the N lines in order.
//!
//! After every container run the bench waits (bounded) until no container labelled with the run
//! and the agent is left; every agent's leftovers are force-removed at the end of a repetition.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use cd_common::certs::Role;
use cd_common::tls::TlsPaths;
use cd_proto::v1 as pb;
use cd_proto::v1::control_service_client::ControlServiceClient;
use cd_tests::docker::{self, BUSYBOX_IMAGE, Sweep};
use cd_tests::{Agent, Certs, Coordinator, RunState, describe, eventually};
use clap::Parser;
use tonic::transport::Channel;

type Client = ControlServiceClient<Channel>;

const RUN_TIMEOUT: Duration = Duration::from_secs(300);
const LINE_BYTES: usize = 80;
const MAX_LINES: u64 = 99_999_999;

#[derive(Parser)]
#[command(
    name = "cd-bench-container",
    about = "Container stage vs host process: time to first log line, total run time, and log \
             throughput, on a release coordinator and agent and the local Docker engine"
)]
struct Args {
    /// Repetitions; each starts a fresh coordinator and agent; the table shows the median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Lines the log stage prints (80 bytes each).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=MAX_LINES))]
    lines: u64,
    /// Where the scratch dir goes. Default: the system temp dir.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Process,
    Container,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Process => "process",
            Kind::Container => "container",
        }
    }

    /// The stage's container fields (none for a host process).
    fn image_lines(self) -> String {
        match self {
            Kind::Process => String::new(),
            Kind::Container => {
                format!("    image: {BUSYBOX_IMAGE}\n    image_pull: never\n")
            }
        }
    }

    /// busybox awk: `/bin/busybox` on the host (the static binary the image is built from),
    /// `awk` (a busybox applet) in the image.
    fn awk(self) -> &'static str {
        match self {
            Kind::Process => "/bin/busybox awk",
            Kind::Container => "awk",
        }
    }

    fn first_pipeline(self) -> String {
        format!("cbc-first-{}", self.label())
    }

    fn logs_pipeline(self) -> String {
        format!("cbc-logs-{}", self.label())
    }

    fn first_spec(self) -> String {
        format!(
            "name: {}\nstages:\n  - name: s\n{}    run: |\n      echo first; true\n",
            self.first_pipeline(),
            self.image_lines()
        )
    }

    /// Line `i` is `i` in 8 digits, a space and 70 zeros: 80 bytes with its newline.
    fn logs_spec(self) -> String {
        format!(
            "name: {}\nstages:\n  - name: print\n{}    run: |\n      {} -v n=\"$LINES\" 'BEGIN {{ pad = sprintf(\"%070d\", 0); for (i = 0; i < n; i++) printf \"%08d %s\\n\", i, pad }}'\n",
            self.logs_pipeline(),
            self.image_lines(),
            self.awk()
        )
    }
}

const KINDS: [Kind; 2] = [Kind::Process, Kind::Container];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    cd_common::tls::install_crypto_provider();
    let args = Args::parse();
    let bin = release_dir()?;
    let engine = docker_engine()?;
    // Builds the busybox image once (panics with the reason if it cannot).
    docker::busybox_image();
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("cd-bench-container-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a scratch dir in {}", parent.display()))?;
    match measure(&args, tmp.path()).await {
        Ok(table) => {
            report(&args, &bin, &engine, tmp.path(), &table);
            Ok(())
        }
        Err(e) => {
            let kept = tmp.keep();
            eprintln!(
                "cd-bench-container failed; processes' logs and data are kept in {}",
                kept.display()
            );
            Err(e)
        }
    }
}

/// The directory holding this binary and the release `cd-coordinator` and `cd-agent` (which
/// `cd_tests::bin` finds next to it).
fn release_dir() -> Result<PathBuf> {
    let dir = cd_tests::bin_dir();
    if cfg!(debug_assertions) || dir.file_name().is_none_or(|n| n != "release") {
        bail!(
            "cd-bench-container measures release binaries: build with `cargo build --release \
             --workspace` and run ./target/release/cd-bench-container (this one runs from {})",
            dir.display()
        );
    }
    for name in ["cd-coordinator", "cd-agent"] {
        ensure!(
            dir.join(name).exists(),
            "{} is missing: run `cargo build --release --workspace`",
            dir.join(name).display()
        );
    }
    Ok(dir)
}

/// The engine's version, or an error saying the engine is missing.
fn docker_engine() -> Result<String> {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run the docker CLI: cd-bench-container needs a Docker engine")?;
    ensure!(
        out.status.success(),
        "the Docker engine is unavailable ({}): cd-bench-container needs a running engine \
         (start dockerd, or `service docker start`)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One coordinator and one agent (with its own name, so the sweep touches only its containers).
/// Dropped in field order: processes first, then the agent's leftover containers.
struct Setup {
    coord: Coordinator,
    agent: Agent,
    _sweep: Sweep,
    op: TlsPaths,
    dir: PathBuf,
}

impl Setup {
    async fn start(root: &Path, certs: &Certs, rep: usize) -> Result<Setup> {
        let dir = root.join(format!("rep-{rep}"));
        let name = format!("cbc-{}-{rep}", std::process::id());
        let sweep = Sweep::agent(&name);
        let coord = Coordinator::start(&dir.join("node"), certs, &[])?;
        let tls = certs.tls(Role::Agent, &name);
        let agent = Agent::start(
            &name,
            &coord.endpoint,
            &tls,
            &dir.join("agent"),
            &["--slots", "1"],
        )?;
        let op = certs.operator();
        let setup = Setup {
            coord,
            agent,
            _sweep: sweep,
            op,
            dir,
        };
        setup.wait_docker_agent().await?;
        Ok(setup)
    }

    /// Waits until the agent is connected and advertises `docker`.
    async fn wait_docker_agent(&self) -> Result<()> {
        let name = self.agent.name.clone();
        let mut c = self.client().await?;
        let agent = eventually(
            &format!(
                "agent {name} to connect (log {})",
                self.agent.proc.log.display()
            ),
            Duration::from_secs(30),
            || {
                let mut c = c.clone();
                let name = name.clone();
                async move {
                    let agents = c
                        .list_agents(pb::ListAgentsRequest {})
                        .await
                        .ok()?
                        .into_inner()
                        .agents;
                    agents.into_iter().find(|a| a.name == name && a.connected)
                }
            },
        )
        .await?;
        ensure!(
            agent.labels.iter().any(|l| l == "docker"),
            "agent {name} does not advertise `docker` (labels {:?}): its engine did not answer; \
             see {}",
            agent.labels,
            self.agent.proc.log.display()
        );
        for kind in KINDS {
            cd_tests::apply_pipeline(&mut c, &kind.first_spec(), &self.dir).await?;
            cd_tests::apply_pipeline(&mut c, &kind.logs_spec(), &self.dir).await?;
        }
        Ok(())
    }

    async fn client(&self) -> Result<Client> {
        self.coord.client(&self.op).await
    }

    /// After a container run: no container of this run and agent may be left (bounded wait).
    async fn containers_gone(&self, run_id: &str) -> Result<()> {
        let labels = [
            format!("conveyor.agent={}", self.agent.name),
            format!("conveyor.run={run_id}"),
        ];
        eventually(
            &format!("the containers of run {run_id} to be removed"),
            Duration::from_secs(15),
            || {
                let labels = labels.clone();
                async move {
                    let left = tokio::task::spawn_blocking(move || {
                        docker::containers(&[&labels[0], &labels[1]])
                    })
                    .await
                    .ok()?;
                    left.is_empty().then_some(())
                }
            },
        )
        .await
    }
}

fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn start_run(c: &mut Client, pipeline: &str, params: &[(&str, &str)]) -> Result<String> {
    cd_tests::start_run(c, pipeline, params).await
}

/// Follows `WatchRun` until the run is final; returns it and when that message arrived.
async fn watch_final(c: &mut Client, run_id: &str) -> Result<(pb::Run, Instant)> {
    let mut s = c
        .watch_run(pb::WatchRunRequest {
            run_id: run_id.into(),
        })
        .await?
        .into_inner();
    let mut last = None;
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, s.message())
            .await
            .map_err(|_| {
                anyhow!(
                    "run {run_id} not final after {RUN_TIMEOUT:?}: {}",
                    describe(last.as_ref())
                )
            })??;
        let Some(run) = msg else {
            bail!(
                "WatchRun of {run_id} ended before the run was final: {}",
                describe(last.as_ref())
            );
        };
        if run.state != RunState::Running as i32 {
            return Ok((run, Instant::now()));
        }
        last = Some(run);
    }
}

/// The run succeeded with its one stage in exactly one attempt; returns that attempt.
fn one_attempt(run: &pb::Run, stage: &str) -> Result<pb::Attempt> {
    ensure!(
        run.state == RunState::Succeeded as i32,
        "run did not succeed: {}",
        describe(Some(run))
    );
    let st = run
        .stages
        .iter()
        .find(|s| s.name == stage)
        .ok_or_else(|| anyhow!("run {} has no stage {stage}", run.id))?;
    ensure!(
        st.attempts.len() == 1,
        "stage {stage} took {} attempts: {}",
        st.attempts.len(),
        describe(Some(run))
    );
    let a = st.attempts[0].clone();
    ensure!(
        a.started_ms > 0 && a.finished_ms >= a.started_ms,
        "attempt times started_ms={} finished_ms={} give no span",
        a.started_ms,
        a.finished_ms
    );
    Ok(a)
}

/// One `echo first; true` run, timed.
struct First {
    /// Attempt `started_ms` -> first chunk arrived (wall clocks, ms).
    first_from_start: f64,
    /// Before StartRun sent -> first chunk arrived (monotonic, ms).
    first_from_startrun: f64,
    /// Before StartRun sent -> WatchRun says final (monotonic, ms).
    total: f64,
    /// Attempt started_ms..finished_ms.
    span: f64,
    /// Attempt assigned_ms..started_ms (workspace prepared, StartAttempt applied).
    assigned_to_started: f64,
    /// Container runs: the attempt span cut at the engine's container events.
    engine: Vec<Value>,
}

/// The engine's events for the run's container (`docker events`, ns timestamps of the engine's
/// clock, the same host clock as the coordinator's ms): attempt start -> create -> attach ->
/// start -> die -> destroy -> attempt finished, in ms.
fn engine_phases(agent: &str, run_id: &str, a: &pb::Attempt) -> Result<Vec<Value>> {
    let since = format!("{:.3}", a.started_ms as f64 / 1e3 - 1.0);
    let until = format!("{:.3}", wall_ms() / 1e3 + 0.1);
    let out = Command::new("docker")
        .args(["events", "--since", &since, "--until", &until])
        .args(["--filter", &format!("label=conveyor.agent={agent}")])
        .args(["--filter", &format!("label=conveyor.run={run_id}")])
        .args(["--filter", "type=container"])
        .args(["--format", "{{.TimeNano}} {{.Action}}"])
        .stdin(Stdio::null())
        .output()
        .context("running docker events")?;
    ensure!(
        out.status.success(),
        "docker events failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let at = |action: &str| -> Result<f64> {
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(_, act)| act.trim() == action)
            .and_then(|(ns, _)| ns.parse::<f64>().ok())
            .map(|ns| ns / 1e6)
            .ok_or_else(|| anyhow!("no `{action}` event for run {run_id}; events:\n{text}"))
    };
    let marks = [
        ("attempt start", a.started_ms as f64),
        ("create", at("create")?),
        ("attach", at("attach")?),
        ("start", at("start")?),
        ("die", at("die")?),
        ("destroy", at("destroy")?),
        ("attempt finished", a.finished_ms as f64),
    ];
    Ok(marks
        .windows(2)
        .map(|w| {
            Value::new(
                format!("container phase: {} -> {}", w[0].0, w[1].0),
                "ms",
                w[1].1 - w[0].1,
            )
        })
        .collect())
}

async fn first_log(setup: &Setup, kind: Kind) -> Result<First> {
    let mut c = setup.client().await?;
    let mut follow_c = c.clone();
    let mut watch_c = c.clone();
    let t0 = Instant::now();
    let id = start_run(&mut c, &kind.first_pipeline(), &[]).await?;
    let follow_id = id.clone();
    let follow = tokio::spawn(async move {
        let mut s = follow_c
            .follow_logs(pb::FollowLogsRequest {
                run_id: follow_id,
                stage: "s".into(),
                attempt: 0,
                follow: true,
            })
            .await?
            .into_inner();
        let chunk = tokio::time::timeout(RUN_TIMEOUT, s.message())
            .await
            .map_err(|_| anyhow!("no log chunk within {RUN_TIMEOUT:?}"))??
            .ok_or_else(|| anyhow!("the log stream ended without a chunk"))?;
        let at = (Instant::now(), wall_ms());
        ensure!(
            chunk.data.starts_with(b"first"),
            "the first log chunk is {:?}, not \"first\"",
            String::from_utf8_lossy(&chunk.data)
        );
        Ok::<_, anyhow::Error>(at)
    });
    let (run, t_final) = watch_final(&mut watch_c, &id).await?;
    let (t_first, wall_first) = tokio::time::timeout(Duration::from_secs(30), follow)
        .await
        .map_err(|_| anyhow!("run {id} is final but no log chunk arrived"))???;
    let a = one_attempt(&run, "s")?;
    let mut engine = Vec::new();
    if kind == Kind::Container {
        setup.containers_gone(&id).await?;
        engine = engine_phases(&setup.agent.name, &id, &a)?;
    }
    Ok(First {
        engine,
        first_from_start: wall_first - a.started_ms as f64,
        first_from_startrun: ms(t_first - t0),
        total: ms(t_final - t0),
        span: (a.finished_ms - a.started_ms) as f64,
        assigned_to_started: (a.started_ms - a.assigned_ms) as f64,
    })
}

/// One log run: (lines/s, MB/s, span ms).
async fn logs(setup: &Setup, kind: Kind, lines: u64) -> Result<(f64, f64, f64)> {
    let mut c = setup.client().await?;
    let id = start_run(
        &mut c,
        &kind.logs_pipeline(),
        &[("LINES", &lines.to_string())],
    )
    .await?;
    let (run, _) = watch_final(&mut c, &id).await?;
    let a = one_attempt(&run, "print")?;
    if kind == Kind::Container {
        setup.containers_gone(&id).await?;
    }
    let span_ms = (a.finished_ms - a.started_ms) as f64;
    ensure!(span_ms > 0.0, "log attempt of run {id} has a zero span");
    let log = cd_tests::logs(&mut c, &id, "print")
        .await
        .context("reading the stored log back")?;
    verify(&log, lines).with_context(|| {
        format!(
            "stored log of run {id} ({} stage; data dir {})",
            kind.label(),
            setup.dir.display()
        )
    })?;
    let secs = span_ms / 1000.0;
    Ok((lines as f64 / secs, log.len() as f64 / 1e6 / secs, span_ms))
}

/// The stored log must be exactly lines 0..n as printed: none lost, repeated, reordered or cut.
fn verify(log: &[u8], n: u64) -> Result<()> {
    let expected_len = n as usize * LINE_BYTES;
    if log.len() != expected_len {
        let stored = log.iter().filter(|b| **b == b'\n').count();
        bail!(
            "LOG LINES LOST OR ADDED: expected {n} lines ({expected_len} bytes), stored {} bytes \
             in {stored} lines",
            log.len()
        );
    }
    let pad = "0".repeat(LINE_BYTES - 10);
    for (i, line) in log.chunks(LINE_BYTES).enumerate() {
        let want = format!("{i:08} {pad}\n");
        if line != want.as_bytes() {
            bail!(
                "STORED LOG DIFFERS at line {i} of {n}: expected {want:?}, found {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
    Ok(())
}

async fn measure(args: &Args, root: &Path) -> Result<Table> {
    let certs = Certs::new(&root.join("certs"))?;
    let mut table = Table::default();
    for rep in 1..=args.runs as usize {
        let setup = Setup::start(root, &certs, rep).await?;
        // Unmeasured: the first container and process of a fresh agent.
        for kind in KINDS {
            first_log(&setup, kind).await?;
        }
        let mut firsts = Vec::new();
        for kind in KINDS {
            let mut f = first_log(&setup, kind).await?;
            let l = kind.label();
            let mut row = vec![
                Value::new(
                    format!("first log: attempt start -> first chunk received ({l})"),
                    "ms",
                    f.first_from_start,
                ),
                Value::new(
                    format!("first log: StartRun sent -> first chunk received ({l})"),
                    "ms",
                    f.first_from_startrun,
                ),
                Value::new(
                    format!("total: StartRun sent -> WatchRun final ({l})"),
                    "ms",
                    f.total,
                ),
                Value::new(
                    format!("attempt span started_ms..finished_ms ({l})"),
                    "ms",
                    f.span,
                ),
                Value::new(
                    format!("assigned_ms..started_ms ({l})"),
                    "ms",
                    f.assigned_to_started,
                ),
            ];
            let engine = std::mem::take(&mut f.engine);
            row.extend(engine);
            eprintln!(
                "repetition {rep}/{} first-log {l}: {}",
                args.runs,
                brief(&row)
            );
            table.add(&row);
            firsts.extend(row);
        }
        let mut lg = Vec::new();
        for kind in KINDS {
            let (lps, mbps, span) = logs(&setup, kind, args.lines).await?;
            let l = kind.label();
            let row = vec![
                Value::new(format!("logs: lines/s ({l})"), "lines/s", lps),
                Value::new(format!("logs: MB/s, 10^6 bytes ({l})"), "MB/s", mbps),
                Value::new(format!("logs: attempt span ({l})"), "ms", span),
            ];
            eprintln!("repetition {rep}/{} logs {l}: {}", args.runs, brief(&row));
            table.add(&row);
            lg.extend(row);
        }
        let cmp = compare(&firsts, &lg);
        eprintln!(
            "repetition {rep}/{} comparisons: {}",
            args.runs,
            brief(&cmp)
        );
        table.add(&cmp);
        let Setup { coord, agent, .. } = setup;
        drop(agent);
        drop(coord);
        let _ = std::fs::remove_dir_all(root.join(format!("rep-{rep}")));
    }
    Ok(table)
}

/// Container minus process, and container / process, of the same repetition.
fn compare(firsts: &[Value], logs: &[Value]) -> Vec<Value> {
    let get = |all: &[Value], name: &str| {
        all.iter()
            .find(|v| v.name == name)
            .map(|v| v.value)
            .unwrap_or(f64::NAN)
    };
    let mut out = Vec::new();
    for what in [
        "first log: attempt start -> first chunk received",
        "total: StartRun sent -> WatchRun final",
        "attempt span started_ms..finished_ms",
    ] {
        let c = get(firsts, &format!("{what} (container)"));
        let p = get(firsts, &format!("{what} (process)"));
        out.push(Value::new(
            format!("{what}: container - process"),
            "ms",
            c - p,
        ));
        out.push(Value::new(
            format!("{what}: container / process"),
            "x",
            c / p,
        ));
    }
    let c = get(logs, "logs: lines/s (container)");
    let p = get(logs, "logs: lines/s (process)");
    out.push(Value::new("logs: lines/s container / process", "x", c / p));
    let c = get(logs, "logs: attempt span (container)");
    let p = get(logs, "logs: attempt span (process)");
    out.push(Value::new("logs: span container - process", "ms", c - p));
    out
}

fn brief(values: &[Value]) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|v| format!("{} = {} {}", v.name, fmt(v.value, v.unit), v.unit))
        .collect();
    parts.join("; ")
}

/// One figure of one repetition.
struct Value {
    name: String,
    unit: &'static str,
    value: f64,
}

impl Value {
    fn new(name: impl Into<String>, unit: &'static str, value: f64) -> Value {
        Value {
            name: name.into(),
            unit,
            value,
        }
    }
}

/// Every figure in the order first seen, with its value in each repetition.
#[derive(Default)]
struct Table {
    rows: Vec<(String, &'static str, Vec<f64>)>,
}

impl Table {
    fn add(&mut self, values: &[Value]) {
        for v in values {
            match self.rows.iter_mut().find(|(name, _, _)| *name == v.name) {
                Some((_, _, all)) => all.push(v.value),
                None => self.rows.push((v.name.clone(), v.unit, vec![v.value])),
            }
        }
    }

    fn markdown(&self) -> String {
        let mut s = String::from(
            "| figure | unit | median | min..max | each repetition |\n|---|---|---:|---:|---|\n",
        );
        for (name, unit, values) in &self.rows {
            let (median, min, max) = spread(values);
            let each: Vec<String> = values.iter().map(|v| fmt(*v, unit)).collect();
            s.push_str(&format!(
                "| {name} | {unit} | {} | {}..{} | {} |\n",
                fmt(median, unit),
                fmt(min, unit),
                fmt(max, unit),
                each.join(", ")
            ));
        }
        s
    }
}

/// Median (mean of the middle two for an even count), min and max.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// Whole lines/s, ms with one decimal, MB/s with one, ratios with two.
fn fmt(v: f64, unit: &str) -> String {
    match unit {
        "MB/s" | "ms" => format!("{v:.1}"),
        "x" => format!("{v:.2}"),
        _ => format!("{v:.0}"),
    }
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn report(args: &Args, bin: &Path, engine: &str, root: &Path, table: &Table) {
    let command: Vec<String> = std::env::args().collect();
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    println!("## cd-bench-container results\n");
    println!("- command: `{}`", command.join(" "));
    println!(
        "- {} repetitions (fresh coordinator + agent each, one unmeasured warm-up run of each \
         one-line stage), {} log lines of {LINE_BYTES} bytes",
        args.runs, args.lines
    );
    println!(
        "- Docker engine {engine} (storage driver {}), image `{BUSYBOX_IMAGE}` (image_pull: never)",
        output("docker", &["info", "--format", "{{.Driver}}"])
    );
    println!(
        "- machine: nproc {nproc}, kernel `{}`; scratch dir {} ({})",
        output("uname", &["-r"]),
        root.display(),
        output(
            "findmnt",
            &["-n", "-o", "FSTYPE,SOURCE", "-T", &root.to_string_lossy()]
        )
    );
    println!(
        "- date: {}; binaries: {}\n",
        output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        bin.display()
    );
    print!("{}", table.markdown());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_exact_and_rejects_changes() {
        let lines = |n: usize| -> Vec<u8> {
            let pad = "0".repeat(70);
            (0..n)
                .flat_map(|i| format!("{i:08} {pad}\n").into_bytes())
                .collect()
        };
        assert!(verify(&lines(3), 3).is_ok());
        assert!(verify(&lines(3), 4).is_err());
        let good = lines(3);
        assert!(verify(&good[..good.len() - 1], 3).is_err());
        let mut swapped = lines(3);
        swapped[..LINE_BYTES].copy_from_slice(&lines(2)[LINE_BYTES..]);
        assert!(verify(&swapped, 3).is_err());
    }

    #[test]
    fn specs_differ_only_in_the_container_fields() {
        assert!(Kind::Container.first_spec().contains("image_pull: never"));
        assert!(!Kind::Process.first_spec().contains("image"));
        assert!(
            Kind::Process
                .logs_spec()
                .contains("/bin/busybox awk -v n=\"$LINES\"")
        );
        assert_eq!(spread(&[3.0, 1.0, 2.0, 4.0]), (2.5, 1.0, 4.0));
    }
}
