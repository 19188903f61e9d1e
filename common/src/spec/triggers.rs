//! The pipeline-level fields about how runs start and how many run at once: `repository`,
//! `trigger` (`git`, `webhook`, `schedule`), `concurrency` and `on_new_run`.
//!
//! ```yaml
//! repository: https://git.example.com/acme/app.git   # agents check out the run's revision
//! trigger:
//!   git: { branch: main, interval: 30s }             # repository defaults to `repository`
//!   webhook: { secret_env: APP_HOOK_SECRET }         # or secret_file: /etc/conveyor/app.secret
//!   schedule: { cron: "0 3 * * *" }                  # UTC; 6 fields = seconds first
//! concurrency: 1
//! on_new_run: supersede                              # queue (default) | supersede
//! ```

use super::convert::{Field, Fields, R};
use super::node::Kind;
use super::types::*;
use crate::duration::parse_duration_ms;
use crate::names::is_valid_env_name;

/// Shortest git poll interval accepted.
pub const MIN_POLL_INTERVAL_MS: u64 = 200;
/// Default git poll interval.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 60_000;
/// Largest `concurrency` accepted.
pub const MAX_CONCURRENCY: u32 = 1000;

const TRIGGER_FIELDS: &[&str] = &["git", "webhook", "schedule"];
const GIT_FIELDS: &[&str] = &["repository", "branch", "interval"];
const WEBHOOK_FIELDS: &[&str] = &["secret_env", "secret_file", "branch"];
const SCHEDULE_FIELDS: &[&str] = &["cron"];

/// Why a repository URL or path is unusable, or `None`. A leading `-` would be read by `git`
/// as an option, so it is refused outright.
fn repository_problem(s: &str) -> Option<String> {
    if s.trim().is_empty() {
        return Some("must not be empty".into());
    }
    if s.starts_with('-') {
        return Some(format!("`{s}` must not start with `-`"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!(
            "`{s}` must not contain spaces or control characters"
        ));
    }
    None
}

/// Why a branch name is unusable (git's `check-ref-format` rules that matter here).
fn branch_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.starts_with('-') || s.starts_with('/') || s.ends_with('/') || s.ends_with(".lock") {
        return Some(format!("`{s}` is not a valid branch name"));
    }
    if s.contains("..")
        || s.contains("@{")
        || s.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\')
        })
    {
        return Some(format!("`{s}` is not a valid branch name"));
    }
    None
}

pub(crate) fn repository(field: &Field) -> R<String> {
    let s = field.string()?;
    match repository_problem(s) {
        Some(p) => Err(field.fail(p)),
        None => Ok(s.to_string()),
    }
}

fn branch(field: &Field) -> R<String> {
    let s = field.string()?;
    match branch_problem(s) {
        Some(p) => Err(field.fail(p)),
        None => Ok(s.to_string()),
    }
}

pub(crate) fn concurrency(field: &Field) -> R<u32> {
    let n = field.whole(MAX_CONCURRENCY)?;
    if n == 0 {
        return Err(field.fail("must be at least 1"));
    }
    Ok(n)
}

/// `trigger:`; `repository` is the pipeline's own, the git trigger's default.
pub(crate) fn trigger(field: &Field, repository: Option<&str>) -> R<TriggerSpec> {
    let fields = Fields::new(field.value, &field.path, TRIGGER_FIELDS)?;
    let git = match fields.get("git") {
        Some(f) => Some(git(&f, repository)?),
        None => None,
    };
    let webhook = match fields.get("webhook") {
        Some(f) => Some(webhook(&f)?),
        None => None,
    };
    let schedule = match fields.get("schedule") {
        Some(f) => Some(schedule(&f)?),
        None => None,
    };
    Ok(TriggerSpec {
        git,
        webhook,
        schedule,
    })
}

fn git(field: &Field, default_repo: Option<&str>) -> R<GitTrigger> {
    let fields = Fields::new(field.value, &field.path, GIT_FIELDS)?;
    let repository = match (fields.get("repository"), default_repo) {
        (Some(f), _) => repository(&f)?,
        (None, Some(r)) => r.to_string(),
        (None, None) => {
            return Err(super::convert::fail(
                field.at(),
                &super::convert::join(&field.path, "repository"),
                "missing required field (or set the pipeline's `repository`)",
            ));
        }
    };
    let branch = match fields.get("branch") {
        Some(f) => branch(&f)?,
        None => "main".to_string(),
    };
    let interval_ms = match fields.get("interval") {
        Some(f) => {
            let Kind::Str(text) = &f.value.kind else {
                return Err(f.expected("a duration such as `30s` or `5m`"));
            };
            let ms = parse_duration_ms(text).map_err(|m| f.fail(m))?;
            if ms < MIN_POLL_INTERVAL_MS {
                return Err(f.fail(format!(
                    "must be at least {MIN_POLL_INTERVAL_MS}ms, found {ms}ms"
                )));
            }
            ms
        }
        None => DEFAULT_POLL_INTERVAL_MS,
    };
    Ok(GitTrigger {
        repository,
        branch,
        interval_ms,
    })
}

fn webhook(field: &Field) -> R<WebhookTrigger> {
    let fields = Fields::new(field.value, &field.path, WEBHOOK_FIELDS)?;
    let secret_env = match fields.get("secret_env") {
        Some(f) => {
            let s = f.string()?;
            if !is_valid_env_name(s) {
                return Err(f.fail(format!(
                    "`{s}` is not a valid environment variable name (use letters, digits and \
                     `_`, not starting with a digit)"
                )));
            }
            Some(s.to_string())
        }
        None => None,
    };
    let secret_file = match fields.get("secret_file") {
        Some(f) => {
            let s = f.string()?;
            if !s.starts_with('/') {
                return Err(f.fail(format!("`{s}` must be an absolute path on the coordinator")));
            }
            Some(s.to_string())
        }
        None => None,
    };
    match (&secret_env, &secret_file) {
        (None, None) => {
            return Err(super::convert::fail(
                field.at(),
                &field.path,
                "set `secret_env` or `secret_file` (the secret itself never goes in the \
                 pipeline file)",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(super::convert::fail(
                field.at(),
                &field.path,
                "set only one of `secret_env` and `secret_file`",
            ));
        }
        _ => {}
    }
    let branch = fields.get("branch").map(|f| branch(&f)).transpose()?;
    Ok(WebhookTrigger {
        secret_env,
        secret_file,
        branch,
    })
}

fn schedule(field: &Field) -> R<ScheduleTrigger> {
    let fields = Fields::new(field.value, &field.path, SCHEDULE_FIELDS)?;
    let f = fields.require("cron")?;
    let expr = f.string()?;
    parse_cron(expr).map_err(|m| f.fail(m))?;
    Ok(ScheduleTrigger {
        cron: expr.to_string(),
    })
}

/// Parses a cron expression: 5 fields (minute first) or 6 (seconds first); `@daily` and
/// friends too.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| {
            format!(
                "invalid cron expression `{expr}`: {e} (5 fields: minute hour day-of-month \
                 month day-of-week, or 6 with seconds first; times in UTC)"
            )
        })
}

/// The latest time (ms, UTC) at or before `now_ms` the expression fires, if it is later than
/// `after_ms`. Missed firings collapse into this one, so a coordinator that was down for a day
/// starts one run, not hundreds.
pub fn next_fire_ms(cron: &croner::Cron, after_ms: i64, now_ms: i64) -> Option<i64> {
    let now = chrono::DateTime::from_timestamp_millis(now_ms)?;
    let prev = cron.find_previous_occurrence(&now, true).ok()?;
    let ms = prev.timestamp_millis();
    (ms > after_ms).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_second_fires_once_per_second() {
        let c = parse_cron("* * * * * *").unwrap();
        assert_eq!(next_fire_ms(&c, 1_000, 1_500), None);
        assert_eq!(next_fire_ms(&c, 1_000, 2_100), Some(2_000));
        // A long outage collapses into the latest firing.
        assert_eq!(next_fire_ms(&c, 1_000, 60_400), Some(60_000));
    }

    #[test]
    fn five_fields_are_minutes() {
        let c = parse_cron("*/5 * * * *").unwrap();
        assert_eq!(next_fire_ms(&c, 0, 299_999), None);
        assert_eq!(next_fire_ms(&c, 0, 300_001), Some(300_000));
        assert!(parse_cron("61 * * * *").is_err());
    }
}
