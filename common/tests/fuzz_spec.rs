//! A bounded, proptest-driven fuzzer for the pipeline parser: arbitrary text, and valid specs
//! mutated byte by byte and token by token, must come back as a spec or a `SpecError` — never a
//! panic, never a hang. Cases per property: `CD_FUZZ_CASES` (default 1,500, a few seconds in CI;
//! `CD_FUZZ_CASES=200000 cargo test -p cd-common --test fuzz_spec --release` for a long run).

use proptest::prelude::*;

const SEEDS: &[&str] = &[
    "name: p\nstages:\n  - name: a\n    run: make\n",
    r#"name: web
env: { A: "1" }
stages:
  - name: build
    run: make build
    artifacts: [dist/]
    timeout: 20m
    retries: 1
  - name: test
    needs: [build]
    run: make test
    reports: { junit: reports/junit.xml, metrics: m.json }
  - name: deploy
    needs: [test]
    environment: production
    gate:
      tests: { from: [test], min_pass_rate: 1.0 }
      metrics:
        - { name: accuracy, from: test, min: 0.9, max_regression: 0.01 }
      approvals: 1
    run: ./deploy.sh
    rollback: ./deploy.sh --rollback
  - name: monitor
    needs: [deploy]
    monitor: { duration: 1m, interval: 5s, failure_threshold: 3, command: ./check.sh }
    on_failure: rollback
"#,
    r#"name: c
trigger:
  git: { repository: ./repo, branch: main, interval: 1m }
  schedule: { cron: "0 3 * * *" }
concurrency: 2
on_new_run: supersede
stages:
  - name: a
    image: busybox:local
    resources: { cpus: 0.5, memory: 64m }
    network: none
    run: "true"
"#,
];

/// YAML fragments that stress the parser: anchors and aliases, tags, flow collections, deep
/// nesting, odd scalars.
const TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "!!binary ",
    "!custom ",
    "{",
    "}",
    "[",
    "]",
    ": ",
    "- ",
    "? ",
    "|\n",
    ">-\n",
    "\"\\u0000\"",
    "'",
    "#",
    "\n  ",
    "\t",
    "~",
    "null",
    "1e999",
    "-0x1",
    "0o7",
    ".nan",
    "---\n",
    "...\n",
    "<<: *a\n",
    "\u{feff}",
    "\u{202e}",
    "../",
    "%YAML 1.2\n",
    "\r\n",
];

fn cases() -> u32 {
    std::env::var("CD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_500)
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, usize),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Flip(at, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Edit::Insert(at, t)),
        (any::<usize>(), 1usize..40).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), 1usize..200).prop_map(|(at, n)| Edit::Duplicate(at, n)),
    ]
}

fn mutate(seed: &str, edits: &[Edit]) -> Vec<u8> {
    let mut b = seed.as_bytes().to_vec();
    for e in edits {
        let len = b.len().max(1);
        match *e {
            Edit::Flip(at, x) => {
                if !b.is_empty() {
                    let i = at % b.len();
                    b[i] ^= x;
                }
            }
            Edit::Insert(at, t) => {
                let i = at % (b.len() + 1);
                b.splice(i..i, TOKENS[t].bytes());
            }
            Edit::Delete(at, n) => {
                let i = at % len;
                let j = (i + n).min(b.len());
                if i < j {
                    b.drain(i..j);
                }
            }
            Edit::Duplicate(at, n) => {
                let i = at % len;
                let j = (i + n).min(b.len());
                if i < j {
                    let part = b[i..j].to_vec();
                    b.splice(j..j, part);
                }
            }
        }
    }
    b
}

fn parse_never_panics(text: &str) {
    // Either outcome is fine; the error, when there is one, must name the file.
    if let Err(e) = cd_common::spec::parse(text, "fuzz.yaml") {
        assert!(e.to_string().contains("fuzz.yaml"), "{e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text(text in "\\PC{0,400}") {
        parse_never_panics(&text);
    }

    #[test]
    fn mutated_valid_specs(seed in 0..SEEDS.len(), edits in prop::collection::vec(edit(), 1..12)) {
        let bytes = mutate(SEEDS[seed], &edits);
        parse_never_panics(&String::from_utf8_lossy(&bytes));
    }
}
