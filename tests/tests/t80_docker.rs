//! Container stages on the real Docker engine, with a busybox image built locally (no registry):
//! output reaches `cdctl logs`, exit codes and OOM kills are reported, cancel and timeout stop
//! and remove the container, `network: none` isolates, a missing image fails clearly, and an
//! agent killed mid-stage reaps its orphaned container when it starts again.
//!
//! A missing engine fails these tests; they are never skipped.

use std::time::{Duration, Instant};

use cd_proto::v1 as pb;
use cd_tests::docker::{self, Sweep};
use cd_tests::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// A coordinator and one agent with a name of its own (so its start-up cleanup touches no other
/// test's containers). Dropped in field order: the processes are killed first, then whatever
/// containers the agent left are removed.
struct Setup {
    s: Single,
    name: String,
    _sweep: Sweep,
}

async fn start(test: &str, agent_extra: &[&str]) -> anyhow::Result<Setup> {
    docker::busybox_image();
    let name = docker::agent_name(test);
    let _sweep = Sweep::agent(&name);
    let s = Single::start(&[&name], &[], agent_extra).await?;
    Ok(Setup { s, name, _sweep })
}

/// `yaml` with `IMAGE` replaced by the test image.
fn pipeline(yaml: &str) -> String {
    yaml.replace("IMAGE", docker::BUSYBOX_IMAGE)
}

/// Applies `yaml` (with the test image), starts a run of `name` and waits until it ends.
async fn run_to_end(s: &Single, yaml: &str, name: &str) -> anyhow::Result<(String, pb::Run)> {
    let mut c = s.client().await?;
    apply_pipeline(&mut c, &pipeline(yaml), s.tmp.path()).await?;
    let id = start_run(&mut c, name, &[]).await?;
    let run = s.wait_final(&id, RUN_TIMEOUT).await?;
    Ok((id, run))
}

fn cdctl_logs(s: &Single, run: &str, stage: &str) -> String {
    let out = s
        .cdctl()
        .args(["logs", run, stage])
        .output()
        .expect("cdctl runs");
    assert!(
        out.status.success(),
        "cdctl logs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn result(run: &pb::Run, stage_name: &str) -> pb::StageResult {
    let st = stage(run, stage_name);
    st.attempts
        .last()
        .and_then(|a| a.result.clone())
        .unwrap_or_else(|| panic!("stage {stage_name} has no result: {}", describe(Some(run))))
}

/// The containers of `run` made by `agent` (run ids repeat across the tests' coordinators).
fn run_containers(agent: &str, run: &str) -> Vec<String> {
    docker::containers(&[
        &format!("conveyor.agent={agent}"),
        &format!("conveyor.run={run}"),
    ])
}

async fn containers_gone(agent: &str, run: &str, within: Duration) -> anyhow::Result<()> {
    eventually(
        &format!("the containers of run {run} to be removed"),
        within,
        || async { run_containers(agent, run).is_empty().then_some(()) },
    )
    .await
}

/// Waits until the run has a running container other than `except`; returns its id.
async fn running_container(agent: &str, run: &str, except: Option<&str>) -> anyhow::Result<String> {
    eventually(
        "the stage's container to run",
        Duration::from_secs(30),
        || async {
            run_containers(agent, run)
                .into_iter()
                .find(|id| Some(id.as_str()) != except && docker::running(id))
        },
    )
    .await
}

const HELLO: &str = r#"
name: hello
stages:
  - name: build
    image: IMAGE
    image_pull: never
    run: |
      echo "workspace=$CD_WORKSPACE pwd=$(pwd) stage=$CD_STAGE greeting=$GREETING"
      echo "to stderr" >&2
      echo built > artifact.txt
      cat artifact.txt
      printf 'no newline at the end'
  - name: whoami
    image: IMAGE
    user: "65534:65534"
    resources: { cpus: 0.5, memory: 32m }
    run: echo "uid=$(id -u) gid=$(id -g)"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_runs_in_a_container_and_its_output_reaches_cdctl_logs() -> anyhow::Result<()> {
    let setup = start("hello", &[]).await?;
    let (s, name) = (&setup.s, &setup.name);
    let mut c = s.client().await?;
    let agents = c
        .list_agents(pb::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    let me = agents
        .iter()
        .find(|a| &a.name == name)
        .expect("agent listed");
    assert!(
        me.labels.iter().any(|l| l == "docker"),
        "an agent with a working engine advertises `docker`: {:?}",
        me.labels
    );

    apply_pipeline(&mut c, &pipeline(HELLO), s.tmp.path()).await?;
    let id = start_run(&mut c, "hello", &[("GREETING", "hi")]).await?;
    let run = s.wait_final(&id, RUN_TIMEOUT).await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    assert_eq!(result(&run, "build").exit_code, 0);
    assert!(!result(&run, "build").oom_killed);

    let log = cdctl_logs(s, &id, "build");
    assert!(
        log.contains("workspace=/workspace pwd=/workspace stage=build greeting=hi\n"),
        "{log}"
    );
    assert!(log.contains("to stderr\n"), "{log}");
    assert!(log.contains("built\n"), "{log}");
    assert!(log.contains("no newline at the end"), "{log}");
    let log = cdctl_logs(s, &id, "whoami");
    assert!(log.contains("uid=65534 gid=65534"), "{log}");
    // The result is reported after the attempt's container is removed.
    assert_eq!(run_containers(&setup.name, &id), Vec::<String>::new());
    Ok(())
}

const FAILING: &str = r#"
name: failing
stages:
  - name: fail
    image: IMAGE
    run: |
      echo about to fail
      exit 7
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_nonzero_exit_code_is_reported() -> anyhow::Result<()> {
    let setup = start("exit", &[]).await?;
    let s = &setup.s;
    let (id, run) = run_to_end(s, FAILING, "failing").await?;
    assert_eq!(
        run.state,
        RunState::Failed as i32,
        "{}",
        describe(Some(&run))
    );
    let fail = stage(&run, "fail");
    assert_eq!(fail.state, StageState::Failed as i32);
    assert!(fail.reason.contains("exit code 7"), "{}", fail.reason);
    let res = result(&run, "fail");
    assert_eq!(res.exit_code, 7);
    assert!(!res.oom_killed && !res.cancelled);
    assert!(cdctl_logs(s, &id, "fail").contains("about to fail"));
    assert_eq!(run_containers(&setup.name, &id), Vec::<String>::new());
    Ok(())
}

// `dd` reads into one 64 MiB buffer: the kernel fills it at once and the OOM killer strikes
// quickly (a slowly growing allocation can make the cgroup thrash for many seconds first).
const HOG: &str = r#"
name: hog
stages:
  - name: hog
    image: IMAGE
    resources: { memory: 8m }
    run: |
      echo allocating
      dd if=/dev/zero of=/dev/null bs=64M count=1
      echo "dd exited with $?"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn an_oom_kill_is_reported_as_such() -> anyhow::Result<()> {
    let setup = start("oom", &[]).await?;
    let s = &setup.s;
    let (id, run) = run_to_end(s, HOG, "hog").await?;
    assert_eq!(
        run.state,
        RunState::Failed as i32,
        "{}",
        describe(Some(&run))
    );
    let res = result(&run, "hog");
    assert!(res.oom_killed, "{res:?}");
    assert!(
        res.errors
            .iter()
            .any(|e| e == "killed by the OOM killer (memory limit 8 MiB)"),
        "{res:?}"
    );
    let hog = stage(&run, "hog");
    assert!(hog.reason.contains("OOM killer"), "{}", hog.reason);
    let log = cdctl_logs(s, &id, "hog");
    assert!(log.contains("allocating"), "{log}");
    assert!(log.contains("killed by the OOM killer"), "{log}");
    Ok(())
}

const SLEEPY: &str = r#"
name: sleepy
stages:
  - name: sleepy
    image: IMAGE
    run: |
      echo started
      sleep 300
"#;

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_container_within_the_grace_period_and_removes_it() -> anyhow::Result<()> {
    let grace = Duration::from_secs(2);
    let setup = start("cancel", &["--kill-grace", "2s"]).await?;
    let s = &setup.s;
    let mut c = s.client().await?;
    apply_pipeline(&mut c, &pipeline(SLEEPY), s.tmp.path()).await?;
    let id = start_run(&mut c, "sleepy", &[]).await?;
    let container = running_container(&setup.name, &id, None).await?;

    let cancelled_at = Instant::now();
    let out = s
        .cdctl()
        .args(["run", "cancel", &id, "--reason", "test"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = s.wait_final(&id, RUN_TIMEOUT).await?;
    assert_eq!(
        run.state,
        RunState::Cancelled as i32,
        "{}",
        describe(Some(&run))
    );
    let st = stage(&run, "sleepy");
    assert_eq!(st.state, StageState::Cancelled as i32);
    assert!(st.reason.contains("test"), "{}", st.reason);
    // `sh` as PID 1 ignores SIGTERM: the engine kills it when the grace period ends.
    eventually(
        "the container to stop",
        grace + Duration::from_secs(10),
        || async { (!docker::running(&container)).then_some(()) },
    )
    .await?;
    containers_gone(&setup.name, &id, Duration::from_secs(10)).await?;
    let took = cancelled_at.elapsed();
    assert!(
        took < grace + Duration::from_secs(8),
        "stopping and removing took {took:?}"
    );
    Ok(())
}

const SLOW: &str = r#"
name: slow
stages:
  - name: slow
    image: IMAGE
    timeout: 2s
    run: |
      echo going to sleep
      sleep 300
  - name: never
    needs: [slow]
    image: IMAGE
    run: echo never
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_fails_the_stage_and_removes_the_container() -> anyhow::Result<()> {
    let setup = start("timeout", &["--kill-grace", "1s"]).await?;
    let s = &setup.s;
    let (id, run) = run_to_end(s, SLOW, "slow").await?;
    assert_eq!(
        run.state,
        RunState::Failed as i32,
        "{}",
        describe(Some(&run))
    );
    let slow = stage(&run, "slow");
    assert_eq!(slow.state, StageState::Failed as i32);
    assert!(
        slow.reason.contains("timed out after 2s"),
        "{}",
        slow.reason
    );
    assert_eq!(stage(&run, "never").state, StageState::Skipped as i32);
    // The coordinator may time the stage out before the agent's result arrives.
    containers_gone(&setup.name, &id, Duration::from_secs(15)).await?;
    let log = cdctl_logs(s, &id, "slow");
    assert!(log.contains("going to sleep"), "{log}");
    Ok(())
}

const NETWORKS: &str = r#"
name: networks
stages:
  - name: isolated
    image: IMAGE
    network: none
    run: |
      ip -o -4 addr
      if ip -o -4 addr | grep -v ' lo ' | grep inet; then echo has-network; exit 1; fi
      echo only-loopback
  - name: bridged
    image: IMAGE
    run: |
      ip -o -4 addr
      ip -o -4 addr | grep -v ' lo ' | grep -q inet && echo has-network
"#;

#[tokio::test(flavor = "multi_thread")]
async fn network_none_has_only_loopback() -> anyhow::Result<()> {
    let setup = start("net", &[]).await?;
    let s = &setup.s;
    let (id, run) = run_to_end(s, NETWORKS, "networks").await?;
    let isolated = cdctl_logs(s, &id, "isolated");
    let bridged = cdctl_logs(s, &id, "bridged");
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}\nisolated:\n{isolated}\nbridged:\n{bridged}",
        describe(Some(&run))
    );
    assert!(isolated.contains("only-loopback"), "{isolated}");
    assert!(
        bridged.contains("has-network"),
        "the default network has an interface besides lo: {bridged}"
    );
    Ok(())
}

const ABSENT: &str = r#"
name: absent
stages:
  - name: absent
    image: conveyor-test/absent:nope
    image_pull: never
    run: echo should not run
"#;

const PULL_ALWAYS: &str = r#"
name: pull-always
stages:
  - name: pull
    image: IMAGE
    image_pull: always
    run: echo should not run
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_or_a_failed_pull_fails_the_stage_clearly() -> anyhow::Result<()> {
    let setup = start("absent", &[]).await?;
    let s = &setup.s;
    let mut c = s.client().await?;
    apply_pipeline(&mut c, ABSENT, s.tmp.path()).await?;
    let id = start_run(&mut c, "absent", &[]).await?;
    let run = s.wait_final(&id, RUN_TIMEOUT).await?;
    assert_eq!(
        run.state,
        RunState::Failed as i32,
        "{}",
        describe(Some(&run))
    );
    let reason = &stage(&run, "absent").reason;
    assert!(
        reason.contains("image conveyor-test/absent:nope is not present")
            && reason.contains("image_pull is never"),
        "{reason}"
    );
    let log = cdctl_logs(s, &id, "absent");
    assert!(!log.contains("should not run"), "{log}");

    // No registry is reachable: `always` must fail (not hang) and say so.
    apply_pipeline(&mut c, &pipeline(PULL_ALWAYS), s.tmp.path()).await?;
    let id = start_run(&mut c, "pull-always", &[]).await?;
    let run = s.wait_final(&id, RUN_TIMEOUT).await?;
    assert_eq!(
        run.state,
        RunState::Failed as i32,
        "{}",
        describe(Some(&run))
    );
    let reason = &stage(&run, "pull").reason;
    assert!(
        reason.contains(&format!("cannot pull image {}", docker::BUSYBOX_IMAGE)),
        "{reason}"
    );
    assert_eq!(run_containers(&setup.name, &id), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_reaps_the_container_of_its_previous_life() -> anyhow::Result<()> {
    let mut setup = start("reap", &["--heartbeat", "300ms"]).await?;
    let (s, name) = (&mut setup.s, setup.name.clone());
    let mut c = s.client().await?;
    apply_pipeline(&mut c, &pipeline(SLEEPY), s.tmp.path()).await?;
    let id = start_run(&mut c, "sleepy", &[]).await?;
    let orphan = running_container(&name, &id, None).await?;

    s.agents[0].proc.kill9();
    assert!(docker::running(&orphan), "the container outlives its agent");
    s.add_agent(&name, &["--heartbeat", "300ms"])?;
    let restarted = &s.agents[1].proc;
    eventually(
        "the restarted agent to remove its orphan and say so",
        Duration::from_secs(30),
        || async {
            (!docker::exists(&orphan)
                && restarted
                    .log_text()
                    .contains("removed containers left by a previous run"))
            .then_some(())
        },
    )
    .await?;

    // The coordinator gives the attempt to the restarted agent again: stop it there too.
    running_container(&name, &id, Some(&orphan)).await?;
    let out = s.cdctl().args(["run", "cancel", &id]).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.wait_final(&id, RUN_TIMEOUT).await?;
    containers_gone(&name, &id, Duration::from_secs(30)).await
}

const SOCKET: &str = r#"
name: socket
stages:
  - name: with-socket
    image: IMAGE
    image_pull: never
    docker: true
    run: |
      if [ -S /var/run/docker.sock ]; then echo socket-mounted; else echo no-socket; fi
  - name: without-socket
    image: IMAGE
    image_pull: never
    run: |
      if [ -S /var/run/docker.sock ]; then echo socket-mounted; else echo no-socket; fi
"#;

#[tokio::test(flavor = "multi_thread")]
async fn docker_true_mounts_the_engine_socket_and_only_then() -> anyhow::Result<()> {
    let setup = start("socket", &[]).await?;
    let s = &setup.s;
    let (id, run) = run_to_end(s, SOCKET, "socket").await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    let with = cdctl_logs(s, &id, "with-socket");
    let without = cdctl_logs(s, &id, "without-socket");
    assert!(with.contains("socket-mounted"), "{with}");
    assert!(without.contains("no-socket"), "{without}");
    Ok(())
}

const NOBODY: &str = r#"
name: nobody
stages:
  - name: write
    image: IMAGE
    image_pull: never
    user: "65534:65534"
    run: |
      echo written > out.txt && cat out.txt && id -u
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_numeric_user_can_write_its_workspace() -> anyhow::Result<()> {
    let setup = start("nobody", &[]).await?;
    let s = &setup.s;
    let (id, run) = run_to_end(s, NOBODY, "nobody").await?;
    let log = cdctl_logs(s, &id, "write");
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}\n{log}",
        describe(Some(&run))
    );
    assert!(log.contains("written") && log.contains("65534"), "{log}");
    Ok(())
}

const WATCHED: &str = r#"
name: watched
stages:
  - name: deploy
    environment: production
    run: echo deployed
  - name: monitor
    needs: [deploy]
    image: IMAGE
    image_pull: never
    monitor:
      duration: 1500ms
      interval: 200ms
      failure_threshold: 2
      timeout: 30s
      command: echo "probe in a container, busybox $(busybox | head -1 | cut -d' ' -f2)"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_monitor_with_an_image_runs_each_check_in_a_container_and_removes_them()
-> anyhow::Result<()> {
    let Setup { s, name, _sweep } = start("monitor", &[]).await?;
    let (id, run) = run_to_end(&s, WATCHED, "watched").await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    let log = cdctl_logs(&s, &id, "monitor");
    let checks = log.matches(": ok (exit code 0)").count();
    assert!(checks >= 2, "several checks, each passing: {log}");
    assert_eq!(
        log.matches("probe in a container, busybox v").count(),
        checks,
        "each check's output is in the log: {log}"
    );
    assert!(result(&run, "monitor").check_at_ms > 0);
    containers_gone(&name, &id, Duration::from_secs(30)).await?;
    Ok(())
}
