//! Reliability and delivery figures of one environment over a window `[since, now]`, computed
//! from replicated history (deployments, incidents, runs). Pure: the caller passes `now` (the
//! server's clock), so every node computes the same figures from the same state.
//!
//! Definitions (README "Incidents and metrics" says the same for users):
//! - failures: incidents of the environment opened in the window;
//! - recovery time of one: resolved - opened, or now - opened while it is still open;
//! - operating time: from `since`, or from the environment's first successful deployment if
//!   that is later, to now;
//! - MTTR = total recovery time / failures; MTBF = (operating time - total recovery time) /
//!   failures (the classic definitions; none without failures);
//! - deployment frequency: successful release deployments finished in the window, per day of
//!   operating time (rollbacks are not counted as deployments of a change);
//! - lead time for changes: deployment finished - the run's commit time, or the run's creation
//!   time when the commit time is unknown (counted in `lead_time_from_created`); median and mean;
//! - change failure rate: release deployments finished in the window that failed, were rolled
//!   back, or are the deployment an incident opened against / all release deployments finished
//!   in the window;
//! - time to restore service: median recovery time of the incidents opened in the window and
//!   already resolved.

use serde::Serialize;

use super::{DeploymentStatus, RunKind, State};

const DAY_MS: f64 = 86_400_000.0;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub environment: String,
    pub since_ms: i64,
    pub now_ms: i64,
    /// Where operating time starts: `since`, or the first successful deployment if later
    /// (`now` when the environment never had one).
    pub operating_since_ms: i64,
    pub operating_ms: i64,
    pub failures: u64,
    /// Of those, the ones still open at `now`.
    pub open_incidents: u64,
    pub recovery_ms: i64,
    pub mttr_ms: Option<f64>,
    pub mtbf_ms: Option<f64>,
    pub deployments: u64,
    pub deployments_per_day: Option<f64>,
    pub lead_time_median_ms: Option<f64>,
    pub lead_time_mean_ms: Option<f64>,
    pub lead_time_samples: u64,
    /// Lead-time samples measured from the run's creation (commit time unknown).
    pub lead_time_from_created: u64,
    pub change_deployments: u64,
    pub failed_changes: u64,
    pub change_failure_rate: Option<f64>,
    pub restore_median_ms: Option<f64>,
    pub restored: u64,
}

/// The figures of `env` over `[since_ms, now_ms]`.
pub fn compute(state: &State, env: &str, since_ms: i64, now_ms: i64) -> Figures {
    let since_ms = since_ms.min(now_ms);
    let in_window = |t: i64| t >= since_ms && t <= now_ms;
    let operating_since_ms = state
        .deployments
        .iter()
        .filter(|d| d.environment == env && d.status != DeploymentStatus::Failed)
        .map(|d| d.finished_ms)
        .min()
        .filter(|t| *t <= now_ms)
        .map_or(now_ms, |first| first.max(since_ms));
    let operating_ms = now_ms - operating_since_ms;

    let incidents: Vec<_> = state
        .incidents
        .iter()
        .filter(|i| i.environment == env && in_window(i.opened_ms))
        .collect();
    let recovery = |i: &super::Incident| {
        let end = if i.is_open() || i.resolved_ms > now_ms {
            now_ms
        } else {
            i.resolved_ms
        };
        end - i.opened_ms
    };
    let failures = incidents.len() as u64;
    let recovery_ms: i64 = incidents.iter().map(|i| recovery(i)).sum();
    let per_failure = |total: i64| (failures > 0).then(|| total as f64 / failures as f64);
    let mut restores: Vec<f64> = incidents
        .iter()
        .filter(|i| !i.is_open() && i.resolved_ms <= now_ms)
        .map(|i| recovery(i) as f64)
        .collect();

    let releases: Vec<_> = state
        .deployments
        .iter()
        .filter(|d| d.environment == env && d.kind == RunKind::Release && in_window(d.finished_ms))
        .collect();
    let succeeded: Vec<_> = releases
        .iter()
        .filter(|d| d.status != DeploymentStatus::Failed)
        .collect();
    let mut from_created = 0;
    let mut leads: Vec<f64> = succeeded
        .iter()
        .filter_map(|d| {
            let run = state.runs.get(&d.run_id)?;
            let start = if run.commit_at_ms > 0 {
                run.commit_at_ms
            } else {
                from_created += 1;
                run.created_ms
            };
            Some((d.finished_ms - start) as f64)
        })
        .collect();
    let failed_changes = releases
        .iter()
        .filter(|d| {
            matches!(
                d.status,
                DeploymentStatus::Failed | DeploymentStatus::RolledBack
            ) || state.incidents.iter().any(|i| i.deployment == d.id)
        })
        .count() as u64;

    Figures {
        environment: env.to_string(),
        since_ms,
        now_ms,
        operating_since_ms,
        operating_ms,
        failures,
        open_incidents: incidents
            .iter()
            .filter(|i| i.is_open() || i.resolved_ms > now_ms)
            .count() as u64,
        recovery_ms,
        mttr_ms: per_failure(recovery_ms),
        mtbf_ms: per_failure(operating_ms - recovery_ms),
        deployments: succeeded.len() as u64,
        deployments_per_day: (operating_ms > 0)
            .then(|| succeeded.len() as f64 / (operating_ms as f64 / DAY_MS)),
        lead_time_median_ms: median(&mut leads),
        lead_time_mean_ms: (!leads.is_empty())
            .then(|| leads.iter().sum::<f64>() / leads.len() as f64),
        lead_time_samples: leads.len() as u64,
        lead_time_from_created: from_created,
        change_deployments: releases.len() as u64,
        failed_changes,
        change_failure_rate: (!releases.is_empty())
            .then(|| failed_changes as f64 / releases.len() as f64),
        restore_median_ms: median(&mut restores),
        restored: restores.len() as u64,
    }
}

/// The middle value (mean of the two middle ones for an even count); `None` when empty.
fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
