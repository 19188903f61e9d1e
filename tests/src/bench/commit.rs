//! commit: one replicated, fsynced command as a gRPC client sees it. Sequential
//! `ApplyPipeline` calls re-apply an unchanged spec; each still goes through Raft (propose ->
//! append and fdatasync -> apply -> reply), it just stores no new version. The clock starts
//! before the call is sent and stops when its reply has arrived.

use std::time::Instant;

use anyhow::{Result, ensure};
use cd_proto::v1 as pb;
use cd_proto::v1::control_service_client::ControlServiceClient;
use tonic::transport::Channel;

use super::node::BenchEnv;
use super::report::Value;
use super::stats::{micros, percentile};

const SPEC: &str = "name: bench-commit\nstages:\n  - name: noop\n    run: \"true\"\n";

async fn apply(c: &mut ControlServiceClient<Channel>) -> Result<bool> {
    let r = c
        .apply_pipeline(pb::ApplyPipelineRequest {
            spec_yaml: SPEC.into(),
            file_name: "bench-commit.yaml".into(),
            base_dir: String::new(),
        })
        .await?
        .into_inner();
    Ok(r.changed)
}

/// One repetition on a fresh coordinator: `warmup` unmeasured calls, then `samples` measured.
pub async fn run(env: &BenchEnv, rep: usize, warmup: usize, samples: usize) -> Result<Vec<Value>> {
    let node = env.coordinator(&format!("commit-{rep}"))?;
    let mut c = env.control(&node).await?;
    ensure!(
        apply(&mut c).await?,
        "the first apply of bench-commit stored no version"
    );
    for _ in 0..warmup {
        apply(&mut c).await?;
    }
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let changed = apply(&mut c).await?;
        lat.push(micros(t.elapsed()));
        ensure!(
            !changed,
            "re-applying an unchanged spec stored a new version"
        );
    }
    node.discard();
    Ok(vec![
        Value::new("commit p50", "µs", percentile(&lat, 50.0)),
        Value::new("commit p99", "µs", percentile(&lat, 99.0)),
    ])
}
