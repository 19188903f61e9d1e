//! Closed-loop load: `clients` tasks, spread over `connections` HTTP/2 connections, each with
//! one call in flight at a time, for `warmup + measure`. Throughput counts the calls that
//! completed inside the measured window; every call must succeed, or the benchmark fails.
//!
//! The load runs on a runtime of its own (multi-threaded, one worker per CPU) in a thread of
//! its own, so the many client tasks are not squeezed onto the single thread the latency
//! figures use. The same driver loads Conveyor and etcd.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::stats::{micros, percentile};

/// Upper bound for one call; a call slower than this fails the benchmark.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub clients: usize,
    pub connections: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct LoadResult {
    /// Calls completed in the measured window per second.
    pub per_sec: f64,
    /// Latency of those calls (µs).
    pub p50: f64,
    pub p99: f64,
    /// Every call completed, warm-up included.
    pub calls: u64,
}

/// Opens `load.connections` connections with `connect(i)`, then drives `call` on them from
/// `load.clients` tasks. Returns once every call issued has completed.
pub async fn run<C, Conn, ConnFut, Call, CallFut>(
    load: Load,
    connect: Conn,
    call: Call,
) -> Result<LoadResult>
where
    C: Clone + Send + 'static,
    Conn: Fn(usize) -> ConnFut + Send + 'static,
    ConnFut: Future<Output = Result<C>>,
    Call: Fn(C) -> CallFut + Clone + Send + Sync + 'static,
    CallFut: Future<Output = Result<()>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cd-bench-load".into())
        .spawn(move || {
            let workers = std::thread::available_parallelism().map_or(2, usize::from);
            let result = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .context("building the load runtime")
                .and_then(|rt| rt.block_on(drive(load, connect, call)));
            let _ = tx.send(result);
        })
        .context("spawning the load thread")?;
    rx.await.map_err(|_| anyhow!("the load thread died"))?
}

async fn drive<C, Conn, ConnFut, Call, CallFut>(
    load: Load,
    connect: Conn,
    call: Call,
) -> Result<LoadResult>
where
    C: Clone + Send + 'static,
    Conn: Fn(usize) -> ConnFut,
    ConnFut: Future<Output = Result<C>>,
    Call: Fn(C) -> CallFut + Clone + Send + Sync + 'static,
    CallFut: Future<Output = Result<()>> + Send + 'static,
{
    let mut conns = Vec::with_capacity(load.connections);
    for i in 0..load.connections.max(1) {
        conns.push(connect(i).await?);
    }
    let start = Instant::now();
    let window_start = start + load.warmup;
    let end = window_start + load.measure;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..load.clients.max(1) {
        let conn = conns[client % conns.len()].clone();
        let call = call.clone();
        tasks.spawn(async move {
            // Latency (µs) of every call that completed inside the window.
            let mut done = Vec::new();
            let mut issued = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                issued += 1;
                match tokio::time::timeout(CALL_TIMEOUT, call(conn.clone())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return Err(e.context(format!(
                            "call {issued} of client {client} failed {:?} into the load",
                            t - start
                        )));
                    }
                    Err(_) => bail!(
                        "call {issued} of client {client} took more than {CALL_TIMEOUT:?} ({:?} into the load)",
                        t - start
                    ),
                }
                let now = Instant::now();
                if now >= window_start && now <= end {
                    done.push(micros(now - t));
                }
            }
            Ok((done, issued))
        });
    }
    let mut lat = Vec::new();
    let mut calls = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("a load task panicked")? {
            Ok((done, issued)) => {
                lat.extend(done);
                calls += issued;
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if lat.is_empty() {
        bail!("no call completed inside the measured window");
    }
    Ok(LoadResult {
        per_sec: lat.len() as f64 / load.measure.as_secs_f64(),
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
        calls,
    })
}
