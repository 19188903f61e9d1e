//! `cdctl incident open|resolve|list` and `cdctl metrics`: the feedback end of the loop
//! (incidents, MTTR, MTBF and DORA figures), printed as a table or JSON.

use cd_proto::v1::{
    GetMetricsRequest, Incident, ListIncidentsRequest, Metrics, OpenIncidentRequest,
    ResolveIncidentRequest,
};
use serde_json::{Value, json};

use super::Ctx;
use crate::cli::{IncidentCommand, MetricsArgs};
use crate::render::table::Table;
use crate::render::{duration_text, when};

pub async fn incident(ctx: &Ctx, cmd: IncidentCommand) -> anyhow::Result<()> {
    let mut conn = ctx.conn().await?;
    let now = cd_common::time::now_ms();
    match cmd {
        IncidentCommand::Open { env, reason } => {
            let req = OpenIncidentRequest {
                environment: env,
                reason,
            };
            let i = conn
                .call("incident open", async |mut c| {
                    c.open_incident(req.clone()).await
                })
                .await?;
            ctx.show(|| format!("{}\n", i.id), || incident_json(&i))
        }
        IncidentCommand::Resolve { id, note } => {
            let req = ResolveIncidentRequest {
                id,
                note: note.unwrap_or_default(),
            };
            let i = conn
                .call("incident resolve", async |mut c| {
                    c.resolve_incident(req.clone()).await
                })
                .await?;
            ctx.show(
                || incidents_table(std::slice::from_ref(&i), now),
                || incident_json(&i),
            )
        }
        IncidentCommand::List { env, open } => {
            let req = ListIncidentsRequest {
                environment: env.unwrap_or_default(),
                open_only: open,
            };
            let resp = conn
                .read("incident list", async |mut c| {
                    c.list_incidents(req.clone()).await
                })
                .await?;
            ctx.show(
                || incidents_table(&resp.incidents, now),
                || Value::Array(resp.incidents.iter().map(incident_json).collect()),
            )
        }
    }
}

pub async fn metrics(ctx: &Ctx, args: MetricsArgs) -> anyhow::Result<()> {
    let mut conn = ctx.conn().await?;
    let req = GetMetricsRequest {
        environment: args.env,
        window_ms: args.since,
    };
    let m = conn
        .read("metrics", async |mut c| c.get_metrics(req.clone()).await)
        .await?;
    ctx.show(|| metrics_text(&m), || metrics_json(&m))
}

fn incident_json(i: &Incident) -> Value {
    json!({
        "id": i.id,
        "environment": i.environment,
        "status": i.status,
        "opened_ms": i.opened_ms,
        "resolved_ms": i.resolved_ms,
        "reason": i.reason,
        "opened_by": i.opened_by,
        "deployment": i.deployment,
        "run_id": i.run_id,
        "stage": i.stage,
        "rollback_run": i.rollback_run,
        "resolved_by": i.resolved_by,
        "restored_by_deployment": i.restored_by_deployment,
        "note": i.note,
    })
}

fn incidents_table(items: &[Incident], now: i64) -> String {
    let mut t = Table::new(&[
        "ID",
        "ENV",
        "STATUS",
        "OPENED",
        "DURATION",
        "OPENED BY",
        "CAUSE",
        "RESOLVED BY",
        "REASON",
    ]);
    for i in items {
        let end = if i.resolved_ms > 0 {
            i.resolved_ms
        } else {
            now
        };
        let cause = match (i.deployment, i.run_id.as_str()) {
            (0, _) => "-".to_string(),
            (d, "") => format!("deployment {d}"),
            (d, run) => format!("deployment {d} ({run}/{})", i.stage),
        };
        t.row(vec![
            i.id.to_string(),
            i.environment.clone(),
            i.status.clone(),
            when(i.opened_ms, now),
            duration_text((end - i.opened_ms).max(0) as u64),
            i.opened_by.clone(),
            cause,
            dash(&i.resolved_by),
            i.reason.clone(),
        ]);
    }
    t.render()
}

/// `1 failure`, `2 failures`.
fn count(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

/// Milliseconds (possibly fractional) as compact text, rounded to the millisecond.
fn ms_text(ms: f64) -> String {
    duration_text(ms.max(0.0).round() as u64)
}

fn metrics_text(m: &Metrics) -> String {
    let window = if m.since_ms == 0 {
        "all history".to_string()
    } else {
        format!("since {}", when(m.since_ms, m.now_ms))
    };
    let failures = m.failures;
    let mut rows: Vec<(&str, String)> = vec![
        (
            "operating time",
            format!(
                "{} (since {})",
                duration_text(m.operating_ms.max(0) as u64),
                when(m.operating_since_ms, m.now_ms)
            ),
        ),
        (
            "failures",
            format!(
                "{} ({} open)",
                count(failures, "incident"),
                m.open_incidents
            ),
        ),
        (
            "MTTR",
            m.mttr_ms.map_or("- (no failures)".into(), |v| {
                format!(
                    "{} (recovery {} / {})",
                    ms_text(v),
                    duration_text(m.recovery_ms.max(0) as u64),
                    count(failures, "failure")
                )
            }),
        ),
        (
            "MTBF",
            m.mtbf_ms.map_or("- (no failures)".into(), |v| {
                format!(
                    "{} ((operating {} - recovery {}) / {})",
                    ms_text(v),
                    duration_text(m.operating_ms.max(0) as u64),
                    duration_text(m.recovery_ms.max(0) as u64),
                    count(failures, "failure")
                )
            }),
        ),
        (
            "deployment frequency",
            m.deployments_per_day.map_or("-".into(), |v| {
                format!("{v:.2} per day ({})", count(m.deployments, "deployment"))
            }),
        ),
        (
            "lead time for changes",
            match (m.lead_time_median_ms, m.lead_time_mean_ms) {
                (Some(median), Some(mean)) => {
                    let mut text = format!(
                        "median {}, mean {} ({}",
                        ms_text(median),
                        ms_text(mean),
                        count(m.lead_time_samples, "deployment")
                    );
                    if m.lead_time_from_created > 0 {
                        text.push_str(&format!(
                            "; {} measured from run creation: commit time unknown",
                            m.lead_time_from_created
                        ));
                    }
                    text.push(')');
                    text
                }
                _ => "- (no deployments)".into(),
            },
        ),
        (
            "change failure rate",
            m.change_failure_rate
                .map_or("- (no deployments)".into(), |v| {
                    format!(
                        "{:.1}% ({} of {} deployments)",
                        v * 100.0,
                        m.failed_changes,
                        m.change_deployments
                    )
                }),
        ),
        (
            "time to restore service",
            m.restore_median_ms
                .map_or("- (no resolved incidents)".into(), |v| {
                    format!(
                        "median {} ({} resolved)",
                        ms_text(v),
                        count(m.restored, "incident")
                    )
                }),
        ),
    ];
    let mut out = format!("{} ({window})\n", m.environment);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows.drain(..) {
        out.push_str(&format!("  {k:<width$}  {v}\n"));
    }
    out
}

fn metrics_json(m: &Metrics) -> Value {
    json!({
        "environment": m.environment,
        "since_ms": m.since_ms,
        "now_ms": m.now_ms,
        "operating_since_ms": m.operating_since_ms,
        "operating_ms": m.operating_ms,
        "failures": m.failures,
        "open_incidents": m.open_incidents,
        "recovery_ms": m.recovery_ms,
        "mttr_ms": m.mttr_ms,
        "mtbf_ms": m.mtbf_ms,
        "dora": {
            "deployments": m.deployments,
            "deployment_frequency_per_day": m.deployments_per_day,
            "lead_time_median_ms": m.lead_time_median_ms,
            "lead_time_mean_ms": m.lead_time_mean_ms,
            "lead_time_samples": m.lead_time_samples,
            "lead_time_from_run_created": m.lead_time_from_created,
            "change_deployments": m.change_deployments,
            "failed_changes": m.failed_changes,
            "change_failure_rate": m.change_failure_rate,
            "time_to_restore_median_ms": m.restore_median_ms,
            "restored_incidents": m.restored,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_shows_the_formulas_inputs() {
        let m = Metrics {
            environment: "production".into(),
            since_ms: 0,
            now_ms: 50_000_000,
            operating_since_ms: 5_000_000,
            operating_ms: 45_000_000,
            failures: 3,
            open_incidents: 1,
            recovery_ms: 18_000_000,
            mttr_ms: Some(6_000_000.0),
            mtbf_ms: Some(9_000_000.0),
            deployments: 3,
            deployments_per_day: Some(5.76),
            lead_time_median_ms: Some(4_000_000.0),
            lead_time_mean_ms: Some(10_000_000.0 / 3.0),
            lead_time_samples: 3,
            lead_time_from_created: 1,
            change_deployments: 3,
            failed_changes: 2,
            change_failure_rate: Some(2.0 / 3.0),
            restore_median_ms: Some(4_000_000.0),
            restored: 2,
        };
        let text = metrics_text(&m);
        assert!(text.starts_with("production (all history)\n"), "{text}");
        assert!(
            text.contains("MTTR                     1h40m (recovery 5h / 3 failures)"),
            "{text}"
        );
        assert!(
            text.contains(
                "MTBF                     2h30m ((operating 12h30m - recovery 5h) / 3 failures)"
            ),
            "{text}"
        );
        assert!(text.contains("5.76 per day (3 deployments)"), "{text}");
        assert!(
            text.contains("1 measured from run creation: commit time unknown"),
            "{text}"
        );
        assert!(text.contains("66.7% (2 of 3 deployments)"), "{text}");
        let j = metrics_json(&m);
        assert_eq!(j["mttr_ms"], 6_000_000.0);
        assert_eq!(j["dora"]["change_failure_rate"], 2.0 / 3.0);
    }

    #[test]
    fn incident_rows_show_cause_duration_and_resolver() {
        let i = Incident {
            id: 1,
            environment: "production".into(),
            opened_ms: 1_000,
            resolved_ms: 91_000,
            reason: "stage monitor failed".into(),
            opened_by: "monitor".into(),
            deployment: 2,
            run_id: "svc-2".into(),
            stage: "monitor".into(),
            rollback_run: "svc-3".into(),
            status: "rollback".into(),
            resolved_by: "svc-3".into(),
            restored_by_deployment: 3,
            note: String::new(),
        };
        let open = Incident {
            id: 2,
            resolved_ms: 0,
            status: "open".into(),
            deployment: 3,
            run_id: String::new(),
            resolved_by: String::new(),
            ..i.clone()
        };
        let text = incidents_table(&[i.clone(), open], 31_000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID  ENV"), "{text}");
        assert!(
            lines[1].contains("rollback") && lines[1].contains("1m30s"),
            "{text}"
        );
        assert!(lines[1].contains("deployment 2 (svc-2/monitor)"), "{text}");
        assert!(
            lines[2].contains("open") && lines[2].contains("30s"),
            "{text}"
        );
        assert!(lines[2].contains("deployment 3  "), "{text}");
        assert_eq!(incident_json(&i)["restored_by_deployment"], 3);
    }

    #[test]
    fn since_takes_a_duration_or_all() {
        assert_eq!(crate::cli::parse_window("30d"), Ok(30 * 86_400_000));
        assert_eq!(crate::cli::parse_window("all"), Ok(0));
        assert!(crate::cli::parse_window("0s").is_err());
        assert!(crate::cli::parse_window("soon").is_err());
    }
}
