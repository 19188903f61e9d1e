//! Failpoints in the Raft loop (the coordinator is built with its `failpoints` feature for the
//! test suite): the node aborts at each point, restarts on its data dir, and every write it
//! acknowledged before the crash is still there.

use std::time::Duration;

use cd_proto::v1 as pb;
use cd_tests::*;

const POINTS: [&str; 6] = [
    "raft-before-persist",
    "raft-after-persist",
    "raft-before-apply",
    "raft-after-apply",
    "raft-before-snapshot",
    "raft-after-snapshot",
];

async fn crash_and_recover(point: &str) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("cd-fail-").tempdir()?;
    let certs = Certs::new(&tmp.path().join("certs"))?;
    let op = certs.operator();
    // Let the node serve a while, then die at the point on its 25th visit.
    let spec = format!("{point}=24*off->return");
    let mut node = Coordinator::start_with_env(
        &tmp.path().join("node"),
        &certs,
        &["--snapshot-every", "7"],
        &[("FAILPOINTS", spec.as_str())],
    )?;
    let mut c = node.client(&op).await?;
    let mut acknowledged = Vec::new();
    for i in 0..400 {
        let name = format!("p{i}");
        let r = c
            .apply_pipeline(pb::ApplyPipelineRequest {
                spec_yaml: format!("name: {name}\nstages:\n  - name: a\n    run: 'true'\n"),
                file_name: "p.yaml".into(),
                base_dir: String::new(),
            })
            .await;
        match r {
            Ok(_) => acknowledged.push(name),
            Err(_) => break,
        }
    }
    anyhow::ensure!(
        acknowledged.len() < 400,
        "{point}: the node did not crash within 400 writes (built without failpoints?)"
    );
    let status = node.proc.child.wait()?;
    assert!(
        !status.success(),
        "{point}: the node did not crash (built without failpoints?)"
    );
    assert!(
        node.proc.log_text().contains(&format!("failpoint {point}")),
        "{point}: crashed elsewhere"
    );
    assert!(
        !acknowledged.is_empty() && acknowledged.len() < 400,
        "{point}: {} writes acknowledged",
        acknowledged.len()
    );

    node.restart_clean()?;
    let mut c = node.client(&op).await?;
    let names: Vec<String> = eventually(
        "the restarted node to answer",
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            async move {
                Some(
                    c.list_pipelines(pb::ListPipelinesRequest {})
                        .await
                        .ok()?
                        .into_inner()
                        .pipelines,
                )
            }
        },
    )
    .await?
    .into_iter()
    .map(|p| p.name)
    .collect();
    for name in &acknowledged {
        assert!(
            names.contains(name),
            "{point}: acknowledged write {name} lost after the crash"
        );
    }
    // And the node goes on committing.
    apply_pipeline(
        &mut c,
        "name: after\nstages:\n  - name: a\n    run: 'true'\n",
        tmp.path(),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_raft_failpoint_crash_recovers_every_acknowledged_write() -> anyhow::Result<()> {
    for point in POINTS {
        crash_and_recover(point).await?;
    }
    Ok(())
}
