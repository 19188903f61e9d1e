//! Leader-only triggers: polls each pipeline's `trigger.git` branch and fires its
//! `trigger.schedule`, proposing `TriggerRun` commands. Apply deduplicates them, so a leader
//! change between a poll and its proposal (or after it) never starts a second run for the
//! same commit or fire time; the webhook listener (`webhook`) proposes the same command.

pub mod git;
pub mod webhook;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use cd_common::spec::{GitTrigger, ScheduleTrigger};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::raft::{ProposeError, RaftHandle};
use crate::state::command::TriggerRun;
use crate::state::{Kind, Outcome};

#[derive(Debug, Clone)]
pub struct TriggerConfig {
    /// Where the bare cache repositories of git triggers live.
    pub cache_dir: PathBuf,
    /// How often due polls and schedules are checked.
    pub tick: Duration,
}

/// What the loop needs to know about one pipeline, read from applied state.
struct Due {
    pipeline: String,
    git: Option<GitTrigger>,
    schedule: Option<ScheduleTrigger>,
    /// The schedule fires only after this (its last fire, else when the version was applied).
    schedule_after_ms: i64,
}

pub async fn run(node: RaftHandle, cfg: TriggerConfig, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(cfg.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next_poll: BTreeMap<String, i64> = BTreeMap::new();
    let mut inflight: BTreeSet<(String, &'static str)> = BTreeSet::new();
    let mut tasks: JoinSet<(String, &'static str)> = JoinSet::new();
    let mut leading = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            Some(done) = tasks.join_next() => {
                if let Ok(key) = done {
                    inflight.remove(&key);
                }
                continue;
            }
        }
        if !node.is_leader() {
            if leading {
                info!("no longer leader: triggers stop");
            }
            leading = false;
            next_poll.clear();
            continue;
        }
        if !leading {
            info!("polling triggers as leader");
            leading = true;
        }
        let now = cd_common::time::now_ms();
        for due in node.read(due_triggers) {
            if let Some(g) = due.git.clone() {
                let at = next_poll.entry(due.pipeline.clone()).or_insert(now);
                let key = (due.pipeline.clone(), "git");
                if *at <= now && !inflight.contains(&key) {
                    *at = now + g.interval_ms as i64;
                    inflight.insert(key.clone());
                    let cache = cfg.cache_dir.join(cache_name(&due.pipeline));
                    let node = node.clone();
                    tasks.spawn(async move {
                        poll_git(&node, &key.0, &g, &cache).await;
                        key
                    });
                }
            }
            if let Some(s) = due.schedule {
                let key = (due.pipeline.clone(), "schedule");
                let Ok(cron) = cd_common::spec::parse_cron(&s.cron) else {
                    continue;
                };
                if inflight.contains(&key) {
                    continue;
                }
                if let Some(fire_ms) =
                    cd_common::spec::next_fire_ms(&cron, due.schedule_after_ms, now)
                {
                    inflight.insert(key.clone());
                    let node = node.clone();
                    let revision = due.git.map(|g| g.branch).unwrap_or_default();
                    tasks.spawn(async move {
                        let t = TriggerRun {
                            pipeline: key.0.clone(),
                            source: "schedule".into(),
                            revision,
                            commit_at_ms: 0,
                            fire_ms,
                        };
                        propose(&node, t).await;
                        key
                    });
                }
            }
        }
    }
}

fn due_triggers(st: &crate::state::State) -> Vec<Due> {
    st.pipelines
        .values()
        .filter_map(|p| {
            let v = p.latest()?;
            let t = &v.spec.trigger;
            if t.git.is_none() && t.schedule.is_none() {
                return None;
            }
            let last_fire = st.triggers.get(&p.name).map_or(0, |s| s.last_fire_ms);
            Some(Due {
                pipeline: p.name.clone(),
                git: t.git.clone(),
                schedule: t.schedule.clone(),
                schedule_after_ms: if last_fire > 0 {
                    last_fire
                } else {
                    v.created_ms
                },
            })
        })
        .collect()
}

/// A file name for the pipeline's cache repository (pipeline names are already safe).
fn cache_name(pipeline: &str) -> String {
    format!("{pipeline}.git")
}

/// Commits one poll may start runs for; older new ones are skipped (with a warning).
const MAX_NEW_COMMITS: usize = 20;

async fn poll_git(node: &RaftHandle, pipeline: &str, g: &GitTrigger, cache: &std::path::Path) {
    let recent = match git::recent(cache, &g.repository, &g.branch, MAX_NEW_COMMITS).await {
        Ok(h) => h,
        Err(e) => {
            warn!(pipeline, repository = %g.repository, branch = %g.branch, error = %e, "git poll failed");
            return;
        }
    };
    // Every commit after the newest one already built gets its own run, oldest first; the
    // first poll of a pipeline builds only the head (not the branch's whole history).
    let (mut new, built_before) = node.read(|st| {
        let seen = st.triggers.get(pipeline);
        let new: Vec<git::Head> = recent
            .iter()
            .take_while(|h| !seen.is_some_and(|t| t.has_commit(&h.sha)))
            .cloned()
            .collect();
        (new, seen.is_some_and(|t| !t.commits.is_empty()))
    });
    if new.is_empty() {
        return;
    }
    if !built_before {
        new.truncate(1);
    } else if new.len() == recent.len() && new.len() == MAX_NEW_COMMITS {
        warn!(
            pipeline,
            "more than {MAX_NEW_COMMITS} new commits since the last poll; building the newest {MAX_NEW_COMMITS}"
        );
    }
    // Tests kill the leader here: the commits are seen but no run is proposed yet.
    fail::fail_point!("trigger-after-poll", |_| crash("trigger-after-poll"));
    for head in new.into_iter().rev() {
        info!(pipeline, commit = %head.sha, "new commit: starting a run");
        propose(
            node,
            TriggerRun {
                pipeline: pipeline.to_string(),
                source: "git".into(),
                revision: head.sha,
                commit_at_ms: head.commit_at_ms,
                fire_ms: 0,
            },
        )
        .await;
    }
    // Tests kill the leader here: the run is started, but a new leader will see the commit
    // again and must not start a second one.
    fail::fail_point!("trigger-after-propose", |_| crash("trigger-after-propose"));
}

async fn propose(node: &RaftHandle, t: TriggerRun) {
    let (pipeline, source) = (t.pipeline.clone(), t.source.clone());
    match node.propose(Kind::TriggerRun(t)).await {
        Ok(Outcome::Run(id)) => info!(pipeline, source, run = %id, "trigger started a run"),
        Ok(other) => debug!(pipeline, source, ?other, "trigger already handled"),
        Err(ProposeError::NotLeader { .. }) => debug!(pipeline, "lost leadership"),
        Err(e) => warn!(pipeline, source, error = %e, "trigger not applied"),
    }
}

#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn crash(point: &str) -> ! {
    eprintln!("failpoint {point}: aborting");
    std::process::abort()
}
