//! Secrets as every crate sees them: the name and size rules (shared by the spec, the
//! coordinator and `cdctl`, so a name accepted in one place is accepted everywhere), and the
//! masking that replaces a secret's value with [`MASK`] in stage output. Encryption lives in the
//! coordinator, the only holder of the key.

/// Longest secret name accepted.
pub const MAX_NAME_LEN: usize = 128;
/// Largest secret value accepted, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// What a secret's value is replaced with in logs and result messages.
pub const MASK: &[u8] = b"***";

/// Explains why `name` is not a valid secret name (`[A-Z_][A-Z0-9_]*`, at most
/// [`MAX_NAME_LEN`] bytes: it becomes an environment variable), or `None` if it is.
pub fn name_problem(name: &str) -> Option<String> {
    let mut bytes = name.bytes();
    let first_ok = matches!(bytes.next(), Some(b) if b.is_ascii_uppercase() || b == b'_');
    if name.is_empty() {
        Some("a secret name must not be empty".into())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "secret name is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        ))
    } else if !first_ok || !bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        Some(format!(
            "`{name}` is not a valid secret name (use A-Z, 0-9 and `_`, not starting with a digit)"
        ))
    } else {
        None
    }
}

/// Explains why `value` cannot be stored as a secret (empty, over [`MAX_VALUE_LEN`], or not
/// something an environment variable can hold: UTF-8 text without NUL bytes).
pub fn value_problem(value: &[u8]) -> Option<String> {
    if value.is_empty() {
        Some("a secret value must not be empty".into())
    } else if value.len() > MAX_VALUE_LEN {
        Some(format!(
            "{} bytes exceeds the limit of {MAX_VALUE_LEN} bytes",
            value.len()
        ))
    } else if std::str::from_utf8(value).is_err() {
        Some("must be UTF-8 text (it becomes an environment variable)".into())
    } else if value.contains(&0) {
        Some("must not contain a NUL byte (it becomes an environment variable)".into())
    } else {
        None
    }
}

/// Replaces every occurrence of any of `values` in `data` with [`MASK`]; overlapping or
/// adjacent occurrences become one mask, so no byte of any occurrence survives. `None` when
/// nothing matched (the caller keeps its bytes as they are).
pub fn mask(data: &[u8], values: &[Vec<u8>]) -> Option<Vec<u8>> {
    let mut masker = Masker::new(values.to_vec());
    let mut out = masker.push(data);
    out.extend(masker.finish());
    (out != data).then_some(out)
}

/// Where `values` occur in `data`: maximal runs covered by occurrences (overlapping or touching
/// ones joined), in order. [`mask`] replaces each run with [`MASK`]; a caller that must keep
/// piece boundaries (the leader, masking across the chunks of one request) maps them itself.
pub fn covered(data: &[u8], values: &[Vec<u8>]) -> Vec<std::ops::Range<usize>> {
    let m = Masker::new(values.to_vec());
    let mut out = Vec::new();
    if m.is_empty() {
        return out;
    }
    let mut i = 0;
    while i < data.len() {
        match m.match_at(data, i) {
            Some(end) => {
                let end = m.chain_end(data, i, end);
                out.push(i..end);
                i = end;
            }
            None => {
                // On to the next byte a value could start at.
                i = data[i + 1..]
                    .iter()
                    .position(|b| m.starts[usize::from(*b)])
                    .map_or(data.len(), |p| i + 1 + p);
            }
        }
    }
    out
}

/// Bytes a masker holds back at most while a chain of overlapping occurrences goes on.
const MAX_HELD: usize = 64 * 1024;

/// Masks a stream that arrives in pieces: a value split across two pieces is still found,
/// because the last `longest value - 1` bytes (or a chain of overlapping occurrences still
/// open, up to 64 KiB) are held back until more output comes or [`Masker::finish`] is
/// called. Cut anywhere, a stream comes out exactly as [`mask`] of the whole.
pub struct Masker {
    values: Vec<Vec<u8>>,
    longest: usize,
    /// Bytes some value starts with: every other byte is copied without comparing values.
    starts: [bool; 256],
    held: Vec<u8>,
}

/// Values are secret: show only how many there are.
impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("values", &self.values.len())
            .field("held", &self.held.len())
            .finish()
    }
}

impl Masker {
    /// A masker for `values`; empty values are ignored (they would match everywhere).
    pub fn new(values: Vec<Vec<u8>>) -> Self {
        let values: Vec<Vec<u8>> = values.into_iter().filter(|v| !v.is_empty()).collect();
        let longest = values.iter().map(Vec::len).max().unwrap_or(0);
        let mut starts = [false; 256];
        for v in &values {
            starts[usize::from(v[0])] = true;
        }
        Masker {
            values,
            longest,
            starts,
            held: Vec::new(),
        }
    }

    /// Whether there is anything to mask at all.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Takes the next piece; returns the masked bytes that can be shipped now.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.values.is_empty() {
            return data.to_vec();
        }
        self.held.extend_from_slice(data);
        self.drain(false)
    }

    /// Returns what is still held back, masked (the end of the stream).
    pub fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    /// End of the longest occurrence of a value starting at `i` that lies wholly in `buf`.
    fn match_at(&self, buf: &[u8], i: usize) -> Option<usize> {
        if !self.starts[usize::from(buf[i])] {
            return None;
        }
        self.values
            .iter()
            .filter(|v| buf[i..].starts_with(v))
            .map(|v| i + v.len())
            .max()
    }

    /// The end of the run of occurrences that overlap or touch the one at `i..end`.
    fn chain_end(&self, buf: &[u8], i: usize, mut end: usize) -> usize {
        let mut j = i + 1;
        while j <= end && j < buf.len() {
            if let Some(e) = self.match_at(buf, j) {
                end = end.max(e);
            }
            j += 1;
        }
        end
    }

    fn drain(&mut self, all: bool) -> Vec<u8> {
        let buf = std::mem::take(&mut self.held);
        // Any occurrence starting before `safe` fits wholly in `buf`, so bytes before it are
        // decided; from `safe` on, an occurrence may continue in the next piece.
        let safe = if all {
            buf.len()
        } else {
            buf.len().saturating_sub(self.longest.saturating_sub(1))
        };
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i < safe {
            match self.match_at(&buf, i) {
                Some(end) => {
                    let end = self.chain_end(&buf, i, end);
                    // An occurrence could still start at `end` and overlap the next piece:
                    // wait for it (so a split stream masks exactly as a whole one), unless
                    // an endless chain of overlaps has made the held bytes too many.
                    if !all && end + self.longest > buf.len() && buf.len() - i < MAX_HELD {
                        break;
                    }
                    out.extend_from_slice(MASK);
                    i = end;
                }
                None => {
                    // Copy up to the next byte a value could start at.
                    let next = buf[i + 1..safe]
                        .iter()
                        .position(|b| self.starts[usize::from(*b)])
                        .map_or(safe, |p| i + 1 + p);
                    out.extend_from_slice(&buf[i..next]);
                    i = next;
                }
            }
        }
        self.held = buf[i..].to_vec();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn stream(values: &[&str], pieces: &[&str]) -> String {
        let mut m = Masker::new(vals(values));
        let mut out = Vec::new();
        for p in pieces {
            out.extend(m.push(p.as_bytes()));
        }
        out.extend(m.finish());
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn names_follow_env_var_rules() {
        for ok in ["TOKEN", "_X", "A1_B2", &"A".repeat(MAX_NAME_LEN)] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "token",
            "1A",
            "A-B",
            "A B",
            "ÄB",
            &"A".repeat(MAX_NAME_LEN + 1),
        ] {
            let p = name_problem(bad);
            assert!(p.is_some(), "{bad:?} accepted");
        }
        assert!(
            name_problem("a")
                .unwrap_or_default()
                .contains("not a valid secret name")
        );
        assert_eq!(value_problem(b"x"), None);
        assert!(value_problem(b"").is_some());
        assert!(value_problem(b"\xff\xfe").is_some());
        assert!(value_problem(b"a\0b").is_some());
        assert!(
            value_problem(&vec![b'x'; MAX_VALUE_LEN + 1])
                .unwrap_or_default()
                .contains("65536")
        );
    }

    #[test]
    fn whole_occurrences_are_masked() {
        let out = mask(b"token=hunter2 again hunter2\n", &vals(&["hunter2"]));
        assert_eq!(out.as_deref(), Some(&b"token=*** again ***\n"[..]));
        assert_eq!(mask(b"nothing here", &vals(&["hunter2"])), None);
        assert_eq!(mask(b"anything", &[]), None);
        assert_eq!(
            mask(b"anything", &vals(&[""])),
            None,
            "empty values ignored"
        );
    }

    #[test]
    fn a_value_split_across_pieces_is_masked() {
        assert_eq!(
            stream(&["hunter2"], &["pass: hun", "ter2 ok"]),
            "pass: *** ok"
        );
        // One byte per piece.
        let bytes: Vec<String> = "a hunter2 b".chars().map(String::from).collect();
        let pieces: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(stream(&["hunter2"], &pieces), "a *** b");
        // Split right at the end of the stream: finish decides it.
        assert_eq!(stream(&["hunter2"], &["x hunt", "er2"]), "x ***");
        // A prefix that never completes is shipped as is.
        assert_eq!(stream(&["hunter2"], &["x hunt", "ing"]), "x hunting");
    }

    #[test]
    fn held_back_bytes_are_bounded_by_the_longest_value() {
        let mut m = Masker::new(vals(&["abcdef", "xy"]));
        let out = m.push(b"0123456789");
        assert_eq!(out, b"01234");
        assert_eq!(m.finish(), b"56789");
    }

    /// Throughput of the agent's masking (`cargo test -p cd-common --release --lib
    /// masking_throughput -- --ignored --nocapture`): 64 MiB of log text in 32 KiB writes
    /// with three 24-byte secrets, one occurrence per 4 KiB. Measured 2026-11-28: about
    /// 1,350 MiB/s release, 150 MiB/s debug.
    #[test]
    #[ignore]
    fn masking_throughput() {
        let values = vals(&[
            "AKIAIOSFODNN7EXAMPLE0001",
            "ghp_0123456789abcdefABCD",
            "s3cr3t-p4ssw0rd-xxxxxxxx",
        ]);
        let mut block =
            b"2026-11-28T15:00:00Z step 12 compiling crate foo v1.2.3 (/src/foo)\n".repeat(60);
        block.truncate(4096 - 24);
        block.extend_from_slice(&values[1]);
        let piece: Vec<u8> = block.repeat(8);
        let mut m = Masker::new(values);
        let total = 64 << 20;
        let started = std::time::Instant::now();
        let mut out = 0;
        for _ in 0..total / piece.len() {
            out += m.push(&piece).len();
        }
        out += m.finish().len();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "masked {} MiB in {secs:.3} s: {:.0} MiB/s ({out} bytes out)",
            total >> 20,
            (total >> 20) as f64 / secs
        );
        assert!(out < total);
    }

    proptest::proptest! {
        /// Wherever the stream is cut, the output is that of the whole stream, no value survives
        /// in it, and text without a value comes out unchanged. (Small alphabet: occurrences and
        /// overlaps are common.)
        #[test]
        fn no_value_survives_any_split(
            data in proptest::collection::vec(proptest::sample::select(b"abc".to_vec()), 0..120),
            values in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(b"abc".to_vec()), 1..5), 1..3),
            cuts in proptest::collection::vec(0usize..120, 0..8),
        ) {
            let mut cuts = cuts;
            cuts.push(data.len());
            cuts.sort_unstable();
            let mut m = Masker::new(values.clone());
            let mut out = Vec::new();
            let mut from = 0;
            for c in cuts {
                let c = c.min(data.len());
                if c > from {
                    out.extend(m.push(&data[from..c]));
                    from = c;
                }
            }
            out.extend(m.finish());
            for v in &values {
                proptest::prop_assert!(!out.windows(v.len()).any(|w| w == v.as_slice()),
                    "{:?} survives in {:?}", String::from_utf8_lossy(v), String::from_utf8_lossy(&out));
            }
            let whole = mask(&data, &values).unwrap_or_else(|| data.clone());
            let mut by_ranges = Vec::new();
            let mut at = 0;
            for r in covered(&data, &values) {
                by_ranges.extend_from_slice(&data[at..r.start]);
                by_ranges.extend_from_slice(MASK);
                at = r.end;
            }
            by_ranges.extend_from_slice(&data[at..]);
            proptest::prop_assert_eq!(&by_ranges, &whole, "covered() agrees with mask()");
            proptest::prop_assert_eq!(&out, &whole, "a split stream masks as the whole one");
            let has_value = values.iter().any(|v| data.windows(v.len()).any(|w| w == v.as_slice()));
            if !has_value {
                proptest::prop_assert_eq!(out, data);
            }
        }
    }

    #[test]
    fn overlapping_repeated_and_adjacent_occurrences_leave_nothing() {
        // Repeated, overlapping with itself.
        assert_eq!(stream(&["abab"], &["xabababy"]), "x***y");
        // Back to back.
        assert_eq!(stream(&["ab"], &["abababab"]), "***");
        // Two values overlapping each other, and one inside another.
        assert_eq!(stream(&["abc", "bcd"], &["-abcd-"]), "-***-");
        assert_eq!(
            stream(&["secret", "cre"], &["a secret cre b"]),
            "a *** *** b"
        );
        // Split across pieces while overlapping.
        assert_eq!(stream(&["abc", "bcd"], &["-ab", "cd-"]), "-***-");
    }
}
