//! Bulk data apply emits (log chunks), stored under keys fixed by the command — (run, stage,
//! attempt, seq) — so replaying the Raft log rewrites the same keys and never duplicates.

use super::{Engine, Result, Tree};

/// One stored log chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub attempt: u32,
    pub seq: u64,
    pub data: Vec<u8>,
}

fn stage_prefix(run_id: &str, stage: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(run_id.len() + stage.len() + 2);
    k.extend_from_slice(run_id.as_bytes());
    k.push(0);
    k.extend_from_slice(stage.as_bytes());
    k.push(0);
    k
}

pub fn chunk_key(run_id: &str, stage: &str, attempt: u32, seq: u64) -> Vec<u8> {
    let mut k = stage_prefix(run_id, stage);
    k.extend_from_slice(&attempt.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Chunks of one stage (one attempt, or all when `attempt` is 0), from `(attempt, seq)` on.
pub fn read_chunks(
    engine: &dyn Engine,
    run_id: &str,
    stage: &str,
    attempt: u32,
    from: (u32, u64),
    limit: usize,
) -> Result<Vec<LogRecord>> {
    let prefix = stage_prefix(run_id, stage);
    let start = chunk_key(run_id, stage, from.0.max(attempt), from.1);
    let mut end = prefix.clone();
    if attempt == 0 {
        end.extend_from_slice(&u32::MAX.to_be_bytes());
        end.extend_from_slice(&u64::MAX.to_be_bytes());
    } else {
        end.extend_from_slice(&(attempt + 1).to_be_bytes());
    }
    let rows = engine.scan(Tree::Logs, &start, Some(&end), limit)?;
    Ok(rows
        .into_iter()
        .filter_map(|(k, v)| {
            let tail = k.get(prefix.len()..)?;
            let attempt = u32::from_be_bytes(tail.get(0..4)?.try_into().ok()?);
            let seq = u64::from_be_bytes(tail.get(4..12)?.try_into().ok()?);
            Some(LogRecord {
                attempt,
                seq,
                data: v,
            })
        })
        .collect())
}
