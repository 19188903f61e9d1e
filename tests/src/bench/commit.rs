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

pub const FILE: &str = "bench-commit.yaml";

pub fn request() -> pb::ApplyPipelineRequest {
    pb::ApplyPipelineRequest {
        spec_yaml: SPEC.into(),
        file_name: FILE.into(),
        base_dir: String::new(),
    }
}

/// One `ApplyPipeline` of the bench spec; whether it stored a new version.
pub async fn apply(c: &mut ControlServiceClient<Channel>) -> Result<bool> {
    Ok(c.apply_pipeline(request()).await?.into_inner().changed)
}

/// The Raft entry one such call proposes (the same encoding the coordinator writes), so a
/// comparison can write values of the same size.
pub fn entry_bytes() -> Result<usize> {
    use cd_coordinator::state::{Command, Kind, command};
    let spec = cd_common::spec::parse(SPEC, FILE)?;
    let cmd = Command::new(
        cd_common::time::now_ms(),
        Kind::ApplyPipeline(command::ApplyPipeline {
            name: spec.name.clone(),
            spec_yaml: SPEC.into(),
            file_name: FILE.into(),
            spec_json: serde_json::to_string(&spec)?,
        }),
    );
    Ok(cmd.encode_to_vec().len())
}

/// One repetition on a fresh coordinator: `warmup` unmeasured calls, then `samples` measured.
pub async fn run(env: &BenchEnv, rep: usize, warmup: usize, samples: usize) -> Result<Vec<Value>> {
    let node = env.coordinator(&format!("commit-{rep}"))?;
    let mut c = env.control(&node).await?;
    let lat = sequential(&mut c, warmup, samples).await?;
    node.discard();
    Ok(vec![
        Value::new("commit p50", "µs", percentile(&lat, 50.0)),
        Value::new("commit p99", "µs", percentile(&lat, 99.0)),
    ])
}

/// The first apply (stores the pipeline), `warmup` unmeasured calls, then `samples` measured
/// ones, each checked to have stored nothing new. Latencies in µs.
pub async fn sequential(
    c: &mut ControlServiceClient<Channel>,
    warmup: usize,
    samples: usize,
) -> Result<Vec<f64>> {
    ensure!(
        apply(c).await?,
        "the first apply of bench-commit stored no version"
    );
    for _ in 0..warmup {
        apply(c).await?;
    }
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let changed = apply(c).await?;
        lat.push(micros(t.elapsed()));
        ensure!(
            !changed,
            "re-applying an unchanged spec stored a new version"
        );
    }
    Ok(lat)
}
