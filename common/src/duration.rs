//! Human durations as in pipeline files: `500ms`, `45s`, `20m`, `1h30m`.

/// Parses a duration into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let _ = text;
    todo!("H1")
}

/// Formats milliseconds compactly (`1h30m`, `45s`, `250ms`).
pub fn format_ms(ms: u64) -> String {
    let _ = ms;
    todo!("H1")
}
