//! Human durations as in pipeline files: `500ms`, `45s`, `20m`, `1h30m`.
//!
//! A duration is one or more `<digits><unit>` parts with units `d`, `h`, `m`, `s`, `ms` in
//! that order, each at most once (`1h30m`, not `30m1h`). Parsing is strict so a typo is an
//! error rather than a surprising timeout.

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a duration into milliseconds. The error names the bad text.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid duration `{text}`: {why}");
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("it is empty (write e.g. `30s`, `20m` or `1h30m`)"));
    }
    if s.starts_with('-') {
        return Err(bad("it must not be negative"));
    }
    let mut rest = s;
    let mut total: u64 = 0;
    // Index into UNITS of the smallest unit used so far; later parts must be smaller.
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("expected a number before each unit"));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(match after.chars().next() {
                None => bad("a number needs a unit (ms, s, m, h or d), e.g. `30s`"),
                Some(c) => bad(&format!("unexpected `{c}`")),
            });
        }
        let Some(u) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(bad(&format!(
                "unknown unit `{unit}` (use ms, s, m, h or d)"
            )));
        };
        if last_unit.is_some_and(|last| u <= last) {
            return Err(bad("units must go from largest to smallest, each once"));
        }
        last_unit = Some(u);
        let too_long = || bad("it is too long");
        let n: u64 = number.parse().map_err(|_| too_long())?;
        let part = n.checked_mul(UNITS[u].1).ok_or_else(too_long)?;
        total = total.checked_add(part).ok_or_else(too_long)?;
        rest = after;
    }
    Ok(total)
}

/// Formats milliseconds compactly (`1h30m`, `45s`, `250ms`, `0s`); `parse_duration_ms` reads
/// the result back to the same value.
pub fn format_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (name, size) in UNITS {
        let n = rest / size;
        rest %= size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses() {
        for (text, ms) in [
            ("500ms", 500),
            ("45s", 45_000),
            ("20m", 1_200_000),
            ("1h30m", 5_400_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("1d2h3m4s5ms", 93_784_005),
            ("0s", 0),
            (" 5s ", 5_000),
        ] {
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
        }
    }

    #[test]
    fn rejects_with_the_text() {
        for (text, message) in [
            (
                "",
                "invalid duration ``: it is empty (write e.g. `30s`, `20m` or `1h30m`)",
            ),
            (
                "20",
                "invalid duration `20`: a number needs a unit (ms, s, m, h or d), e.g. `30s`",
            ),
            ("-5m", "invalid duration `-5m`: it must not be negative"),
            (
                "5x",
                "invalid duration `5x`: unknown unit `x` (use ms, s, m, h or d)",
            ),
            ("5 m", "invalid duration `5 m`: unexpected ` `"),
            (
                "m",
                "invalid duration `m`: expected a number before each unit",
            ),
            ("1.5h", "invalid duration `1.5h`: unexpected `.`"),
            (
                "30m1h",
                "invalid duration `30m1h`: units must go from largest to smallest, each once",
            ),
            (
                "1m1m",
                "invalid duration `1m1m`: units must go from largest to smallest, each once",
            ),
            (
                "213503982335d",
                "invalid duration `213503982335d`: it is too long",
            ),
            (
                "99999999999999999999ms",
                "invalid duration `99999999999999999999ms`: it is too long",
            ),
        ] {
            assert_eq!(parse_duration_ms(text), Err(message.to_string()), "{text}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_ms(0), "0s");
        assert_eq!(format_ms(250), "250ms");
        assert_eq!(format_ms(45_000), "45s");
        assert_eq!(format_ms(5_400_000), "1h30m");
        assert_eq!(format_ms(86_400_000), "1d");
        assert_eq!(format_ms(93_784_005), "1d2h3m4s5ms");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(ms in any::<u64>()) {
            prop_assert_eq!(parse_duration_ms(&format_ms(ms)), Ok(ms));
        }

        #[test]
        fn small_values_round_trip(ms in 0u64..10_000_000) {
            prop_assert_eq!(parse_duration_ms(&format_ms(ms)), Ok(ms));
        }

        #[test]
        fn never_panics(text in ".{0,24}") {
            let _ = parse_duration_ms(&text);
        }
    }
}
