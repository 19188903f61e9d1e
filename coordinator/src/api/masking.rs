//! Secrets on the leader's agent path: opening a stage's secrets for its assignment (never
//! stored), and masking their values in every log chunk and result text an agent sends before
//! it is proposed, so a misbehaving agent cannot get a value into the log either. The agent
//! masks too (and handles a value split across chunks); this is the second line, per chunk.

use std::collections::{BTreeMap, HashMap};

use cd_proto::v1 as pb;

use crate::secret_key::{Sealed, SecretKey};
use crate::state::State;
use crate::state::command::{LogChunk, StageResult};

/// Names of the secrets `stage` of `run_id` lists (empty when none or unknown).
fn secret_names<'a>(st: &'a State, run_id: &str, stage: &str) -> &'a [String] {
    st.runs
        .get(run_id)
        .and_then(|run| st.stage_spec(run, stage))
        .map_or(&[], |spec| spec.secrets.as_slice())
}

/// The values of the secrets a stage lists, by name; an error is the stage's failure reason
/// and names the secret (or says that secrets are disabled here).
pub(super) fn open_for_stage(
    key: Option<&SecretKey>,
    st: &State,
    run_id: &str,
    stage: &str,
) -> Result<BTreeMap<String, String>, String> {
    let names = secret_names(st, run_id, stage);
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let Some(key) = key else {
        return Err(format!(
            "the stage needs secret {} but secrets are disabled on this coordinator: start it \
             with --secret-key-file",
            names.join(", ")
        ));
    };
    let mut out = BTreeMap::new();
    for name in names {
        let rec = st.secrets.get(name).ok_or_else(|| {
            format!("secret {name} is not set (set it with `cdctl secret set {name}`)")
        })?;
        let sealed = Sealed {
            format: rec.format,
            key_id: rec.key_id.clone(),
            nonce: rec.nonce.clone(),
            ciphertext: rec.ciphertext.clone(),
        };
        let value = key
            .open(name, &sealed)
            .map_err(|e| format!("secret {name} cannot be decrypted: {e}"))?;
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// An assignment that cannot be delivered: its stage's secrets cannot be given.
#[derive(Debug)]
pub(super) struct Undeliverable {
    pub attempt: pb::AttemptRef,
    /// Names the secret (never holds a value).
    pub reason: String,
}

/// Adds the stage's secrets to an assignment about to be pushed.
pub(super) fn attach_secrets(
    key: Option<&SecretKey>,
    st: &State,
    mut a: pb::Assignment,
) -> Result<pb::Assignment, Undeliverable> {
    let Some(r) = a.attempt.clone() else {
        return Ok(a);
    };
    match open_for_stage(key, st, &r.run_id, &r.stage) {
        Ok(values) => {
            a.secrets = values.into_iter().collect();
            Ok(a)
        }
        Err(reason) => Err(Undeliverable { attempt: r, reason }),
    }
}

/// Secret values per (run, stage) of one request's chunks, opened under the state lock so the
/// masking itself (decode, scan, re-encode) runs outside it.
#[derive(Default)]
pub(super) struct StageValues(HashMap<(String, String), Vec<Vec<u8>>>);

impl StageValues {
    /// The values of every stage the chunks belong to. A stage whose secrets cannot be opened
    /// never received them, so there is nothing of them to mask.
    pub(super) fn for_chunks(key: Option<&SecretKey>, st: &State, chunks: &[LogChunk]) -> Self {
        let mut out = StageValues::default();
        if st.secrets.is_empty() {
            return out;
        }
        for k in chunks.iter().filter_map(|c| c.key.as_ref()) {
            out.0
                .entry((k.run_id.clone(), k.stage.clone()))
                .or_insert_with(|| {
                    open_for_stage(key, st, &k.run_id, &k.stage)
                        .map(|m| m.into_values().map(String::into_bytes).collect())
                        .unwrap_or_default()
                });
        }
        out
    }

    /// Masks each chunk with its own stage's values (decoded, masked, re-encoded). Consecutive
    /// chunks of one attempt in this request are scanned as one text, so a value split across
    /// them is found too; each chunk keeps its own bytes (a resent chunk is deduplicated by
    /// seq, so no byte may move to a neighbour).
    pub(super) fn mask(&self, chunks: &mut [LogChunk]) {
        let mut start = 0;
        while start < chunks.len() {
            let mut end = start + 1;
            while end < chunks.len() && follows(&chunks[end - 1], &chunks[end]) {
                end += 1;
            }
            self.mask_run(&mut chunks[start..end]);
            start = end;
        }
    }

    /// Masks a run of consecutive chunks of one attempt.
    fn mask_run(&self, run: &mut [LogChunk]) {
        let Some(k) = run.first().and_then(|c| c.key.as_ref()) else {
            return;
        };
        let Some(vals) = self.0.get(&(k.run_id.clone(), k.stage.clone())) else {
            return;
        };
        if vals.is_empty() {
            return;
        }
        // The caller checked that every chunk decodes within the limit.
        let plain: Vec<Vec<u8>> = run
            .iter()
            .map(|c| {
                cd_common::logcodec::decode(&c.data, c.encoding, usize::MAX).unwrap_or_default()
            })
            .collect();
        let text = plain.concat();
        let ranges = cd_common::secrets::covered(&text, vals);
        if ranges.is_empty() {
            return;
        }
        let mut offset = 0;
        for (c, bytes) in run.iter_mut().zip(&plain) {
            let (lo, hi) = (offset, offset + bytes.len());
            offset = hi;
            if bytes.is_empty() {
                continue;
            }
            let mut out = Vec::with_capacity(bytes.len());
            let mut at = lo;
            for r in ranges.iter().filter(|r| r.start < hi && r.end > lo) {
                let (a, b) = (r.start.max(lo), r.end.min(hi));
                out.extend_from_slice(&text[at..a]);
                out.extend_from_slice(cd_common::secrets::MASK);
                at = b;
            }
            if at == lo && out.is_empty() {
                continue;
            }
            out.extend_from_slice(&text[at..hi]);
            let (data, encoding) = cd_common::logcodec::encode(&out);
            c.data = data;
            c.encoding = encoding;
        }
    }
}

/// Whether `b` is the chunk right after `a` of the same attempt.
fn follows(a: &LogChunk, b: &LogChunk) -> bool {
    match (&a.key, &b.key) {
        (Some(x), Some(y)) => {
            x.run_id == y.run_id
                && x.stage == y.stage
                && x.attempt == y.attempt
                && x.term == y.term
                && b.seq == a.seq + 1
        }
        _ => false,
    }
}

/// Masks secret values in the text a result carries (its error messages).
pub(super) fn mask_result(
    key: Option<&SecretKey>,
    st: &State,
    run_id: &str,
    stage: &str,
    result: &mut StageResult,
) {
    if st.secrets.is_empty() {
        return;
    }
    let vals = open_for_stage(key, st, run_id, stage)
        .map(|m| m.into_values().map(String::into_bytes).collect::<Vec<_>>())
        .unwrap_or_default();
    for e in result.errors.iter_mut() {
        if let Some(masked) = cd_common::secrets::mask(e.as_bytes(), &vals) {
            *e = String::from_utf8_lossy(&masked).into_owned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::command::{AttemptKey, Kind, SetSecret, StartRun};
    use crate::state::testkit::{Kit, ml_pipeline};

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn kit_with_secret(key: &SecretKey, value: &str) -> (Kit, String) {
        let mut spec = ml_pipeline(1);
        spec.stages[0].secrets = vec!["TOKEN".into()];
        let mut k = Kit::new(&spec);
        let Ok(sealed) = key.seal("TOKEN", value.as_bytes()) else {
            panic!("seal")
        };
        k.ok(Kind::SetSecret(SetSecret {
            name: "TOKEN".into(),
            ciphertext: sealed.ciphertext,
            nonce: sealed.nonce,
            key_id: sealed.key_id,
            format: sealed.format,
            by: "op".into(),
        }));
        let run = match k.ok(Kind::StartRun(StartRun {
            pipeline: "ml".into(),
            ..Default::default()
        })) {
            crate::state::Outcome::Run(id) => id,
            other => panic!("{other:?}"),
        };
        (k, run)
    }

    #[test]
    fn a_stage_gets_only_its_own_secrets_and_failures_name_the_secret() {
        let Ok(key) = SecretKey::from_hex(KEY) else {
            panic!("key")
        };
        let (k, run) = kit_with_secret(&key, "hunter2-xyz");
        let build = open_for_stage(Some(&key), &k.state, &run, "build");
        assert_eq!(
            build.ok().and_then(|m| m.get("TOKEN").cloned()).as_deref(),
            Some("hunter2-xyz")
        );
        let other = open_for_stage(Some(&key), &k.state, &run, "acceptance");
        assert_eq!(other.ok().map(|m| m.len()), Some(0));
        let disabled = open_for_stage(None, &k.state, &run, "build").err();
        assert!(
            disabled.unwrap_or_default().contains(
                "secrets are disabled on this coordinator: start it with --secret-key-file"
            )
        );
        let mut st = k.state.clone();
        st.secrets.clear();
        let missing = open_for_stage(Some(&key), &st, &run, "build").err();
        assert!(
            missing
                .unwrap_or_default()
                .contains("secret TOKEN is not set")
        );
        let Ok(other_key) = SecretKey::from_hex(&KEY.replace("00", "ff")) else {
            panic!("key")
        };
        let wrong = open_for_stage(Some(&other_key), &k.state, &run, "build").err();
        assert!(
            wrong
                .unwrap_or_default()
                .contains("secret TOKEN cannot be decrypted: sealed with another key")
        );
    }

    /// The leader's cost per PushLogs (`cargo test -p cd-coordinator --lib
    /// leader_masking_cost -- --ignored --nocapture`): 256 LZ4 chunks of 8 KiB of one stage
    /// with a secret, opened, decoded and scanned as one text. Measured 2026-11-28: 3.0-3.6 ms
    /// per push release (machine shared, load about 4), 24.5 ms debug.
    #[test]
    #[ignore]
    fn leader_masking_cost() {
        let Ok(key) = SecretKey::from_hex(KEY) else {
            panic!("key")
        };
        let (k, run) = kit_with_secret(&key, "hunter2-xyz-0123456789");
        let text: Vec<u8> = b"12:00:01.123 INFO runner::start case_00042 took 0.031s ok\n"
            .repeat(140)
            .into_iter()
            .take(8192)
            .collect();
        let (data, encoding) = cd_common::logcodec::encode(&text);
        let chunks: Vec<LogChunk> = (0..256)
            .map(|seq| LogChunk {
                key: Some(AttemptKey {
                    run_id: run.clone(),
                    stage: "build".into(),
                    attempt: 1,
                    ..Default::default()
                }),
                seq,
                data: data.clone(),
                encoding,
            })
            .collect();
        let rounds = 20;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            let mut batch = chunks.clone();
            StageValues::for_chunks(Some(&key), &k.state, &batch).mask(&mut batch);
        }
        let per_push = started.elapsed() / rounds;
        let mib = (256 * 8192) as f64 / (1 << 20) as f64;
        println!(
            "one push of 256 x 8 KiB LZ4 chunks ({mib} MiB): {per_push:?}, {:.0} MiB/s",
            mib / per_push.as_secs_f64()
        );
    }

    #[test]
    fn chunks_and_results_of_the_stage_are_masked_raw_and_lz4() {
        let Ok(key) = SecretKey::from_hex(KEY) else {
            panic!("key")
        };
        let (k, run) = kit_with_secret(&key, "hunter2-xyz");
        let chunk = |stage: &str, text: &[u8]| {
            let (data, encoding) = cd_common::logcodec::encode(text);
            LogChunk {
                key: Some(AttemptKey {
                    run_id: run.clone(),
                    stage: stage.into(),
                    attempt: 1,
                    ..Default::default()
                }),
                seq: 0,
                data,
                encoding,
            }
        };
        let long: Vec<u8> = b"line with hunter2-xyz in it\n".repeat(40);
        let mut chunks = vec![
            chunk("build", b"token is hunter2-xyz\n"),
            chunk("build", &long),
            chunk("acceptance", b"hunter2-xyz is not this stage's secret\n"),
        ];
        assert_eq!(chunks[1].encoding, cd_common::logcodec::LZ4);
        StageValues::for_chunks(Some(&key), &k.state, &chunks).mask(&mut chunks);
        let text = |c: &LogChunk| {
            cd_common::logcodec::decode(&c.data, c.encoding, usize::MAX).unwrap_or_default()
        };
        assert_eq!(text(&chunks[0]), b"token is ***\n");
        assert_eq!(text(&chunks[1]), b"line with *** in it\n".repeat(40));
        assert_eq!(
            text(&chunks[2]),
            b"hunter2-xyz is not this stage's secret\n",
            "another stage's output is left alone (it never received the value)"
        );
        // A value split across two consecutive chunks of one request: each keeps its bytes.
        let mut split = vec![
            chunk("build", b"start hunter2"),
            chunk("build", b"-xyz end\n"),
        ];
        split[1].seq = 1;
        StageValues::for_chunks(Some(&key), &k.state, &split).mask(&mut split);
        assert_eq!(text(&split[0]), b"start ***");
        assert_eq!(text(&split[1]), b"*** end\n");
        let mut result = StageResult {
            errors: vec!["bad token hunter2-xyz".into()],
            ..Default::default()
        };
        mask_result(Some(&key), &k.state, &run, "build", &mut result);
        assert_eq!(result.errors, ["bad token ***"]);
    }
}
