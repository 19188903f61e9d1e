//! dispatch: a queued stage reaching an agent. The bench plays the agent itself (its own agent
//! certificate, `Attach` with one slot). For each sample it calls `StartRun` on a one-stage
//! pipeline; the clock starts before `StartRun` is sent and stops when the `Assignment` for
//! that run arrives on the held `Attach` stream (timestamped by the task reading the stream).
//! The `StartRun` round trip alone is reported too. Then `StartAttempt` and `ReportResult`
//! (exit 0), outside the clock, free the slot before the next sample.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail, ensure};
use cd_proto::v1 as pb;
use cd_proto::v1::agent_message::Kind;
use tokio::sync::mpsc;

use super::node::{self, BenchEnv};
use super::report::Value;
use super::stats::{micros, percentile};

const AGENT: &str = "bench-agent";
const PIPELINE: &str = "bench-dispatch";
const SPEC: &str = "name: bench-dispatch\nstages:\n  - name: only\n    run: \"true\"\n";
/// Longer than any plausible dispatch: the scheduler also looks every 250 ms on its own.
const DISPATCH_TIMEOUT: Duration = Duration::from_secs(10);

type Arrival = (Instant, Result<Option<pb::AgentMessage>, tonic::Status>);

/// One repetition on a fresh coordinator.
pub async fn run(env: &BenchEnv, rep: usize, warmup: usize, samples: usize) -> Result<Vec<Value>> {
    let node = env.coordinator(&format!("dispatch-{rep}"))?;
    let values = measure(env, &node.endpoint, &node.dir, "", warmup, samples).await?;
    node.discard();
    Ok(values)
}

/// The measurement against the coordinator at `endpoint` (a single node, or a cluster's
/// leader); figure names start with `prefix`.
pub async fn measure(
    env: &BenchEnv,
    endpoint: &str,
    base_dir: &Path,
    prefix: &str,
    warmup: usize,
    samples: usize,
) -> Result<Vec<Value>> {
    let mut c = cd_tests::client(endpoint, &env.op).await?;
    cd_tests::apply_pipeline(&mut c, SPEC, base_dir).await?;
    let mut agent = node::agent_client(env, endpoint, AGENT).await?;
    // The response arrives once the coordinator registered the agent and counts it connected.
    let mut stream = agent
        .attach(pb::ConnectRequest {
            agent: AGENT.into(),
            labels: Vec::new(),
            slots: 1,
            version: "cd-bench".into(),
        })
        .await?
        .into_inner();
    let (tx, mut rx) = mpsc::unbounded_channel::<Arrival>();
    let reader = tokio::spawn(async move {
        loop {
            let m = stream.message().await;
            let at = Instant::now();
            let more = matches!(m, Ok(Some(_)));
            if tx.send((at, m)).is_err() || !more {
                break;
            }
        }
    });

    let (mut total, mut rtt, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmup + samples {
        let t0 = Instant::now();
        let run = c
            .start_run(pb::StartRunRequest {
                pipeline: PIPELINE.into(),
                revision: format!("sample-{i}"),
                params: Default::default(),
                trigger: "cd-bench".into(),
                commit_at_ms: 0,
            })
            .await?
            .into_inner();
        let t1 = Instant::now();
        let (t2, attempt) = next_assignment(&mut rx, &run.id).await?;
        if i >= warmup {
            let (whole, round_trip) = (micros(t2 - t0), micros(t1 - t0));
            total.push(whole);
            rtt.push(round_trip);
            // Negative if the assignment overtook the StartRun reply.
            after.push(whole - round_trip);
        }
        agent
            .start_attempt(pb::StartAttemptRequest {
                agent: AGENT.into(),
                attempt: Some(attempt.clone()),
            })
            .await?;
        agent
            .report_result(pb::ReportResultRequest {
                agent: AGENT.into(),
                attempt: Some(attempt),
                result: Some(pb::StageResult {
                    exit_code: 0,
                    ..Default::default()
                }),
            })
            .await?;
        let done = c
            .get_run(pb::GetRunRequest {
                run_id: run.id.clone(),
            })
            .await?
            .into_inner();
        ensure!(
            done.state == pb::RunState::Succeeded as i32,
            "run {} did not succeed after its only stage reported exit 0: {}",
            run.id,
            cd_tests::describe(Some(&done))
        );
    }
    reader.abort();
    Ok(vec![
        Value::new(
            format!("{prefix}dispatch p50 (StartRun sent -> Assignment received)"),
            "µs",
            percentile(&total, 50.0),
        ),
        Value::new(
            format!("{prefix}dispatch p99"),
            "µs",
            percentile(&total, 99.0),
        ),
        Value::new(
            format!("{prefix}StartRun round trip p50"),
            "µs",
            percentile(&rtt, 50.0),
        ),
        Value::new(
            format!("{prefix}StartRun round trip p99"),
            "µs",
            percentile(&rtt, 99.0),
        ),
        Value::new(
            format!("{prefix}Assignment after StartRun reply p50"),
            "µs",
            percentile(&after, 50.0),
        ),
    ])
}

/// Waits for the assignment of `run_id`; anything else on the stream is a failure.
async fn next_assignment(
    rx: &mut mpsc::UnboundedReceiver<Arrival>,
    run_id: &str,
) -> Result<(Instant, pb::AttemptRef)> {
    let Ok(arrival) = tokio::time::timeout(DISPATCH_TIMEOUT, rx.recv()).await else {
        bail!(
            "the stage of run {run_id} was not dispatched to the connected agent within {DISPATCH_TIMEOUT:?}"
        );
    };
    let (at, msg) = arrival.ok_or_else(|| anyhow!("the Attach stream reader stopped"))?;
    match msg {
        Ok(Some(pb::AgentMessage {
            kind: Some(Kind::Assignment(a)),
        })) => {
            let attempt = a
                .attempt
                .ok_or_else(|| anyhow!("assignment without an attempt"))?;
            ensure!(
                attempt.run_id == run_id && attempt.attempt == 1,
                "expected attempt 1 of run {run_id}, got {attempt:?}"
            );
            Ok((at, attempt))
        }
        Ok(Some(other)) => {
            bail!("unexpected message on the Attach stream while waiting for {run_id}: {other:?}")
        }
        Ok(None) => bail!("the coordinator ended the Attach stream"),
        Err(status) => bail!("the Attach stream failed: {status}"),
    }
}
