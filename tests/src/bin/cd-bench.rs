//! `cd-bench`: measures a real release `cd-coordinator` (and, for logs, a real `cd-agent`) on
//! one node, or with `--cluster` on a 3-node cluster next to a 3-member etcd cluster, over
//! loopback, and prints a Markdown table. What each figure measures and where its clock starts
//! and stops: BENCHMARKS.md.
//!
//! Build and run: `cargo build --release --workspace && ./target/release/cd-bench [--cluster]`.
//! It is a binary, never a test: `cargo test` does not run it.

#[path = "../bench/mod.rs"]
mod bench;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bench::etcd::Security;
use bench::load::Load;
use bench::node::{BenchEnv, release_dir};
use bench::report::{Table, Value, fmt, machine};
use bench::{commit, dispatch, etcd, failover, fsync, logs, replicated};
use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(
    name = "cd-bench",
    about = "Benchmarks release coordinators: commit latency, dispatch latency, log throughput \
             on one node; with --cluster the same on 3 nodes, throughput, failover, and etcd"
)]
struct Args {
    /// Repetitions; each starts fresh processes, and the table shows the median over them.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Measured samples per repetition for the latency figures (after a few unmeasured ones).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    samples: u32,
    /// Lines the log stage prints (80 bytes each).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=logs::MAX_LINES))]
    lines: u64,
    /// Run only these measurements (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "cluster")]
    only: Vec<Which>,
    /// Also run the 3-node cluster measurements and etcd side by side, after the single-node
    /// ones (which stay as the reference for what replication adds): every measurement.
    #[arg(long)]
    cluster: bool,
    /// Concurrent callers for the throughput figures (each has one call in flight).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    clients: u32,
    /// HTTP/2 connections the callers share for the throughput figures.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    connections: u32,
    /// Measured seconds of each throughput figure (after one unmeasured second).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
    seconds: u64,
    /// Leader kills per repetition for the failover figure.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    kills: u32,
    /// The etcd binary for the etcd figures.
    #[arg(long, default_value = "etcd")]
    etcd: String,
    /// Where the scratch dir (data dirs, certificates) goes; the filesystem matters for fsync.
    /// Default: the system temp dir.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Which {
    Fsync,
    Commit,
    Dispatch,
    Logs,
    /// Both etcd setups (plain and mutual TLS): put latency and throughput.
    Etcd,
    ClusterCommit,
    ClusterThroughput,
    ClusterDispatch,
    ClusterLogs,
    Failover,
}

/// Every measurement, in the order each repetition runs them.
const ALL: [Which; 10] = [
    Which::Fsync,
    Which::Commit,
    Which::Dispatch,
    Which::Logs,
    Which::Etcd,
    Which::ClusterCommit,
    Which::ClusterThroughput,
    Which::ClusterDispatch,
    Which::ClusterLogs,
    Which::Failover,
];
/// Without --only or --cluster.
const SINGLE: [Which; 4] = [Which::Fsync, Which::Commit, Which::Dispatch, Which::Logs];
impl Which {
    fn cluster(self) -> bool {
        !SINGLE.contains(&self)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    cd_common::tls::install_crypto_provider();
    let args = Args::parse();
    let bin = release_dir()?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("cd-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a scratch dir in {}", parent.display()))?;
    let env = BenchEnv::new(bin, tmp.path().to_path_buf())?;
    let selected = selected(&args);
    let etcd_version = if selected.contains(&Which::Etcd) {
        Some(etcd::check(&args.etcd)?)
    } else {
        None
    };
    match measure(&args, &selected, &env).await {
        Ok(table) => {
            print_report(&args, &selected, etcd_version.as_deref(), &env, &table);
            Ok(())
        }
        Err(e) => {
            let kept = tmp.keep();
            eprintln!(
                "cd-bench failed; processes' logs and data are kept in {}",
                kept.display()
            );
            Err(e)
        }
    }
}

fn selected(args: &Args) -> Vec<Which> {
    ALL.into_iter()
        .filter(|w| {
            if !args.only.is_empty() {
                args.only.contains(w)
            } else {
                args.cluster || SINGLE.contains(w)
            }
        })
        .collect()
}

fn load(args: &Args) -> Load {
    Load {
        clients: args.clients as usize,
        connections: args.connections as usize,
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs(args.seconds),
    }
}

/// Every repetition runs each selected measurement once, in the same order, so slow drift of
/// the machine touches all of them alike.
async fn measure(args: &Args, selected: &[Which], env: &BenchEnv) -> Result<Table> {
    let samples = args.samples as usize;
    let warmup = (samples / 10).clamp(1, 20);
    let mut table = Table::default();
    for rep in 1..=args.runs as usize {
        let mut this_rep: HashMap<String, f64> = HashMap::new();
        for which in selected {
            let values = match which {
                Which::Fsync => {
                    let dir = env.root.clone();
                    tokio::task::spawn_blocking(move || fsync::run(&dir, rep, warmup, samples))
                        .await??
                }
                Which::Commit => commit::run(env, rep, warmup, samples).await?,
                Which::Dispatch => dispatch::run(env, rep, warmup, samples).await?,
                Which::Logs => logs::run(env, rep, args.lines).await?,
                Which::Etcd => {
                    let mut v = Vec::new();
                    for sec in [Security::Plain, Security::MutualTls] {
                        v.extend(
                            etcd::run(env, &args.etcd, sec, rep, warmup, samples, load(args))
                                .await?,
                        );
                    }
                    v
                }
                Which::ClusterCommit => replicated::commit(env, rep, warmup, samples).await?,
                Which::ClusterThroughput => replicated::throughput(env, rep, load(args)).await?,
                Which::ClusterDispatch => replicated::dispatch(env, rep, warmup, samples).await?,
                Which::ClusterLogs => replicated::logs(env, rep, args.lines).await?,
                Which::Failover => failover::run(env, rep, args.kills as usize).await?,
            };
            eprintln!(
                "repetition {rep}/{} {which:?}: {}",
                args.runs,
                brief(&values)
            );
            table.add(&values);
            this_rep.extend(values.iter().map(|v| (v.name.clone(), v.value)));
        }
        let ratios = ratios(&this_rep);
        if !ratios.is_empty() {
            eprintln!("repetition {rep}/{} ratios: {}", args.runs, brief(&ratios));
        }
        table.add(&ratios);
    }
    Ok(table)
}

/// Conveyor over etcd, from figures of the same repetition (below 1: Conveyor is faster for
/// latencies; above 1: Conveyor does more per second).
const RATIOS: [(&str, &str, &str); 3] = [
    ("cluster commit p50", "put p50", "commit p50"),
    ("cluster commit p99", "put p99", "commit p99"),
    (
        "cluster throughput: commits/s",
        "throughput: puts/s",
        "throughput",
    ),
];

fn ratio_name(what: &str, sec: Security) -> String {
    format!("ratio Conveyor / {}: {what}", sec.label())
}

fn ratios(rep: &HashMap<String, f64>) -> Vec<Value> {
    let mut out = Vec::new();
    for sec in [Security::MutualTls, Security::Plain] {
        for (ours, theirs, what) in RATIOS {
            let theirs = format!("{} {theirs}", sec.label());
            if let (Some(a), Some(b)) = (rep.get(ours), rep.get(&theirs)) {
                out.push(Value::new(ratio_name(what, sec), "x", a / b));
            }
        }
    }
    out
}

fn brief(values: &[Value]) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|v| format!("{} = {} {}", v.name, fmt(v.value, v.unit), v.unit))
        .collect();
    parts.join("; ")
}

fn print_report(
    args: &Args,
    selected: &[Which],
    etcd_version: Option<&str>,
    env: &BenchEnv,
    table: &Table,
) {
    let command: Vec<String> = std::env::args().collect();
    println!("## cd-bench results\n");
    println!("- command: `{}`", command.join(" "));
    println!(
        "- {} repetitions x {} samples (latencies; nearest-rank percentiles), {} log lines of {} bytes",
        args.runs,
        args.samples,
        args.lines,
        logs::LINE_BYTES
    );
    if selected.iter().any(|w| w.cluster()) {
        println!(
            "- cluster: {} nodes on 127.0.0.1, mutual TLS; throughput: {} clients over {} connections, {} s measured after 1 s; failover: {} kills per repetition",
            bench::cluster::NODES,
            args.clients,
            args.connections,
            args.seconds,
            args.kills
        );
    }
    if let Some(v) = etcd_version {
        println!(
            "- etcd: `{}` ({v}), 3 members on 127.0.0.1, each put {} bytes of key + value (the size of the commit figure's Raft command)",
            args.etcd,
            commit::entry_bytes().unwrap_or(0)
        );
    }
    print!("{}", machine(&env.root));
    println!("- binaries: {}\n", env.bin.display());
    if !table.is_empty() {
        print!("{}", table.markdown());
    }
    let goals = goals(table);
    if !goals.is_empty() {
        println!("\n### Goals (medians over repetitions; failover also its worst kill)\n");
        for g in goals {
            println!("- {g}");
        }
    }
}

/// The cluster goals, met or not, for the figures that were measured.
fn goals(table: &Table) -> Vec<String> {
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut out = Vec::new();
    for sec in [Security::MutualTls, Security::Plain] {
        if let Some(r) = table.spread(&ratio_name("commit p50", sec)) {
            out.push(format!(
                "commit latency no worse than {}: p50 ratio {} -> {}",
                sec.label(),
                fmt(r.median, "x"),
                met(r.median <= 1.0)
            ));
        }
        if let Some(r) = table.spread(&ratio_name("throughput", sec)) {
            out.push(format!(
                "throughput at least {}'s: ratio {} -> {}",
                sec.label(),
                fmt(r.median, "x"),
                met(r.median >= 1.0)
            ));
        }
    }
    if let Some(d) = table.spread("cluster dispatch p50 (StartRun sent -> Assignment received)") {
        out.push(format!(
            "cluster stage dispatch p50 < 5 ms: {} µs -> {}",
            fmt(d.median, "µs"),
            met(d.median < 5000.0)
        ));
    }
    if let Some(f) = table.spread(failover::WRITE) {
        out.push(format!(
            "failover < 1.5 s: median {} ms, worst {} ms -> {}",
            fmt(f.median, "ms"),
            fmt(f.max, "ms"),
            met(f.max < 1500.0)
        ));
    }
    if let Some(l) = table.spread("cluster logs: MB/s (10^6 bytes)") {
        out.push(format!(
            "cluster logs >= 50 MB/s: {} MB/s -> {}",
            fmt(l.median, "MB/s"),
            met(l.median >= 50.0)
        ));
    }
    out
}
