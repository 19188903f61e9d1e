//! The Jenkinsfile flow end to end on the real Docker engine: examples/web-service builds its
//! image, tests it in a container, deploys staging, probes it, passes the gate, replaces the
//! production container; a second release follows, and `cdctl rollback production` puts the
//! previous image back.

use std::process::Command;
use std::time::Duration;

use cd_proto::v1 as pb;
use cd_tests::docker::require_docker;
use cd_tests::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Removes what the example made for this prefix, even when the test fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(workspace_root().join("examples/web-service/cleanup.sh"))
            .env("WEB_PREFIX", &self.0)
            .output();
    }
}

fn production_image(prefix: &str) -> String {
    let out = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.Config.Image}}",
            &format!("{prefix}-production"),
        ])
        .output()
        .expect("docker inspect runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn release(s: &Single, prefix: &str, revision: &str) -> anyhow::Result<String> {
    let mut c = s.client().await?;
    let run = c
        .start_run(pb::StartRunRequest {
            pipeline: "web-service".into(),
            revision: revision.into(),
            params: [("WEB_PREFIX".to_string(), prefix.to_string())]
                .into_iter()
                .collect(),
            trigger: "test".into(),
            commit_at_ms: 0,
        })
        .await?
        .into_inner();
    let done = s.wait_final(&run.id, RUN_TIMEOUT).await?;
    assert_eq!(
        done.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&done))
    );
    Ok(run.id)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_service_goes_to_production_and_rolls_back() -> anyhow::Result<()> {
    require_docker();
    let prefix = format!("cdt{}", std::process::id());
    let _cleanup = Cleanup(prefix.clone());
    let s = Single::start(&["agent-1"], &[], &["--labels", "linux"]).await?;
    let apply = s
        .cdctl()
        .args(["pipeline", "apply", "-f"])
        .arg(workspace_root().join("examples/web-service/pipeline.yaml"))
        .output()?;
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );

    release(&s, &prefix, "v1").await?;
    assert_eq!(production_image(&prefix), format!("{prefix}:v1"));
    release(&s, &prefix, "v2").await?;
    assert_eq!(production_image(&prefix), format!("{prefix}:v2"));

    let rb = s
        .cdctl()
        .args(["rollback", "production", "--reason", "test"])
        .output()?;
    assert!(
        rb.status.success(),
        "{}",
        String::from_utf8_lossy(&rb.stderr)
    );
    let id = String::from_utf8(rb.stdout)?.trim().to_string();
    let run = s.wait_final(&id, RUN_TIMEOUT).await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    assert_eq!(run.revision, "v1");
    assert_eq!(
        production_image(&prefix),
        format!("{prefix}:v1"),
        "rollback restores the v1 image"
    );
    let mut c = s.client().await?;
    let history = c
        .environment_history(pb::EnvironmentHistoryRequest {
            environment: "production".into(),
        })
        .await?
        .into_inner()
        .deployments;
    assert_eq!(history[0].kind, "rollback");
    assert_eq!(history[0].revision, "v1");
    Ok(())
}
