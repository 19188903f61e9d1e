//! Turning proto messages into output: [`table`] for people, [`json`] for scripts. Each
//! message type is converted in one place in each; this module holds what both share: enum
//! names, time and duration text, and which attempt of a stage is current.

pub mod json;
pub mod table;

use cd_proto::v1::{Attempt, RunState, Stage, StageState};
use time::{OffsetDateTime, UtcOffset};

/// A stage state as a lowercase name without the prefix (`awaiting_approval`).
pub fn stage_state_name(value: i32) -> &'static str {
    match StageState::try_from(value) {
        Ok(StageState::Unspecified) => "unspecified",
        Ok(StageState::Pending) => "pending",
        Ok(StageState::Queued) => "queued",
        Ok(StageState::Assigned) => "assigned",
        Ok(StageState::Running) => "running",
        Ok(StageState::Succeeded) => "succeeded",
        Ok(StageState::Failed) => "failed",
        Ok(StageState::Cancelled) => "cancelled",
        Ok(StageState::AwaitingApproval) => "awaiting_approval",
        Ok(StageState::GateFailed) => "gate_failed",
        Ok(StageState::Skipped) => "skipped",
        Err(_) => "unknown",
    }
}

/// A run state as a lowercase name without the prefix (`succeeded`).
/// The state shown for a run: `queued` while it waits under its pipeline's `concurrency`,
/// `superseded` when a newer run cancelled it.
pub fn run_state_label(r: &cd_proto::v1::Run) -> &'static str {
    if r.queued && r.state == RunState::Running as i32 {
        "queued"
    } else if !r.superseded_by.is_empty() {
        "superseded"
    } else {
        run_state_name(r.state)
    }
}

pub fn run_state_name(value: i32) -> &'static str {
    match RunState::try_from(value) {
        Ok(RunState::Unspecified) => "unspecified",
        Ok(RunState::Running) => "running",
        Ok(RunState::Succeeded) => "succeeded",
        Ok(RunState::Failed) => "failed",
        Ok(RunState::Cancelled) => "cancelled",
        Err(_) => "unknown",
    }
}

/// Whether a run state is final (the run will not change again).
pub fn run_is_final(value: i32) -> bool {
    matches!(
        RunState::try_from(value),
        Ok(RunState::Succeeded | RunState::Failed | RunState::Cancelled)
    )
}

/// Milliseconds as compact text (`1h30m`, `45s`).
pub fn duration_text(ms: u64) -> String {
    cd_common::duration::format_ms(ms)
}

fn local(ms: i64) -> Option<OffsetDateTime> {
    let utc = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let offset = UtcOffset::local_offset_at(utc).unwrap_or(UtcOffset::UTC);
    Some(utc.to_offset(offset))
}

/// A timestamp as local `HH:MM:SS`; `-` when unset (0).
pub fn clock(ms: i64) -> String {
    match local(ms).filter(|_| ms > 0) {
        Some(t) => format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()),
        None => "-".to_string(),
    }
}

/// A timestamp as local `HH:MM:SS` when it is on the same day as `now`, else
/// `YYYY-MM-DD HH:MM`; `-` when unset.
pub fn when(ms: i64, now: i64) -> String {
    match (local(ms).filter(|_| ms > 0), local(now)) {
        (Some(t), Some(today)) if t.date() == today.date() => clock(ms),
        (Some(t), _) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        (None, _) => "-".to_string(),
    }
}

/// How long ago a timestamp was, in whole seconds (`12s ago`, `just now`); `never` when unset.
pub fn ago(ms: i64, now: i64) -> String {
    if ms <= 0 {
        return "never".to_string();
    }
    let secs = (now - ms).max(0) / 1000;
    if secs == 0 {
        "just now".to_string()
    } else {
        format!("{} ago", duration_text(secs as u64 * 1000))
    }
}

/// The attempt a stage is on: the highest-numbered one.
pub fn current_attempt(stage: &Stage) -> Option<&Attempt> {
    stage.attempts.iter().max_by_key(|a| a.number)
}

/// How long an attempt ran: its reported duration, else finished - started, else (when
/// `ongoing`) until `now`.
pub fn attempt_duration_ms(attempt: &Attempt, ongoing: bool, now: i64) -> Option<u64> {
    if let Some(result) = &attempt.result
        && result.duration_ms > 0
    {
        return Some(result.duration_ms);
    }
    if attempt.started_ms <= 0 {
        return None;
    }
    let end = if attempt.finished_ms > 0 {
        attempt.finished_ms
    } else if ongoing {
        now
    } else {
        return None;
    };
    Some((end - attempt.started_ms).max(0) as u64)
}

/// Whether a stage is executing on an agent right now.
pub fn stage_is_active(state: i32) -> bool {
    matches!(
        StageState::try_from(state),
        Ok(StageState::Assigned | StageState::Running)
    )
}

/// A stage's current duration text, `-` when unknown.
pub fn stage_duration(stage: &Stage, now: i64) -> String {
    current_attempt(stage)
        .and_then(|a| attempt_duration_ms(a, stage_is_active(stage.state), now))
        .map(duration_text)
        .unwrap_or_else(|| "-".to_string())
}

/// Why a stage is where it is: its own reason, else why its current attempt ended.
pub fn stage_reason(stage: &Stage) -> &str {
    if !stage.reason.is_empty() {
        return &stage.reason;
    }
    current_attempt(stage).map_or("", |a| a.end_reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_are_lowercase_without_prefix() {
        assert_eq!(
            stage_state_name(StageState::AwaitingApproval as i32),
            "awaiting_approval"
        );
        assert_eq!(
            stage_state_name(StageState::GateFailed as i32),
            "gate_failed"
        );
        assert_eq!(stage_state_name(StageState::Pending as i32), "pending");
        assert_eq!(stage_state_name(99), "unknown");
        assert_eq!(run_state_name(RunState::Cancelled as i32), "cancelled");
        assert_eq!(run_state_name(RunState::Unspecified as i32), "unspecified");
        // Every defined value has a name of its own, matching the proto name.
        for v in 0..=10 {
            let proto = StageState::try_from(v).unwrap().as_str_name();
            assert_eq!(
                proto.trim_start_matches("STAGE_STATE_").to_lowercase(),
                stage_state_name(v)
            );
        }
        for v in 0..=4 {
            let proto = RunState::try_from(v).unwrap().as_str_name();
            assert_eq!(
                proto.trim_start_matches("RUN_STATE_").to_lowercase(),
                run_state_name(v)
            );
        }
    }

    #[test]
    fn final_run_states() {
        assert!(!run_is_final(RunState::Running as i32));
        assert!(!run_is_final(RunState::Unspecified as i32));
        assert!(run_is_final(RunState::Succeeded as i32));
        assert!(run_is_final(RunState::Failed as i32));
        assert!(run_is_final(RunState::Cancelled as i32));
    }

    #[test]
    fn clock_is_hh_mm_ss_and_dash_when_unset() {
        let text = clock(1_700_000_000_000);
        assert_eq!(text.len(), 8);
        assert_eq!(text.as_bytes()[2], b':');
        assert_eq!(clock(0), "-");
        assert_eq!(when(0, 1), "-");
        assert_eq!(when(1_700_000_000_000, 1_700_000_001_000), text);
        assert_eq!(when(1_600_000_000_000, 1_700_000_000_000).len(), 16);
    }

    #[test]
    fn attempt_duration_prefers_the_result() {
        let mut a = Attempt {
            number: 1,
            started_ms: 1_000,
            ..Default::default()
        };
        assert_eq!(attempt_duration_ms(&a, true, 5_000), Some(4_000));
        assert_eq!(attempt_duration_ms(&a, false, 5_000), None);
        a.finished_ms = 3_000;
        assert_eq!(attempt_duration_ms(&a, false, 5_000), Some(2_000));
        a.result = Some(cd_proto::v1::StageResult {
            duration_ms: 1_500,
            ..Default::default()
        });
        assert_eq!(attempt_duration_ms(&a, false, 5_000), Some(1_500));
    }
}
