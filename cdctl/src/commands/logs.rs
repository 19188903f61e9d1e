//! `cdctl logs RUN STAGE [--attempt N] [-f]`: writes a stage's log bytes raw to stdout as they
//! arrive. [`write_logs`] works over any stream of chunks: it puts each attempt's chunks in
//! `seq` order (dropping resent ones), and announces each attempt on stderr with
//! `--- attempt N ---` when the stage has more than one.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use anyhow::anyhow;
use cd_proto::v1::{FollowLogsRequest, GetRunRequest, LogChunk};
use futures::{Stream, StreamExt};
use tonic::Status;

use super::Ctx;
use crate::cli::{LogsArgs, Output};
use crate::error::StatusError;
use crate::render::json;

/// Chunks held back waiting for a missing `seq` before the gap is given up on.
const MAX_HELD_CHUNKS: usize = 256;

pub async fn run(ctx: &Ctx, args: LogsArgs) -> anyhow::Result<()> {
    let what = "logs";
    let mut conn = ctx.conn().await?;
    // The run tells whether the stage exists and how many attempts it has so far.
    let get = GetRunRequest {
        run_id: args.run.clone(),
    };
    let run = conn
        .read(what, async |mut c| c.get_run(get.clone()).await)
        .await?;
    let Some(stage) = run.stages.iter().find(|s| s.name == args.stage) else {
        let names: Vec<&str> = run.stages.iter().map(|s| s.name.as_str()).collect();
        return Err(anyhow!(
            "{what}: not found: run {} has no stage \"{}\" (stages: {})",
            run.id,
            args.stage,
            names.join(", ")
        ));
    };
    let several = args.attempt.is_none() && stage.attempts.len() > 1;

    let req = FollowLogsRequest {
        run_id: args.run,
        stage: args.stage,
        attempt: args.attempt.unwrap_or(0),
        follow: args.follow,
    };
    let chunks = conn
        .read(what, async |mut c| c.follow_logs(req.clone()).await)
        .await?;
    let origin = conn.endpoint().to_string();
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    write_logs(chunks, &mut out, &mut err, ctx.output, several, &origin)
        .await
        .map_err(|e| e.context(what))
}

/// Per-attempt ordering state.
#[derive(Default)]
struct AttemptLog {
    next_seq: u64,
    held: BTreeMap<u64, LogChunk>,
}

/// Writes chunks in order as they arrive.
///
/// Within an attempt, chunks are written in `seq` order: an early one is held until the gap
/// before it fills, a resent one (seq already written) is dropped. A gap that never fills is
/// reported on `err` and skipped at the end of the stream (or once too many chunks wait).
/// Attempts are written one after another; a `--- attempt N ---` line goes to `err` before
/// each attempt when `several` is set, and before any attempt after the first seen. In JSON
/// mode each chunk is one JSON object per line and no headers are written.
pub async fn write_logs<S, O, E>(
    mut chunks: S,
    out: &mut O,
    err: &mut E,
    output: Output,
    several: bool,
    origin: &str,
) -> anyhow::Result<()>
where
    S: Stream<Item = Result<LogChunk, Status>> + Unpin,
    O: Write,
    E: Write,
{
    let mut attempts: HashMap<u32, AttemptLog> = HashMap::new();
    let mut current: Option<u32> = None;
    let mut headers = several;
    while let Some(item) = chunks.next().await {
        let chunk = item.map_err(|status| {
            anyhow::Error::new(StatusError::from(status))
                .context(format!("the stream from {origin} broke"))
        })?;
        let number = chunk.attempt.as_ref().map_or(0, |a| a.attempt);
        if current != Some(number) {
            if let Some(previous) = current {
                flush_gaps(
                    previous,
                    attempts.entry(previous).or_default(),
                    out,
                    err,
                    output,
                )?;
                headers = true;
            }
            if headers && output == Output::Table {
                writeln!(err, "--- attempt {number} ---")?;
                err.flush()?;
            }
            current = Some(number);
        }
        let log = attempts.entry(number).or_default();
        if chunk.seq < log.next_seq {
            continue;
        }
        log.held.insert(chunk.seq, chunk);
        while let Some(next) = log.held.remove(&log.next_seq) {
            write_chunk(&next, out, output)?;
            log.next_seq += 1;
        }
        if log.held.len() > MAX_HELD_CHUNKS {
            flush_gaps(number, log, out, err, output)?;
        }
        out.flush()?;
    }
    if let Some(last) = current {
        flush_gaps(last, attempts.entry(last).or_default(), out, err, output)?;
    }
    out.flush()?;
    Ok(())
}

/// Writes every held chunk in order, warning about each missing range.
fn flush_gaps<O: Write, E: Write>(
    number: u32,
    log: &mut AttemptLog,
    out: &mut O,
    err: &mut E,
    output: Output,
) -> anyhow::Result<()> {
    for (seq, chunk) in std::mem::take(&mut log.held) {
        if seq > log.next_seq {
            writeln!(
                err,
                "warning: attempt {number}: log chunks {}..{} are missing",
                log.next_seq,
                seq - 1
            )?;
        }
        write_chunk(&chunk, out, output)?;
        log.next_seq = seq + 1;
    }
    Ok(())
}

fn write_chunk<O: Write>(chunk: &LogChunk, out: &mut O, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Table => out.write_all(&chunk.data)?,
        Output::Json => writeln!(out, "{}", json::log_chunk(chunk))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cd_proto::v1::AttemptRef;

    fn chunk(attempt: u32, seq: u64, data: &str) -> Result<LogChunk, Status> {
        Ok(LogChunk {
            attempt: Some(AttemptRef {
                run_id: "r".into(),
                stage: "build".into(),
                attempt,
                ..Default::default()
            }),
            seq,
            data: data.as_bytes().to_vec(),
            encoding: 0,
        })
    }

    async fn collect(
        chunks: Vec<Result<LogChunk, Status>>,
        several: bool,
    ) -> (anyhow::Result<()>, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = write_logs(
            futures::stream::iter(chunks),
            &mut out,
            &mut err,
            Output::Table,
            several,
            "https://n1",
        )
        .await;
        (
            result,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[tokio::test]
    async fn writes_in_seq_order_and_drops_resends() {
        let (result, out, err) = collect(
            vec![
                chunk(1, 0, "a"),
                chunk(1, 2, "c"),
                chunk(1, 1, "b"),
                chunk(1, 1, "b"),
                chunk(1, 3, "d\n"),
            ],
            false,
        )
        .await;
        result.unwrap();
        assert_eq!(out, "abcd\n");
        assert_eq!(err, "");
    }

    #[tokio::test]
    async fn attempts_get_headers_when_there_are_several() {
        let (result, out, err) =
            collect(vec![chunk(1, 0, "one\n"), chunk(2, 0, "two\n")], false).await;
        result.unwrap();
        assert_eq!(out, "one\ntwo\n");
        assert_eq!(err, "--- attempt 2 ---\n");

        let (_, _, err) = collect(vec![chunk(1, 0, "x"), chunk(2, 0, "y")], true).await;
        assert_eq!(err, "--- attempt 1 ---\n--- attempt 2 ---\n");
    }

    #[tokio::test]
    async fn a_gap_is_reported_and_skipped_at_the_end() {
        let (result, out, err) = collect(vec![chunk(1, 0, "a"), chunk(1, 3, "d")], false).await;
        result.unwrap();
        assert_eq!(out, "ad");
        assert_eq!(err, "warning: attempt 1: log chunks 1..2 are missing\n");
    }

    #[tokio::test]
    async fn a_broken_stream_is_an_error_after_what_arrived() {
        let (result, out, _) = collect(
            vec![chunk(1, 0, "a"), Err(Status::unavailable("leader lost"))],
            false,
        )
        .await;
        assert_eq!(out, "a");
        assert_eq!(
            format!("{:#}", result.unwrap_err()),
            "the stream from https://n1 broke: unavailable: leader lost"
        );
    }
}
