//! `cdctl run start|list|show|watch|cancel`. Watching is [`follow_run`], a function over a
//! stream of `Run` updates so its output and exit-code rule are testable without a server.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use anyhow::{anyhow, bail};
use cd_proto::v1::{
    CancelRunRequest, GetRunRequest, ListRunsRequest, Run, RunState, StageState, StartRunRequest,
    WatchRunRequest,
};
use futures::{Stream, StreamExt};
use tonic::Status;

use super::{Ctx, print};
use crate::cli::{Output, RunCommand, RunStartArgs};
use crate::client::Conn;
use crate::error::{StatusError, usage};
use crate::render::{current_attempt, json, table};

/// Runs fetched per `ListRuns` page.
const PAGE_SIZE: u32 = 100;
/// The `trigger` recorded on runs started from the CLI.
const TRIGGER: &str = "manual";

pub async fn run(ctx: &Ctx, cmd: RunCommand) -> anyhow::Result<u8> {
    match cmd {
        RunCommand::Start(args) => start(ctx, args).await,
        RunCommand::List { pipeline, limit } => list(ctx, pipeline, limit).await.map(|()| 0),
        RunCommand::Show { run } => show(ctx, run).await.map(|()| 0),
        RunCommand::Watch { run } => {
            let mut conn = ctx.conn().await?;
            watch(ctx, &mut conn, &run, "run watch").await
        }
        RunCommand::Cancel { run, reason } => cancel(ctx, run, reason).await.map(|()| 0),
    }
}

/// Turns `--param` pairs into the request map; a name given twice is a usage error.
pub fn params_map(pairs: Vec<(String, String)>) -> anyhow::Result<HashMap<String, String>> {
    let mut map = HashMap::with_capacity(pairs.len());
    for (key, value) in pairs {
        if map.contains_key(&key) {
            return usage(format!("run start: --param {key} is given more than once"));
        }
        map.insert(key, value);
    }
    Ok(map)
}

async fn start(ctx: &Ctx, args: RunStartArgs) -> anyhow::Result<u8> {
    let req = StartRunRequest {
        pipeline: args.pipeline,
        revision: args.revision.unwrap_or_default(),
        params: params_map(args.params)?,
        trigger: TRIGGER.to_string(),
        commit_at_ms: 0,
    };
    let mut conn = ctx.conn().await?;
    let run = conn
        .call("run start", async |mut c| c.start_run(req.clone()).await)
        .await?;
    // Table mode prints the id alone so `id=$(cdctl run start web)` works.
    print_new_run(ctx, &run, args.watch)?;
    if args.watch {
        watch(ctx, &mut conn, &run.id, "run watch").await
    } else {
        Ok(0)
    }
}

async fn list(ctx: &Ctx, pipeline: Option<String>, limit: Option<u32>) -> anyhow::Result<()> {
    let what = "run list";
    let mut conn = ctx.conn().await?;
    let limit = limit.map(|n| n as usize);
    let mut runs: Vec<Run> = Vec::new();
    let mut token = String::new();
    let mut seen_tokens = HashSet::new();
    loop {
        let want = limit.map_or(PAGE_SIZE as usize, |l| l - runs.len());
        let req = ListRunsRequest {
            pipeline: pipeline.clone().unwrap_or_default(),
            page_size: want.min(PAGE_SIZE as usize) as u32,
            page_token: token.clone(),
        };
        let page = conn
            .read(what, async |mut c| c.list_runs(req.clone()).await)
            .await?;
        let got = page.runs.len();
        runs.extend(page.runs);
        if let Some(l) = limit {
            runs.truncate(l);
            if runs.len() >= l {
                break;
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        // A server that hands back a token it gave before, or an empty page with a token,
        // would loop for ever.
        if got == 0 || !seen_tokens.insert(page.next_page_token.clone()) {
            bail!("{what}: the server returned a page token that does not advance");
        }
        token = page.next_page_token;
    }
    let now = cd_common::time::now_ms();
    ctx.show(|| table::runs(&runs, now), || json::list(&runs, json::run))
}

async fn show(ctx: &Ctx, run_id: String) -> anyhow::Result<()> {
    let mut conn = ctx.conn().await?;
    let req = GetRunRequest { run_id };
    let run = conn
        .read("run show", async |mut c| c.get_run(req.clone()).await)
        .await?;
    let now = cd_common::time::now_ms();
    ctx.show(|| table::run_detail(&run, now), || json::run(&run))
}

async fn cancel(ctx: &Ctx, run_id: String, reason: Option<String>) -> anyhow::Result<()> {
    let mut conn = ctx.conn().await?;
    let req = CancelRunRequest {
        run_id,
        reason: reason.unwrap_or_default(),
    };
    let run = conn
        .call("run cancel", async |mut c| c.cancel_run(req.clone()).await)
        .await?;
    ctx.show(
        || {
            format!(
                "run {} cancel requested; run is {}\n",
                run.id,
                crate::render::run_state_name(run.state)
            )
        },
        || json::run(&run),
    )
}

/// Opens `WatchRun` on `conn` and follows it to the end; the result is the exit code.
pub async fn watch(ctx: &Ctx, conn: &mut Conn, run_id: &str, what: &str) -> anyhow::Result<u8> {
    let req = WatchRunRequest {
        run_id: run_id.to_string(),
    };
    let stream = conn
        .read(what, async |mut c| c.watch_run(req.clone()).await)
        .await?;
    let origin = conn.endpoint().to_string();
    let mut out = std::io::stdout();
    let outcome = follow_run(
        stream,
        &mut out,
        ctx.output,
        &origin,
        cd_common::time::now_ms,
    )
    .await
    .map_err(|e| e.context(what.to_string()))?;
    Ok(outcome.exit_code())
}

/// How a watched run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl RunOutcome {
    /// The final outcome for a run state, `None` while the run goes on.
    pub fn from_state(state: i32) -> Option<RunOutcome> {
        match RunState::try_from(state) {
            Ok(RunState::Succeeded) => Some(RunOutcome::Succeeded),
            Ok(RunState::Failed) => Some(RunOutcome::Failed),
            Ok(RunState::Cancelled) => Some(RunOutcome::Cancelled),
            _ => None,
        }
    }

    /// 0 if the run succeeded, 1 if it failed or was cancelled.
    pub fn exit_code(self) -> u8 {
        match self {
            RunOutcome::Succeeded => 0,
            RunOutcome::Failed | RunOutcome::Cancelled => 1,
        }
    }
}

/// Prints a run's updates as they come until the run is final, and says how it ended.
///
/// Table mode prints one line per stage whose state (or attempt) changed since the previous
/// update, stamped with `clock()`, then a final line for the run; stages first seen as
/// pending are not printed. JSON mode prints each update as one JSON object per line. An
/// error from the stream, or the stream ending before the run is final, is an error naming
/// `origin` (the endpoint).
pub async fn follow_run<S, W>(
    mut updates: S,
    out: &mut W,
    output: Output,
    origin: &str,
    clock: impl Fn() -> i64,
) -> anyhow::Result<RunOutcome>
where
    S: Stream<Item = Result<Run, Status>> + Unpin,
    W: Write,
{
    let mut seen: HashMap<String, (i32, u32)> = HashMap::new();
    let mut last_id = String::new();
    while let Some(update) = updates.next().await {
        let run = update.map_err(|status: Status| {
            anyhow::Error::new(StatusError::from(status))
                .context(format!("the stream from {origin} broke"))
        })?;
        let now = clock();
        match output {
            Output::Json => writeln!(out, "{}", json::run(&run))?,
            Output::Table => {
                let width = run
                    .stages
                    .iter()
                    .map(|s| s.name.chars().count())
                    .max()
                    .unwrap_or(0);
                for stage in &run.stages {
                    let key = (stage.state, current_attempt(stage).map_or(0, |a| a.number));
                    let changed = match seen.insert(stage.name.clone(), key) {
                        Some(previous) => previous != key,
                        None => !matches!(
                            StageState::try_from(stage.state),
                            Ok(StageState::Pending | StageState::Unspecified)
                        ),
                    };
                    if changed {
                        writeln!(out, "{}", table::stage_change(stage, width, now, now))?;
                    }
                }
            }
        }
        last_id.clone_from(&run.id);
        if let Some(outcome) = RunOutcome::from_state(run.state) {
            if output == Output::Table {
                writeln!(out, "{}", table::run_end(&run, now, now))?;
            }
            out.flush()?;
            return Ok(outcome);
        }
        out.flush()?;
    }
    if last_id.is_empty() {
        Err(anyhow!(
            "the stream from {origin} ended before sending the run"
        ))
    } else {
        Err(anyhow!(
            "the stream from {origin} ended before run {last_id} finished"
        ))
    }
}

/// Prints a run id (table) or the run (JSON) after a command that made one. When the run is
/// watched next, the JSON is one line so the whole output is one object per line.
pub fn print_new_run(ctx: &Ctx, run: &Run, watching: bool) -> anyhow::Result<()> {
    match ctx.output {
        Output::Table => print(&format!("{}\n", run.id)),
        Output::Json if watching => print(&format!("{}\n", json::run(run))),
        Output::Json => super::print_json(&json::run(run)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::clock;
    use cd_proto::v1::{Attempt, Stage};

    const T0: i64 = 1_700_000_000_000;

    fn stage(name: &str, state: StageState, attempt: Option<(u32, &str)>) -> Stage {
        Stage {
            name: name.into(),
            state: state as i32,
            attempts: attempt
                .map(|(number, agent)| Attempt {
                    number,
                    agent: agent.into(),
                    started_ms: T0,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    fn run(state: RunState, stages: Vec<Stage>) -> Run {
        Run {
            id: "r-1".into(),
            pipeline: "web".into(),
            state: state as i32,
            created_ms: T0,
            stages,
            ..Default::default()
        }
    }

    async fn follow(updates: Vec<Result<Run, Status>>) -> (anyhow::Result<RunOutcome>, String) {
        let mut out = Vec::new();
        let result = follow_run(
            futures::stream::iter(updates),
            &mut out,
            Output::Table,
            "https://n1:7400",
            || T0,
        )
        .await;
        (result, String::from_utf8(out).unwrap())
    }

    fn exit_code(result: &anyhow::Result<RunOutcome>) -> u8 {
        match result {
            Ok(outcome) => outcome.exit_code(),
            Err(_) => 1,
        }
    }

    #[tokio::test]
    async fn succeeded_run_exits_0_with_a_line_per_change() {
        use StageState::*;
        let updates = vec![
            Ok(run(
                RunState::Running,
                vec![stage("build", Pending, None), stage("test", Pending, None)],
            )),
            Ok(run(
                RunState::Running,
                vec![
                    stage("build", Running, Some((1, "agent-1"))),
                    stage("test", Pending, None),
                ],
            )),
            // A repeated update with nothing new prints nothing.
            Ok(run(
                RunState::Running,
                vec![
                    stage("build", Running, Some((1, "agent-1"))),
                    stage("test", Pending, None),
                ],
            )),
            // A retry on another agent is a change even though the state is the same.
            Ok(run(
                RunState::Running,
                vec![
                    stage("build", Running, Some((2, "agent-2"))),
                    stage("test", Pending, None),
                ],
            )),
            Ok(run(
                RunState::Succeeded,
                vec![
                    stage("build", Succeeded, Some((2, "agent-2"))),
                    stage("test", Skipped, None),
                ],
            )),
        ];
        let (result, out) = follow(updates).await;
        assert_eq!(result.unwrap(), RunOutcome::Succeeded);
        let c = clock(T0);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                format!("{c} build running (attempt 1 on agent-1)"),
                format!("{c} build running (attempt 2 on agent-2)"),
                format!("{c} build succeeded"),
                format!("{c} test  skipped"),
                format!("{c} run r-1 succeeded"),
            ]
        );
    }

    #[tokio::test]
    async fn failed_or_cancelled_run_exits_1() {
        let mut failed = run(
            RunState::Failed,
            vec![stage("build", StageState::Failed, Some((1, "a")))],
        );
        failed.reason = "stage build failed".into();
        let (result, out) = follow(vec![Ok(failed)]).await;
        assert_eq!(result.as_ref().unwrap(), &RunOutcome::Failed);
        assert_eq!(exit_code(&result), 1);
        assert!(
            out.ends_with("run r-1 failed: stage build failed\n"),
            "{out}"
        );

        let cancelled = run(RunState::Cancelled, vec![]);
        let (result, _) = follow(vec![Ok(cancelled)]).await;
        assert_eq!(result.as_ref().unwrap(), &RunOutcome::Cancelled);
        assert_eq!(exit_code(&result), 1);
    }

    #[tokio::test]
    async fn stops_at_the_first_final_update() {
        let (result, out) = follow(vec![
            Ok(run(RunState::Succeeded, vec![])),
            Err(Status::unavailable("gone")),
        ])
        .await;
        assert_eq!(exit_code(&result), 0);
        assert_eq!(out.lines().count(), 1);
    }

    #[tokio::test]
    async fn broken_or_short_stream_is_an_error() {
        let (result, _) = follow(vec![
            Ok(run(RunState::Running, vec![])),
            Err(Status::unavailable("leader lost")),
        ])
        .await;
        let err = result.unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "the stream from https://n1:7400 broke: unavailable: leader lost"
        );

        let (result, _) = follow(vec![Ok(run(RunState::Running, vec![]))]).await;
        assert_eq!(
            format!("{:#}", result.unwrap_err()),
            "the stream from https://n1:7400 ended before run r-1 finished"
        );
        let (result, _) = follow(vec![]).await;
        assert!(result.is_err());
        assert_eq!(exit_code(&result), 1);
    }

    #[tokio::test]
    async fn json_mode_prints_one_object_per_update() {
        let mut out = Vec::new();
        let updates = vec![
            Ok(run(RunState::Running, vec![])),
            Ok(run(RunState::Succeeded, vec![])),
        ];
        let outcome = follow_run(
            futures::stream::iter(updates),
            &mut out,
            Output::Json,
            "x",
            || T0,
        )
        .await
        .unwrap();
        assert_eq!(outcome.exit_code(), 0);
        let text = String::from_utf8(out).unwrap();
        let states: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["state"].to_string())
            .collect();
        assert_eq!(states, ["\"running\"", "\"succeeded\""]);
    }

    #[test]
    fn duplicate_params_are_a_usage_error() {
        let err = params_map(vec![("A".into(), "1".into()), ("A".into(), "2".into())]).unwrap_err();
        assert_eq!(crate::error::exit_code_for(&err), 2);
        assert!(
            err.to_string()
                .contains("--param A is given more than once")
        );
    }
}
