//! `cd-bench`: measures a real release `cd-coordinator` (and, for logs, a real `cd-agent`) on
//! one node over loopback mutual TLS, and prints a Markdown table. What each figure measures
//! and where its clock starts and stops: BENCHMARKS.md.
//!
//! Build and run: `cargo build --release --workspace && ./target/release/cd-bench`.
//! It is a binary, never a test: `cargo test` does not run it.

#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;

use anyhow::{Context, Result};
use bench::node::{BenchEnv, release_dir};
use bench::report::{Table, Value, fmt, machine};
use bench::{commit, dispatch, fsync, logs};
use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(
    name = "cd-bench",
    about = "Benchmarks a single release coordinator: commit latency, dispatch latency, log throughput"
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
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Which>,
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
}

const ALL: [Which; 4] = [Which::Fsync, Which::Commit, Which::Dispatch, Which::Logs];

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
    match measure(&args, &env).await {
        Ok(table) => {
            print_report(&args, &env, &table);
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

/// Every repetition runs each selected measurement once, in the same order, so slow drift of
/// the machine touches all of them alike.
async fn measure(args: &Args, env: &BenchEnv) -> Result<Table> {
    let selected: Vec<Which> = ALL
        .into_iter()
        .filter(|w| args.only.is_empty() || args.only.contains(w))
        .collect();
    let samples = args.samples as usize;
    let warmup = (samples / 10).clamp(1, 20);
    let mut table = Table::default();
    for rep in 1..=args.runs as usize {
        for which in &selected {
            let values = match which {
                Which::Fsync => {
                    let dir = env.root.clone();
                    tokio::task::spawn_blocking(move || fsync::run(&dir, rep, warmup, samples))
                        .await??
                }
                Which::Commit => commit::run(env, rep, warmup, samples).await?,
                Which::Dispatch => dispatch::run(env, rep, warmup, samples).await?,
                Which::Logs => logs::run(env, rep, args.lines).await?,
            };
            eprintln!(
                "repetition {rep}/{} {which:?}: {}",
                args.runs,
                brief(&values)
            );
            table.add(&values);
        }
    }
    Ok(table)
}

fn brief(values: &[Value]) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|v| format!("{} = {} {}", v.name, fmt(v.value, v.unit), v.unit))
        .collect();
    parts.join("; ")
}

fn print_report(args: &Args, env: &BenchEnv, table: &Table) {
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
    print!("{}", machine(&env.root));
    println!("- binaries: {}\n", env.bin.display());
    if !table.is_empty() {
        print!("{}", table.markdown());
    }
}
