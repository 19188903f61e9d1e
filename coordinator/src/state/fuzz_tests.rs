//! A bounded, proptest-driven fuzzer for the command decoder and apply: Raft entries are
//! untrusted bytes once a disk or a peer misbehaves, so arbitrary bytes, and real commands
//! mutated byte by byte, must decode to a `Command` or a decode error, and whatever decodes must
//! apply (as a refusal if need be) without a panic, to an empty state and to one with a run that
//! went to production and rolled back. Cases per property: `CD_FUZZ_CASES` (default 1,500;
//! `CD_FUZZ_CASES=200000 cargo test -p cd-coordinator --release --lib fuzz` for a long run).

use proptest::prelude::*;

use super::testkit::{Kit, exit, ml_pipeline, with_accuracy};
use super::{Command, State, apply};

fn cases() -> u32 {
    std::env::var("CD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_500)
}

/// A state with history (a release to production whose monitor failed, so a rollback run
/// started) and the encoded commands that made it.
fn scenario() -> (State, Vec<Vec<u8>>) {
    let mut k = Kit::new(&ml_pipeline(0));
    let run = k.start_run("ml");
    k.run_stage(&run, "build", "a1", exit(0));
    k.run_stage(&run, "acceptance", "a1", with_accuracy(0.95));
    k.run_stage(&run, "deploy", "a2", exit(0));
    k.run_stage(&run, "monitor", "a1", exit(1));
    let corpus = k.history.iter().map(Command::encode_to_vec).collect();
    (k.state, corpus)
}

fn decode_and_apply(bytes: &[u8], base: &State) {
    if let Ok(cmd) = Command::decode(bytes) {
        let mut empty = State::default();
        let _ = apply(&mut empty, &cmd, 1);
        let mut st = base.clone();
        let _ = apply(&mut st, &cmd, 1_000);
        // A second apply of the same entry (a replay) must not panic either.
        let _ = apply(&mut st, &cmd, 1_000);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let (state, _) = scenario();
        decode_and_apply(&bytes, &state);
    }

    #[test]
    fn mutated_real_commands(
        pick in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let (state, corpus) = scenario();
        let mut bytes = corpus[pick.index(corpus.len())].clone();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        decode_and_apply(&bytes, &state);
    }
}
