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
    run: echo "building $CD_REVISION"
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
    c.make_leader(doomed, Duration::from_secs(30)).await?;
    let mut ctl = c.control(doomed).await?;
    apply_pipeline(&mut ctl, &git_pipeline(&repo), c.tmp.path()).await?;

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
    let mut ctl = c.leader_control().await?;
    let log = String::from_utf8(logs(&mut ctl, &run.id, "build").await?)?;
    assert_eq!(log, format!("building {first}\n"));

    // The survivor keeps polling: the next commit gets its run, and by then it has seen the
    // first commit again (one poller, in order) without starting another run for it.
    let second = repo.commit("two")?;
    run_at(&c, "app", &second).await?;
    let runs = list_runs(&mut ctl, "app").await?;
    let mut revisions: Vec<&str> = runs.iter().map(|r| r.revision.as_str()).collect();
    revisions.sort();
    let mut expected = vec![first.as_str(), second.as_str()];
    expected.sort();
    assert_eq!(revisions, expected, "one run per commit, no more");
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
