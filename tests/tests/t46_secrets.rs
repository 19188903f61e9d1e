//! Secrets over real processes: a 3-node cluster sharing one `--secret-key-file`, a secret set
//! with `cdctl secret set` from stdin, a stage that lists it and checks it sees the right
//! value (by its SHA-256, so the spec never holds the value) while printing it plainly, split
//! across two writes, and across the agent's 32 KiB piece/chunk boundary; a stage that does
//! not list it must not have it.
//! Then the value must be nowhere: not in stored logs (masked as `***`), not in any `cdctl`
//! output, not in the coordinators' or agent's own logs, and not in any byte of any file
//! under any coordinator's data dir (sled, Raft log, snapshots), while a control line the
//! stage printed is found there by the same walk. A coordinator without a key refuses
//! `secret set` and fails a stage that needs a secret, saying why.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use cd_common::certs::Role;
use cd_tests::cluster::Cluster;
use cd_tests::*;

/// A value nobody could guess or find by accident (time and pid).
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}{nanos:x}x{:x}", std::process::id())
}

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `cmd` with `stdin` fed to it; returns its output.
fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning cdctl")?;
    if let Some(mut input) = child.stdin.take() {
        // cdctl may refuse its arguments and exit before reading stdin.
        match input.write_all(stdin) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other?,
        }
    }
    Ok(child.wait_with_output()?)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a cdctl command that must succeed; returns stdout and stderr together.
fn ok(mut cmd: Command, args: &[&str]) -> Result<String> {
    let out = cmd.args(args).output()?;
    ensure!(
        out.status.success(),
        "cdctl {args:?} failed: {}",
        text(&out)
    );
    Ok(text(&out))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                files += 1;
                // A file may vanish between listing and reading (sled rewrites segments).
                if let Ok(bytes) = std::fs::read(&path)
                    && contains(&bytes, needle)
                {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    ensure!(files > 0, "no files under {}", dir.display());
    Ok(found)
}

fn pipeline(token_sha: &str, control: &str) -> String {
    format!(
        r#"
name: sec
stages:
  - name: uses
    secrets: [TOKEN]
    run: |
      test "$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)" = "{token_sha}" || {{ echo "TOKEN has the wrong value"; exit 3; }}
      head -c 32760 /dev/zero | tr '\0' x
      printf '%s :long\n' "$TOKEN"
      echo "plain: $TOKEN"
      head=${{TOKEN%????????}}
      printf 'split: %s' "$head"
      sleep 0.2
      printf '%s\n' "${{TOKEN#"$head"}}"
      echo "{control}"
  - name: without
    needs: [uses]
    run: |
      if [ -n "${{TOKEN+x}}" ]; then echo "TOKEN leaked into a stage that does not list it"; exit 4; fi
      echo no token here
  - name: missing
    needs: [without]
    secrets: [NEVER_SET]
    run: echo should not run
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_only_its_stage_and_is_stored_and_shown_nowhere() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let key_file = keys.path().join("secret.key");
    let key_hex: String = (0..32)
        .map(|_| format!("{:02x}", rand_byte()))
        .collect::<Vec<_>>()
        .join("");
    std::fs::write(&key_file, format!("{key_hex}\n"))?;
    let key_arg = key_file.display().to_string();
    let c = Cluster::start(3, &["a1"], &["--secret-key-file", &key_arg], &[]).await?;

    let value = unique("tok-");
    let control = unique("CONTROL-LINE-");
    // Set through cdctl from stdin (one trailing newline stripped), against every endpoint:
    // a follower sends cdctl on to the leader, which seals the value.
    let set = run_with_stdin(
        {
            let mut cmd = c.cdctl();
            cmd.args(["secret", "set", "TOKEN"]);
            cmd
        },
        format!("{value}\n").as_bytes(),
    )?;
    ensure!(set.status.success(), "secret set failed: {}", text(&set));
    let mut shown = vec![text(&set)];
    // Asked of a follower, the call goes to the leader (only the leader seals).
    let leader = c.leader(Duration::from_secs(10)).await?;
    let follower = c
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .context("a follower")?;
    let via_follower = run_with_stdin(
        {
            let mut cmd = cdctl(&follower.url, &c.op);
            cmd.args(["secret", "set", "OTHER"]);
            cmd
        },
        b"other-value",
    )?;
    ensure!(
        via_follower.status.success(),
        "secret set via a follower: {}",
        text(&via_follower)
    );
    shown.push(text(&via_follower));

    let mut client = c.leader_control().await?;
    apply_pipeline(
        &mut client,
        &pipeline(&sha256_hex(&value), &control),
        c.tmp.path(),
    )
    .await?;
    let run_id = start_run(&mut client, "sec", &[]).await?;
    let run = c.wait_final(&run_id, Duration::from_secs(60)).await?;
    let desc = describe(Some(&run));
    ensure!(
        stage_is(&run, "uses", StageState::Succeeded),
        "the stage with the secret must see its exact value: {desc}"
    );
    ensure!(
        stage_is(&run, "without", StageState::Succeeded),
        "a stage not listing the secret must not have it: {desc}"
    );
    let missing = stage(&run, "missing");
    ensure!(
        missing.state == StageState::Failed as i32
            && missing.reason.contains("secret NEVER_SET is not set"),
        "a stage needing an unset secret fails naming it: {desc}"
    );

    // Stored logs: masked, through cdctl and the API.
    let logs = ok(c.cdctl(), &["logs", &run_id, "uses"])?;
    ensure!(logs.contains("plain: ***"), "{logs}");
    ensure!(!logs.contains(&value), "the value is in the stored log");
    ensure!(
        logs.contains("split: ***"),
        "value split across writes: {logs}"
    );
    ensure!(logs.contains(&control), "{logs}");
    // The first output line is 32760 `x` and the value: it straddles the agent's first 32 KiB
    // piece and chunk, so only the agent, holding back a possible start of a value, can mask
    // it (the leader masks chunk by chunk).
    ensure!(
        logs.contains("xxx*** :long"),
        "value across a chunk boundary"
    );
    shown.push(logs);
    let api_logs = logs_of(&mut client, &run_id, "uses").await?;
    ensure!(!contains(&api_logs, value.as_bytes()));
    ensure!(contains(&api_logs, b"***"));

    // Listing and auditing: names and the operator, never the value.
    let list = ok(c.cdctl(), &["secret", "list"])?;
    ensure!(
        list.contains("TOKEN") && list.contains("spiffe://conveyor.local/operator/operator"),
        "{list}"
    );
    let list_json = ok(c.cdctl(), &["secret", "list", "-o", "json"])?;
    let parsed: serde_json::Value = serde_json::from_str(&list_json)?;
    ensure!(
        parsed[0]["name"] == "OTHER" && parsed[1]["name"] == "TOKEN",
        "{list_json}"
    );
    let audit = ok(c.cdctl(), &["audit"])?;
    ensure!(
        audit.lines().any(|l| l.contains("secret-set")
            && l.contains("TOKEN")
            && l.contains("operator/operator")),
        "{audit}"
    );
    let audit_json = ok(c.cdctl(), &["audit", "-o", "json"])?;
    let viewer = c.certs.tls(Role::Viewer, "vera");
    let viewer_list = ok(cdctl(&c.endpoints(), &viewer), &["secret", "list"])?;
    ensure!(
        viewer_list.contains("TOKEN"),
        "viewers may list names: {viewer_list}"
    );
    shown.extend([list, list_json, audit, audit_json, viewer_list]);
    shown.push(ok(c.cdctl(), &["run", "show", &run_id])?);
    shown.push(ok(c.cdctl(), &["run", "show", &run_id, "-o", "json"])?);

    // A viewer may not set one.
    let refused = run_with_stdin(
        {
            let mut cmd = cdctl(&c.endpoints(), &viewer);
            cmd.args(["secret", "set", "TOKEN"]);
            cmd
        },
        b"viewer-value",
    )?;
    ensure!(
        !refused.status.success() && text(&refused).contains("permission denied"),
        "{}",
        text(&refused)
    );
    // Bad input is refused by name before anything is sent.
    let empty = run_with_stdin(
        {
            let mut cmd = c.cdctl();
            cmd.args(["secret", "set", "TOKEN"]);
            cmd
        },
        b"\n",
    )?;
    ensure!(
        empty.status.code() == Some(2) && text(&empty).contains("must not be empty"),
        "{}",
        text(&empty)
    );
    let lower = run_with_stdin(
        {
            let mut cmd = c.cdctl();
            cmd.args(["secret", "set", "token"]);
            cmd
        },
        b"x",
    )?;
    ensure!(
        !lower.status.success() && text(&lower).contains("not a valid secret name"),
        "{}",
        text(&lower)
    );

    for out in &shown {
        ensure!(!out.contains(&value), "the value was shown: {out}");
    }
    // Nor in any process's own log (tracing of assignments, requests, errors).
    for n in &c.nodes {
        let log = c.log(n.id);
        ensure!(!log.contains(&value), "node {} logged the value", n.id);
    }
    for a in &c.agents {
        ensure!(
            !a.proc.log_text().contains(&value),
            "agent {} logged the value",
            a.name
        );
    }

    // On disk: every node stores the control line (replicated and applied) and never the
    // value. Polled: sled writes the applied logs within its flush interval.
    for n in &c.nodes {
        let dir = n.data_dir.clone();
        let ctl = control.clone();
        eventually(
            &format!("node {} to have the control line on disk", n.id),
            Duration::from_secs(30),
            || {
                let dir = dir.clone();
                let ctl = ctl.clone();
                async move {
                    files_containing(&dir, ctl.as_bytes())
                        .ok()
                        .filter(|f| !f.is_empty())
                }
            },
        )
        .await?;
        let leaks = files_containing(&n.data_dir, value.as_bytes())?;
        ensure!(leaks.is_empty(), "node {}: the value is in {leaks:?}", n.id);
    }
    // After a clean shutdown (which writes a state snapshot) too.
    let mut c = c;
    let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    for id in ids {
        if let Some(p) = c
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .and_then(|n| n.proc.as_mut())
        {
            p.terminate()?;
        }
    }
    for n in &c.nodes {
        let leaks = files_containing(&n.data_dir, value.as_bytes())?;
        ensure!(
            leaks.is_empty(),
            "node {} after shutdown: the value is in {leaks:?}",
            n.id
        );
        ensure!(
            !files_containing(&n.data_dir, b"TOKEN")?.is_empty(),
            "node {}: the secret's record (its name) is on disk",
            n.id
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_secret_set_is_refused_and_a_stage_needing_one_fails_saying_why() -> Result<()>
{
    let s = Single::start(&["a1"], &[], &[]).await?;
    let refused = run_with_stdin(
        {
            let mut cmd = s.cdctl();
            cmd.args(["secret", "set", "TOKEN"]);
            cmd
        },
        b"some-value\n",
    )?;
    let out = text(&refused);
    ensure!(
        !refused.status.success()
            && out.contains("failed precondition")
            && out.contains(
                "secrets are disabled on this coordinator: start it with --secret-key-file"
            ),
        "{out}"
    );
    let mut c = s.client().await?;
    apply_pipeline(
        &mut c,
        "name: needs\nstages:\n  - name: s\n    secrets: [TOKEN]\n    run: echo hi\n",
        s.tmp.path(),
    )
    .await?;
    let run_id = start_run(&mut c, "needs", &[]).await?;
    let run = s.wait_final(&run_id, Duration::from_secs(60)).await?;
    let st = stage(&run, "s");
    if st.state != StageState::Failed as i32
        || !st
            .reason
            .contains("secrets are disabled on this coordinator: start it with --secret-key-file")
    {
        bail!("{}", describe(Some(&run)));
    }
    // A bad key file stops the coordinator at start with an error naming the file.
    let bad = s.path("bad.key");
    std::fs::write(&bad, "not-hex\n")?;
    let out = Command::new(bin("cd-coordinator"))
        .args(["serve", "--data-dir"])
        .arg(s.path("other-node"))
        .args(["--listen", "127.0.0.1:0", "--secret-key-file"])
        .arg(&bad)
        .env("CD_CA", s.certs.dir.join("ca.pem"))
        .env("CD_NODE_CERT", s.certs.dir.join("node-1.pem"))
        .env("CD_NODE_KEY", s.certs.dir.join("node-1-key.pem"))
        .output()?;
    let err = text(&out);
    ensure!(
        !out.status.success() && err.contains("bad.key") && err.contains("64 hex characters"),
        "{err}"
    );
    Ok(())
}

async fn logs_of(
    c: &mut cd_proto::v1::control_service_client::ControlServiceClient<tonic::transport::Channel>,
    run_id: &str,
    stage: &str,
) -> Result<Vec<u8>> {
    cd_tests::logs(c, run_id, stage).await
}

/// One random byte from the kernel (for the test's key).
fn rand_byte() -> u8 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b[0]
}

/// An agent that does not mask: a raw client on the agent API takes the assignment (which must
/// carry the value, the only place it travels), then ships it in a raw and an LZ4 log chunk,
/// split across two chunks of one request, and in its result's error text. The leader masks
/// all of them before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_masks_what_an_agent_that_does_not_mask_sends() -> Result<()> {
    use cd_proto::v1 as pb;
    use cd_proto::v1::agent_service_client::AgentServiceClient;

    let keys = tempfile::tempdir()?;
    let key_file = keys.path().join("secret.key");
    let key_hex: String = (0..32).map(|_| format!("{:02x}", rand_byte())).collect();
    std::fs::write(&key_file, &key_hex)?;
    let key_arg = key_file.display().to_string();
    let s = Single::start(
        &[],
        &["--secret-key-file", &key_arg, "--lease", "300s"],
        &[],
    )
    .await?;
    let mut c = s.client().await?;
    let value = unique("raw-");
    c.set_secret(pb::SetSecretRequest {
        name: "TOKEN".into(),
        value: value.clone().into_bytes(),
    })
    .await?;
    apply_pipeline(
        &mut c,
        "name: rawp\nstages:\n  - name: s\n    labels: [raw]\n    secrets: [TOKEN]\n    run: echo hi\n",
        s.tmp.path(),
    )
    .await?;

    let tls = s.certs.tls(Role::Agent, "raw");
    let ch = tonic::transport::Endpoint::from_shared(s.coord.endpoint.clone())?
        .tls_config(cd_common::tls::client_tls(&tls, "localhost")?)?
        .connect()
        .await?;
    let mut agent = AgentServiceClient::new(ch);
    let mut stream = agent
        .attach(pb::ConnectRequest {
            agent: "raw".into(),
            labels: vec!["raw".into()],
            slots: 1,
            version: "test".into(),
        })
        .await?
        .into_inner();
    let run_id = start_run(&mut c, "rawp", &[]).await?;
    let assignment = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await??
        .and_then(|m| match m.kind {
            Some(pb::agent_message::Kind::Assignment(a)) => Some(a),
            _ => None,
        })
        .context("no assignment")?;
    ensure!(
        assignment.secrets.get("TOKEN") == Some(&value),
        "the assignment carries the stage's secret"
    );
    ensure!(
        !format!("{assignment:?}").contains(&value),
        "Debug of an assignment shows names only"
    );
    let attempt = assignment.attempt.context("attempt")?;
    agent
        .start_attempt(pb::StartAttemptRequest {
            agent: "raw".into(),
            attempt: Some(attempt.clone()),
        })
        .await?;
    let long = format!("lz4 {value} again\n").repeat(50);
    let (lz4, encoding) = cd_common::logcodec::encode(long.as_bytes());
    ensure!(encoding == cd_common::logcodec::LZ4);
    agent
        .push_logs(pb::PushLogsRequest {
            agent: "raw".into(),
            chunks: vec![
                pb::LogChunk {
                    attempt: Some(attempt.clone()),
                    seq: 0,
                    data: format!("raw {value}\n").into_bytes(),
                    encoding: cd_common::logcodec::RAW,
                },
                pb::LogChunk {
                    attempt: Some(attempt.clone()),
                    seq: 1,
                    data: lz4,
                    encoding,
                },
                // The value split across two chunks of this request.
                pb::LogChunk {
                    attempt: Some(attempt.clone()),
                    seq: 2,
                    data: format!("split {}", &value[..5]).into_bytes(),
                    encoding: cd_common::logcodec::RAW,
                },
                pb::LogChunk {
                    attempt: Some(attempt.clone()),
                    seq: 3,
                    data: format!("{} end\n", &value[5..]).into_bytes(),
                    encoding: cd_common::logcodec::RAW,
                },
            ],
        })
        .await?;
    agent
        .report_result(pb::ReportResultRequest {
            agent: "raw".into(),
            attempt: Some(attempt.clone()),
            result: Some(pb::StageResult {
                exit_code: 1,
                errors: vec![format!("deploy refused token {value}")],
                ..Default::default()
            }),
        })
        .await?;
    let run = s.wait_final(&run_id, Duration::from_secs(30)).await?;
    let stored = String::from_utf8_lossy(&cd_tests::logs(&mut c, &run_id, "s").await?).into_owned();
    ensure!(stored.starts_with("raw ***\nlz4 *** again\n"), "{stored}");
    ensure!(stored.ends_with("again\nsplit ****** end\n"), "{stored}");
    ensure!(!stored.contains(&value), "{stored}");
    let shown = format!("{run:?}");
    ensure!(
        shown.contains("deploy refused token ***") && !shown.contains(&value),
        "{shown}"
    );
    let leaks = files_containing(&s.coord.data_dir, value.as_bytes())?;
    ensure!(leaks.is_empty(), "the value is in {leaks:?}");

    // Delete: gone from the list, audited, and a second delete names what is missing.
    ok(s.cdctl(), &["secret", "delete", "TOKEN"])?;
    let list = ok(s.cdctl(), &["secret", "list", "-o", "json"])?;
    ensure!(
        serde_json::from_str::<serde_json::Value>(&list)? == serde_json::json!([]),
        "{list}"
    );
    let audit = ok(s.cdctl(), &["audit"])?;
    ensure!(
        audit
            .lines()
            .any(|l| l.contains("secret-delete") && l.contains("TOKEN")),
        "{audit}"
    );
    let again = s.cdctl().args(["secret", "delete", "TOKEN"]).output()?;
    ensure!(
        !again.status.success() && text(&again).contains("secret TOKEN does not exist"),
        "{}",
        text(&again)
    );
    Ok(())
}

/// The Docker executor: a container stage gets the secret in its environment (checked by its
/// SHA-256 inside the container), its output is masked, and a container stage that does not
/// list the secret does not have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_stage_gets_its_secret_and_its_output_is_masked() -> Result<()> {
    use cd_tests::docker::{self, Sweep};
    docker::busybox_image();
    let name = docker::agent_name("secret");
    let _sweep = Sweep::agent(&name);
    let keys = tempfile::tempdir()?;
    let key_file = keys.path().join("secret.key");
    let key_hex: String = (0..32).map(|_| format!("{:02x}", rand_byte())).collect();
    std::fs::write(&key_file, &key_hex)?;
    let key_arg = key_file.display().to_string();
    let s = Single::start(&[&name], &["--secret-key-file", &key_arg], &[]).await?;
    let value = unique("dk-");
    let set = run_with_stdin(
        {
            let mut cmd = s.cdctl();
            cmd.args(["secret", "set", "TOKEN"]);
            cmd
        },
        value.as_bytes(),
    )?;
    ensure!(set.status.success(), "{}", text(&set));
    let yaml = format!(
        r#"
name: dk
stages:
  - name: inside
    image: {image}
    image_pull: never
    secrets: [TOKEN]
    run: |
      test "$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)" = "{sha}" || {{ echo "wrong value"; exit 3; }}
      echo "in container: $TOKEN"
  - name: other
    image: {image}
    image_pull: never
    needs: [inside]
    run: |
      if [ -n "${{TOKEN+x}}" ]; then echo "TOKEN leaked"; exit 4; fi
      echo clean
"#,
        image = docker::BUSYBOX_IMAGE,
        sha = sha256_hex(&value)
    );
    let mut c = s.client().await?;
    apply_pipeline(&mut c, &yaml, s.tmp.path()).await?;
    let run_id = start_run(&mut c, "dk", &[]).await?;
    let run = s.wait_final(&run_id, Duration::from_secs(90)).await?;
    ensure!(
        run.state == RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    let logs = ok(s.cdctl(), &["logs", &run_id, "inside"])?;
    ensure!(
        logs.contains("in container: ***") && !logs.contains(&value),
        "{logs}"
    );
    Ok(())
}
