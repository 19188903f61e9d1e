//! Triggers over real processes and a real git repository: a commit starts exactly one run at
//! that revision even when the leader dies between the poll and the run start (or right
//! after it); a webhook with a good signature starts a run and a bad one is refused; a
//! schedule fires.

use std::time::Duration;

use cd_proto::v1 as pb;
use cd_tests::cluster::Cluster;
use cd_tests::gitrepo::GitRepo;
use cd_tests::*;

fn git_pipeline(repo: &GitRepo) -> String {
    format!(
        r#"
name: app
trigger:
  git: {{ repository: "{}", branch: main, interval: 300ms }}
stages:
  - name: build
    run: echo "building $CD_REVISION from $(cat file.txt)"
"#,
        repo.path()
    )
}

/// Waits for the run of `pipeline` at `sha` and for it to succeed.
async fn run_at(c: &Cluster, pipeline: &str, sha: &str) -> anyhow::Result<pb::Run> {
    let id = eventually(
        &format!("a run of {pipeline} at {sha}"),
        Duration::from_secs(30),
        || async {
            let mut ctl = c.leader_control().await.ok()?;
            list_runs(&mut ctl, pipeline)
                .await
                .ok()?
                .into_iter()
                .find(|r| r.revision == sha)
                .map(|r| r.id)
        },
    )
    .await?;
    let run = c.wait_final(&id, Duration::from_secs(30)).await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    Ok(run)
}

/// The leader that polls the repository aborts at `point`; a survivor takes over. Both
/// commits then have exactly one run each, pinned to the commit, with its commit time.
async fn leader_dies_at(point: &str) -> anyhow::Result<()> {
    let mut c = Cluster::start(3, &["agent-1"], &[], &["--heartbeat", "300ms"]).await?;
    let repo = GitRepo::init(&c.path("repo"))?;
    let first = repo.commit("one")?;

    // Only the node that will poll first carries the failpoint.
    let doomed = c.leader(Duration::from_secs(30)).await?;
    let spec = format!("{point}=return");
    c.spawn_with_env(doomed, &[("FAILPOINTS", spec.as_str())])?;
    // Applied through the doomed node while it leads (retried if leadership moved).
    let yaml = git_pipeline(&repo);
    eventually(
        &format!("the pipeline applied on node {doomed} as leader"),
        Duration::from_secs(30),
        || async {
            c.make_leader(doomed, Duration::from_secs(10)).await.ok()?;
            let mut ctl = c.control(doomed).await.ok()?;
            apply_pipeline(&mut ctl, &yaml, c.tmp.path()).await.ok()
        },
    )
    .await?;

    eventually(
        &format!("node {doomed} to die at {point}"),
        Duration::from_secs(30),
        || {
            let died = c.exited(doomed);
            async move { died.then_some(()) }
        },
    )
    .await?;
    assert!(
        c.log(doomed).contains(&format!("failpoint {point}")),
        "node {doomed} died elsewhere:\n{}",
        c.log(doomed)
    );
    c.kill9(doomed);

    let run = run_at(&c, "app", &first).await?;
    assert_eq!(run.trigger, "git");
    assert_eq!(run.commit_at_ms, repo.commit_ms(&first)?);
    // The agent checked the pinned commit out into the workspace.
    let log = eventually("the build log", Duration::from_secs(30), || async {
        let mut ctl = c.leader_control().await.ok()?;
        logs(&mut ctl, &run.id, "build").await.ok()
    })
    .await?;
    let log = String::from_utf8(log)?;
    assert!(
        log.ends_with(&format!(
            "checked out {} at {first}\nbuilding {first} from one\n",
            repo.path()
        )),
        "{log}"
    );

    // The survivor keeps polling: the next commit gets its run, and by then it has seen the
    // first commit again (one poller, in order) without starting another run for it.
    let second = repo.commit("two")?;
    run_at(&c, "app", &second).await?;
    let runs = eventually("the runs of app", Duration::from_secs(30), || async {
        let mut ctl = c.leader_control().await.ok()?;
        list_runs(&mut ctl, "app").await.ok()
    })
    .await?;
    let mut revisions: Vec<&str> = runs.iter().map(|r| r.revision.as_str()).collect();
    revisions.sort();
    let mut expected = vec![first.as_str(), second.as_str()];
    expected.sort();
    assert_eq!(revisions, expected, "one run per commit, no more");

    // Three commits that land at once (a fast-forward of main) get three runs, in order.
    repo.git(&["checkout", "--quiet", "-b", "feature"])?;
    let batch = [
        repo.commit("three")?,
        repo.commit("four")?,
        repo.commit("five")?,
    ];
    repo.git(&["checkout", "--quiet", "main"])?;
    repo.git(&["merge", "--quiet", "--ff-only", "feature"])?;
    for sha in &batch {
        run_at(&c, "app", sha).await?;
    }
    let runs = eventually("the runs of app", Duration::from_secs(30), || async {
        let mut ctl = c.leader_control().await.ok()?;
        list_runs(&mut ctl, "app").await.ok()
    })
    .await?;
    assert_eq!(runs.len(), 5, "one run per commit: {runs:?}");
    let mut by_start: Vec<&pb::Run> = runs
        .iter()
        .filter(|r| batch.contains(&r.revision))
        .collect();
    // Run ids number a pipeline's runs in start order (`app-3`, `app-4`, ...).
    by_start.sort_by_key(|r| {
        r.id.rsplit('-')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    });
    let order: Vec<&str> = by_start.iter().map(|r| r.revision.as_str()).collect();
    assert_eq!(
        order,
        batch.iter().map(String::as_str).collect::<Vec<_>>(),
        "oldest first"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_starts_one_run_when_the_leader_dies_between_poll_and_run_start()
-> anyhow::Result<()> {
    leader_dies_at("trigger-after-poll").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_starts_one_run_when_the_leader_dies_right_after_starting_it() -> anyhow::Result<()>
{
    leader_dies_at("trigger-after-propose").await
}

/// POSTs `body` to the coordinator's webhook listener with `curl`; returns (status, body).
fn post_hook(
    s: &Single,
    port: u16,
    pipeline: &str,
    headers: &[(&str, String)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(&s.op.ca)
        .arg(format!("https://localhost:{port}/hooks/{pipeline}"))
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse()?, body.to_string()))
}

fn github_signature(secret: &str, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn pipeline_info(s: &Single, name: &str) -> anyhow::Result<pb::Pipeline> {
    Ok(s.client()
        .await?
        .get_pipeline(pb::GetPipelineRequest {
            name: name.into(),
            version: 0,
        })
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_webhook_starts_a_run_and_a_bad_signature_is_refused() -> anyhow::Result<()> {
    let port = cd_tests::cluster::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let s = Single::start(&["agent-1"], &["--webhook-listen", &listen], &[]).await?;
    let secret_file = s.path("hook.secret");
    std::fs::write(&secret_file, "s3cret\n")?;
    let yaml = format!(
        r#"
name: hooked
trigger:
  webhook: {{ secret_file: "{}", branch: main }}
stages:
  - name: build
    run: echo "at $CD_REVISION"
"#,
        secret_file.display()
    );
    apply_pipeline(&mut s.client().await?, &yaml, s.tmp.path()).await?;
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let push = format!(
        r#"{{"ref":"refs/heads/main","after":"{sha}","head_commit":{{"id":"{sha}","timestamp":"2026-11-28T10:00:00Z"}}}}"#
    );

    // Forged: signed with another secret, or not signed at all.
    let forged = github_signature("guess", &push);
    let (code, body) = post_hook(
        &s,
        port,
        "hooked",
        &[("X-Hub-Signature-256", forged)],
        &push,
    )?;
    assert_eq!(code, 401, "{body}");
    let (code, _) = post_hook(&s, port, "hooked", &[], &push)?;
    assert_eq!(code, 401);
    let (code, _) = post_hook(
        &s,
        port,
        "hooked",
        &[("X-Gitlab-Token", "s3cre".into())],
        &push,
    )?;
    assert_eq!(code, 401);
    assert_eq!(pipeline_info(&s, "hooked").await?.webhook_refused, 3);
    assert!(
        list_runs(&mut s.client().await?, "hooked")
            .await?
            .is_empty()
    );

    // Signed: one run at the pushed commit; a redelivery starts nothing new.
    let good = github_signature("s3cret", &push);
    let headers = [
        ("X-Hub-Signature-256", good),
        ("X-GitHub-Event", "push".to_string()),
    ];
    let (code, body) = post_hook(&s, port, "hooked", &headers, &push)?;
    assert_eq!(code, 201, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body)?;
    let run_id = reply["run"].as_str().unwrap_or_default().to_string();
    let run = s.wait_final(&run_id, Duration::from_secs(30)).await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    assert_eq!(
        (run.revision.as_str(), run.trigger.as_str()),
        (sha, "webhook")
    );
    assert_eq!(run.commit_at_ms, 1_795_860_000_000);
    let (code, body) = post_hook(&s, port, "hooked", &headers, &push)?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"duplicate\":true"), "{body}");

    // GitLab style: the plain token; a push to another branch is ignored.
    let gitlab = r#"{"ref":"refs/heads/main","before":"0","after":"aaaa","checkout_sha":"bbbb","commits":[]}"#;
    let token = [("X-Gitlab-Token", "s3cret".to_string())];
    let (code, body) = post_hook(&s, port, "hooked", &token, gitlab)?;
    assert_eq!(code, 201, "{body}");
    let other = r#"{"ref":"refs/heads/feature","after":"cccc"}"#;
    let (code, body) = post_hook(&s, port, "hooked", &token, other)?;
    assert_eq!(code, 202, "{body}");

    let runs = list_runs(&mut s.client().await?, "hooked").await?;
    let mut revisions: Vec<&str> = runs.iter().map(|r| r.revision.as_str()).collect();
    revisions.sort();
    assert_eq!(revisions, vec![sha, "bbbb"]);
    assert_eq!(pipeline_info(&s, "hooked").await?.webhook_refused, 3);
    let out = s.cdctl().args(["pipeline", "status", "hooked"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("webhook refused (this node): 3"), "{text}");
    assert!(text.contains("last commit: bbbb (run hooked-2)"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_fires_once_per_fire_time() -> anyhow::Result<()> {
    let s = Single::start(&["agent-1"], &[], &[]).await?;
    let yaml = r#"
name: nightly
trigger:
  schedule: { cron: "* * * * * *" }   # every second (6 fields: seconds first)
stages:
  - name: build
    run: echo tick
"#;
    let mut c = s.client().await?;
    let applied = apply_pipeline(&mut c, yaml, s.tmp.path()).await?;
    let runs = eventually("two scheduled runs", Duration::from_secs(20), || {
        let mut c = c.clone();
        async move {
            let runs = list_runs(&mut c, "nightly").await.ok()?;
            (runs.len() >= 2).then_some(runs)
        }
    })
    .await?;
    let info = pipeline_info(&s, "nightly").await?;
    assert_eq!(info.triggers, vec!["schedule * * * * * *".to_string()]);
    assert!(info.last_fire_ms > applied.created_ms, "{info:?}");
    assert_eq!(info.last_fire_ms % 1000, 0, "fires on whole seconds");
    for r in &runs {
        assert_eq!(r.trigger, "schedule");
    }
    // One run per fire time: never more runs than seconds elapsed since the pipeline was
    // applied (plus the one in flight).
    let later = list_runs(&mut c, "nightly").await?;
    let elapsed_s = (cd_common::time::now_ms() - applied.created_ms) / 1000;
    assert!(
        later.len() as i64 <= elapsed_s + 1,
        "{} runs in {elapsed_s}s",
        later.len()
    );
    let first = s.wait_final(&runs[0].id, Duration::from_secs(30)).await?;
    assert_eq!(first.state, RunState::Succeeded as i32);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_checks_out_its_pinned_revision_or_fails_with_the_reason() -> anyhow::Result<()> {
    let s = Single::start(&["agent-1"], &[], &[]).await?;
    let repo = GitRepo::init(&s.path("repo"))?;
    let old = repo.commit("old")?;
    repo.commit("new")?;
    let yaml = format!(
        "name: pinned\nrepository: \"{}\"\nstages:\n  - name: build\n    run: cat file.txt\n",
        repo.path()
    );
    apply_pipeline(&mut s.client().await?, &yaml, s.tmp.path()).await?;

    // `cdctl run start --revision` pins an older commit: the workspace holds that one.
    let out = s
        .cdctl()
        .args(["run", "start", "pinned", "--revision", &old])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout)?.trim().to_string();
    let run = s.wait_final(&id, Duration::from_secs(30)).await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    let log = String::from_utf8(logs(&mut s.client().await?, &id, "build").await?)?;
    assert!(log.ends_with(&format!("at {old}\nold\n")), "{log}");

    // A revision the repository does not have fails the stage, saying why.
    let missing = "0123456789012345678901234567890123456789";
    let out = s
        .cdctl()
        .args(["run", "start", "pinned", "--revision", missing])
        .output()?;
    let id = String::from_utf8(out.stdout)?.trim().to_string();
    let run = s.wait_final(&id, Duration::from_secs(30)).await?;
    assert_eq!(run.state, RunState::Failed as i32);
    let log = String::from_utf8(logs(&mut s.client().await?, &id, "build").await?)?;
    assert!(
        log.contains(&format!(
            "checkout of {missing} from {} failed",
            repo.path()
        )),
        "{log}"
    );
    Ok(())
}
