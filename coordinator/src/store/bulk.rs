//! Bulk data apply emits (log chunks), stored under keys fixed by the command — (run, stage,
//! attempt, seq) — so replaying the Raft log rewrites the same keys and never duplicates.
//!
//! A chunk is stored as the agent encoded it (usually LZ4), behind one format byte, so apply
//! decompresses nothing on any node and sled writes the compressed size; reads decode. Values
//! written by older builds (the decoded bytes, no format byte) are rewritten once, when the
//! store opens (`upgrade_log_values`), so every value in the tree has the format byte.

use super::{Batch, Engine, Result, Tree};

/// Meta key: present once every value in the log tree starts with its format byte.
const LOG_FORMAT: &[u8] = b"log_format";
/// Meta key: the last log key an interrupted upgrade already rewrote.
const LOG_FORMAT_PROGRESS: &[u8] = b"log_format_progress";
/// The value of `LOG_FORMAT`: format byte = `cd_common::logcodec` encoding.
const LOG_FORMAT_V1: &[u8] = &[1];
/// Keys rewritten per batch by the upgrade (bounds its memory).
const UPGRADE_PAGE: usize = 1024;

/// The stored form of a chunk: its `logcodec` encoding as one byte, then its bytes as sent.
pub fn stored_value(encoding: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 1);
    // Encodings are checked by the leader (`logcodec::decode`) before proposing; an unknown
    // one is kept as is and shows as unreadable when read.
    v.push(u8::try_from(encoding).unwrap_or(u8::MAX));
    v.extend_from_slice(data);
    v
}

/// The bytes a stored chunk stands for. A chunk that does not decode (it passed the leader's
/// check, so only a bug gets here) reads as a visible mark, not a hole.
pub fn decode_stored(seq: u64, value: &[u8]) -> Vec<u8> {
    let Some((&format, data)) = value.split_first() else {
        return Vec::new();
    };
    cd_common::logcodec::decode(data, u32::from(format), usize::MAX)
        .unwrap_or_else(|e| format!("[conveyor: log chunk {seq} unreadable: {e}]\n").into_bytes())
}

/// Gives every value an older build wrote (the decoded bytes) the raw format byte, a page per
/// batch with the progress in the same batch, so a crash midway resumes without rewriting a
/// value twice. A no-op once done (one `get`).
pub fn upgrade_log_values(engine: &dyn Engine) -> Result<()> {
    if engine.get(Tree::Meta, LOG_FORMAT)?.is_some() {
        return Ok(());
    }
    let mut after = engine.get(Tree::Meta, LOG_FORMAT_PROGRESS)?;
    loop {
        let start = match &after {
            // The smallest key after `k`.
            Some(k) => {
                let mut s = k.clone();
                s.push(0);
                s
            }
            None => Vec::new(),
        };
        let rows = engine.scan(Tree::Logs, &start, None, UPGRADE_PAGE)?;
        let done = rows.len() < UPGRADE_PAGE;
        let mut b = Batch::default();
        for (k, v) in &rows {
            b.put(Tree::Logs, k, stored_value(cd_common::logcodec::RAW, v));
        }
        if let Some((k, _)) = rows.last() {
            b.put(Tree::Meta, LOG_FORMAT_PROGRESS, k.clone());
            after = Some(k.clone());
        }
        if done {
            b.put(Tree::Meta, LOG_FORMAT, LOG_FORMAT_V1.to_vec());
            b.delete(Tree::Meta, LOG_FORMAT_PROGRESS);
        }
        engine.write(b)?;
        if done {
            return engine.sync();
        }
    }
}

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
                data: decode_stored(seq, &v),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemEngine, SledEngine};
    use cd_common::logcodec;

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                format!("12:00:{:02} INFO build::step case_{i} ok\n", i % 60).into_bytes()
            })
            .collect()
    }

    fn put_raw(engine: &dyn Engine, seq: u64, value: &[u8]) {
        let mut b = Batch::default();
        b.put(
            Tree::Logs,
            &chunk_key("r1", "build", 1, seq),
            value.to_vec(),
        );
        engine.write(b).unwrap();
    }

    fn read_all(engine: &dyn Engine) -> Vec<Vec<u8>> {
        read_chunks(engine, "r1", "build", 1, (1, 0), usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| r.data)
            .collect()
    }

    #[test]
    fn values_an_older_build_wrote_read_the_same_after_the_upgrade_of_a_sled_file() {
        let dir = tempfile::tempdir().unwrap();
        // Old form: the decoded bytes, no format byte. The first one starts with the byte that
        // now means LZ4, the second is empty: neither may be taken for the new form.
        let old = [vec![1u8, 9, 9, b'\n'], Vec::new(), text(40)];
        {
            let engine = SledEngine::open(dir.path()).unwrap();
            for (seq, v) in old.iter().enumerate() {
                put_raw(&engine, seq as u64, v);
            }
            engine.sync().unwrap();
        }
        let engine = SledEngine::open(dir.path()).unwrap();
        upgrade_log_values(&engine).unwrap();
        assert_eq!(read_all(&engine), old.to_vec());
        // New chunks go in encoded beside the upgraded ones; a second upgrade changes nothing.
        let fresh = text(300);
        let (packed, enc) = logcodec::encode(&fresh);
        assert_eq!(enc, logcodec::LZ4);
        let mut b = Batch::default();
        b.put(
            Tree::Logs,
            &chunk_key("r1", "build", 1, 3),
            stored_value(enc, &packed),
        );
        engine.write(b).unwrap();
        upgrade_log_values(&engine).unwrap();
        let mut want = old.to_vec();
        want.push(fresh);
        assert_eq!(read_all(&engine), want);
    }

    #[test]
    fn encoded_and_raw_chunks_round_trip_and_lz4_is_stored_compressed() {
        let engine = MemEngine::default();
        upgrade_log_values(&engine).unwrap();
        let big = text(2000);
        let (packed, enc) = logcodec::encode(&big);
        assert_eq!(enc, logcodec::LZ4);
        let stored = stored_value(enc, &packed);
        assert!(
            stored.len() * 2 < big.len(),
            "{} of {}",
            stored.len(),
            big.len()
        );
        let mut b = Batch::default();
        b.put(Tree::Logs, &chunk_key("r1", "build", 1, 0), stored);
        b.put(
            Tree::Logs,
            &chunk_key("r1", "build", 1, 1),
            stored_value(logcodec::RAW, b"short\n"),
        );
        // Passed the leader's check, then damaged: shows as a mark, not a panic or a hole.
        b.put(
            Tree::Logs,
            &chunk_key("r1", "build", 1, 2),
            stored_value(logcodec::LZ4, &[200, 0, 0, 0, 0xff]),
        );
        engine.write(b).unwrap();
        let got = read_all(&engine);
        assert_eq!(got[0], big);
        assert_eq!(got[1], b"short\n");
        let mark = String::from_utf8(got[2].clone()).unwrap();
        assert!(mark.contains("log chunk 2 unreadable"), "{mark}");
    }

    #[test]
    fn an_upgrade_interrupted_after_a_page_resumes_without_rewriting_twice() {
        let engine = MemEngine::default();
        let n = UPGRADE_PAGE * 2 + 7;
        for seq in 0..n as u64 {
            put_raw(&engine, seq, format!("line {seq}\n").as_bytes());
        }
        // As if a crash came after the first page's batch: rewritten values and progress.
        let first = engine.scan(Tree::Logs, &[], None, UPGRADE_PAGE).unwrap();
        let mut b = Batch::default();
        for (k, v) in &first {
            b.put(Tree::Logs, k, stored_value(logcodec::RAW, v));
        }
        b.put(
            Tree::Meta,
            LOG_FORMAT_PROGRESS,
            first.last().unwrap().0.clone(),
        );
        engine.write(b).unwrap();
        upgrade_log_values(&engine).unwrap();
        let want: Vec<Vec<u8>> = (0..n).map(|s| format!("line {s}\n").into_bytes()).collect();
        assert_eq!(read_all(&engine), want);
        assert_eq!(engine.get(Tree::Meta, LOG_FORMAT_PROGRESS).unwrap(), None);
    }
}
