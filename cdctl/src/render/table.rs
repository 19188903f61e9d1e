//! Human output: aligned columns with a header row, a key/value block for one run, and the
//! one-line stage changes `run watch` prints. States are the lowercase names from
//! [`super::stage_state_name`], times local `HH:MM:SS` (or a date when not today), durations
//! via `format_ms`.

use std::fmt::Write as _;

use cd_proto::v1::{
    AgentInfo, Deployment, Environment, Pipeline, Run, Stage, StageResult, StageState,
};

use crate::cluster_view::{DigestRow, NodeRow};

use super::{
    ago, clock, current_attempt, duration_text, run_state_name, stage_duration, stage_reason,
    stage_state_name, when,
};

/// Columns padded to the widest cell, two spaces apart, no trailing blanks.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; line breaks inside a cell become spaces so rows stay one line.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| one_line(&c)).collect());
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn one_line(text: &str) -> String {
    if text.contains(['\n', '\r', '\t']) {
        text.split(['\n', '\r', '\t'])
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        text.to_string()
    }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

/// `pipeline apply`'s answer: `pipeline NAME version V (created|updated|unchanged)`.
pub fn applied(p: &Pipeline, changed: bool) -> String {
    let what = match (changed, p.version) {
        (false, _) => "unchanged",
        (true, 1) => "created",
        (true, _) => "updated",
    };
    format!("pipeline {} version {} ({what})\n", p.name, p.version)
}

/// `pipeline status`: one `key: value` line each.
pub fn pipeline_status(p: &Pipeline) -> String {
    let mut out = String::new();
    let triggers = if p.triggers.is_empty() {
        "- (cdctl run start only)".to_string()
    } else {
        p.triggers.join("; ")
    };
    let last_commit = if p.last_commit.is_empty() {
        "-".to_string()
    } else {
        format!("{} (run {})", p.last_commit, p.last_commit_run)
    };
    let fields = [
        ("pipeline", format!("{} v{}", p.name, p.version)),
        ("triggers", triggers),
        ("last commit", last_commit),
        (
            "last fire",
            if p.last_fire_ms > 0 {
                clock(p.last_fire_ms)
            } else {
                "-".to_string()
            },
        ),
        ("webhook refused (this node)", p.webhook_refused.to_string()),
        (
            "concurrency",
            if p.concurrency == 0 {
                "unlimited".to_string()
            } else {
                p.concurrency.to_string()
            },
        ),
        ("on_new_run", or_dash(&p.on_new_run)),
    ];
    for (key, value) in fields {
        let _ = writeln!(out, "{key}: {value}");
    }
    out
}

pub fn pipelines(items: &[Pipeline], now: i64) -> String {
    let mut t = Table::new(&["NAME", "VERSION", "STAGES", "CREATED", "FILE"]);
    for p in items {
        t.row(vec![
            p.name.clone(),
            p.version.to_string(),
            or_dash(&p.stage_names.join(",")),
            when(p.created_ms, now),
            or_dash(&p.file_name),
        ]);
    }
    t.render()
}

fn run_duration(r: &Run, now: i64) -> String {
    if r.created_ms <= 0 {
        return "-".to_string();
    }
    let end = if r.finished_ms > 0 {
        r.finished_ms
    } else if super::run_is_final(r.state) {
        return "-".to_string();
    } else {
        now
    };
    duration_text((end - r.created_ms).max(0) as u64)
}

pub fn runs(items: &[Run], now: i64) -> String {
    let mut t = Table::new(&[
        "ID", "PIPELINE", "VERSION", "REVISION", "KIND", "STATE", "CREATED", "DURATION",
    ]);
    for r in items {
        t.row(vec![
            r.id.clone(),
            r.pipeline.clone(),
            r.pipeline_version.to_string(),
            or_dash(&r.revision),
            or_dash(&r.kind),
            super::run_state_label(r).to_string(),
            when(r.created_ms, now),
            run_duration(r, now),
        ]);
    }
    t.render()
}

fn result_text(r: &StageResult) -> String {
    let mut parts = vec![format!("exit {}", r.exit_code)];
    if r.cancelled {
        parts.push("cancelled".to_string());
    }
    if let Some(t) = &r.tests {
        parts.push(format!(
            "tests {}/{} passed, {} failed, {} errors, {} skipped",
            t.passed, t.total, t.failed, t.errors, t.skipped
        ));
    }
    if !r.metrics.is_empty() {
        let mut metrics: Vec<_> = r.metrics.iter().collect();
        metrics.sort_by(|a, b| a.0.cmp(b.0));
        let metrics: Vec<String> = metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(format!("metrics {}", metrics.join(" ")));
    }
    if !r.errors.is_empty() {
        parts.push(format!("errors: {}", r.errors.join("; ")));
    }
    parts.join(", ")
}

/// `run show`: the run's fields, a stage table, then gates, approvals, results and earlier
/// attempts for the stages that have them.
pub fn run_detail(r: &Run, now: i64) -> String {
    let mut out = String::new();
    let mut params: Vec<_> = r.params.iter().collect();
    params.sort_by(|a, b| a.0.cmp(b.0));
    let params: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut fields = vec![
        ("run", r.id.clone()),
        (
            "pipeline",
            format!("{} v{}", r.pipeline, r.pipeline_version),
        ),
        ("revision", or_dash(&r.revision)),
        ("trigger", or_dash(&r.trigger)),
        ("kind", or_dash(&r.kind)),
        ("state", super::run_state_label(r).to_string()),
        ("created", when(r.created_ms, now)),
        ("finished", when(r.finished_ms, now)),
        ("duration", run_duration(r, now)),
    ];
    if !params.is_empty() {
        fields.push(("params", params.join(" ")));
    }
    if !r.reason.is_empty() {
        fields.push(("reason", one_line(&r.reason)));
    }
    for (key, value) in fields {
        let _ = writeln!(out, "{:<10}{value}", format!("{key}:"));
    }
    out.push('\n');

    let mut t = Table::new(&["STAGE", "STATE", "ATTEMPT", "AGENT", "DURATION", "REASON"]);
    for s in &r.stages {
        let attempt = current_attempt(s);
        t.row(vec![
            s.name.clone(),
            stage_state_name(s.state).to_string(),
            attempt.map_or("-".to_string(), |a| a.number.to_string()),
            or_dash(attempt.map_or("", |a| a.agent.as_str())),
            stage_duration(s, now),
            stage_reason(s).to_string(),
        ]);
    }
    out.push_str(&t.render());

    let mut details = String::new();
    for s in &r.stages {
        if let Some(g) = &s.gate {
            let _ = writeln!(
                details,
                "gate {}: {} (at {})",
                s.name,
                or_dash(&g.outcome),
                when(g.at_ms, now)
            );
            for reason in &g.reasons {
                let _ = writeln!(details, "  - {}", one_line(reason));
            }
        }
        for a in &s.approvals {
            let verb = if a.approved { "approved" } else { "rejected" };
            let _ = write!(
                details,
                "{verb} {} by {} at {}",
                s.name,
                or_dash(&a.identity),
                when(a.at_ms, now)
            );
            if !a.comment.is_empty() {
                let _ = write!(details, ": {}", one_line(&a.comment));
            }
            details.push('\n');
        }
        let mut attempts: Vec<_> = s.attempts.iter().collect();
        attempts.sort_by_key(|a| a.number);
        for a in attempts {
            let mut line = format!("attempt {} of {}", a.number, s.name);
            if !a.agent.is_empty() {
                let _ = write!(line, " on {}", a.agent);
            }
            match &a.result {
                Some(res) => {
                    let _ = write!(line, ": {}", result_text(res));
                }
                // Still going (or never started): the stage table already says so.
                None if a.finished_ms <= 0 && a.end_reason.is_empty() => continue,
                None => {}
            }
            if !a.end_reason.is_empty() {
                let _ = write!(line, " (ended: {})", one_line(&a.end_reason));
            }
            // A lone successful attempt without reports says nothing the table did not.
            let plain = s.attempts.len() == 1
                && a.end_reason.is_empty()
                && a.result.as_ref().is_none_or(|res| {
                    res.exit_code == 0
                        && res.tests.is_none()
                        && res.metrics.is_empty()
                        && res.errors.is_empty()
                        && !res.cancelled
                });
            if !plain {
                let _ = writeln!(details, "{line}");
            }
        }
    }
    if !details.is_empty() {
        out.push('\n');
        out.push_str(&details);
    }
    out
}

/// What a stage is doing, for `run watch`: `running (attempt 1 on agent-1)`,
/// `succeeded in 45s`, `failed after 3s: exit code 2`, `awaiting_approval: needs 1 approval`.
pub fn stage_status(s: &Stage, now: i64) -> String {
    let name = stage_state_name(s.state);
    let attempt = current_attempt(s);
    let reason = stage_reason(s);
    let with_reason = |text: String| {
        if reason.is_empty() {
            text
        } else {
            format!("{text}: {}", one_line(reason))
        }
    };
    let duration = attempt
        .and_then(|a| super::attempt_duration_ms(a, super::stage_is_active(s.state), now))
        .map(duration_text);
    match StageState::try_from(s.state) {
        Ok(StageState::Queued) => match attempt {
            Some(a) => with_reason(format!("{name} (after attempt {})", a.number)),
            None => name.to_string(),
        },
        Ok(StageState::Assigned | StageState::Running) => match attempt {
            Some(a) if !a.agent.is_empty() => {
                format!("{name} (attempt {} on {})", a.number, a.agent)
            }
            Some(a) => format!("{name} (attempt {})", a.number),
            None => name.to_string(),
        },
        Ok(StageState::Succeeded) => match duration {
            Some(d) => format!("{name} in {d}"),
            None => name.to_string(),
        },
        Ok(StageState::Failed) => {
            let text = match duration {
                Some(d) => format!("{name} after {d}"),
                None => name.to_string(),
            };
            if reason.is_empty() {
                match attempt.and_then(|a| a.result.as_ref()) {
                    Some(res) if res.exit_code != 0 => {
                        format!("{text}: exit code {}", res.exit_code)
                    }
                    _ => text,
                }
            } else {
                with_reason(text)
            }
        }
        Ok(StageState::AwaitingApproval | StageState::GateFailed) => match &s.gate {
            Some(g) if !g.reasons.is_empty() && reason.is_empty() => {
                format!("{name}: {}", one_line(&g.reasons.join("; ")))
            }
            _ => with_reason(name.to_string()),
        },
        _ => with_reason(name.to_string()),
    }
}

/// One `run watch` line: `12:00:01 build      running (attempt 1 on agent-1)`.
pub fn stage_change(s: &Stage, name_width: usize, at_ms: i64, now: i64) -> String {
    format!(
        "{} {:<name_width$} {}",
        clock(at_ms),
        s.name,
        stage_status(s, now)
    )
    .trim_end()
    .to_string()
}

/// The last `run watch` line: `12:05:00 run r-1 succeeded in 5m`.
pub fn run_end(r: &Run, at_ms: i64, now: i64) -> String {
    let mut line = format!("{} run {} {}", clock(at_ms), r.id, run_state_name(r.state));
    let duration = run_duration(r, now);
    if duration != "-" {
        let word = if r.state == cd_proto::v1::RunState::Succeeded as i32 {
            "in"
        } else {
            "after"
        };
        let _ = write!(line, " {word} {duration}");
    }
    if !r.reason.is_empty() {
        let _ = write!(line, ": {}", one_line(&r.reason));
    }
    line
}

pub fn agents(items: &[AgentInfo], now: i64) -> String {
    let mut t = Table::new(&[
        "NAME",
        "LABELS",
        "SLOTS",
        "RUNNING",
        "CONNECTED",
        "LAST SEEN",
    ]);
    for a in items {
        t.row(vec![
            a.name.clone(),
            or_dash(&a.labels.join(",")),
            a.slots.to_string(),
            a.running.to_string(),
            if a.connected { "yes" } else { "no" }.to_string(),
            ago(a.last_seen_ms, now),
        ]);
    }
    t.render()
}

pub fn environments(items: &[Environment], now: i64) -> String {
    let mut t = Table::new(&[
        "NAME",
        "REVISION",
        "RUN",
        "PIPELINE",
        "STATUS",
        "KIND",
        "DEPLOYED",
        "DEPLOYMENTS",
    ]);
    for e in items {
        let d = e.current.as_ref();
        let field = |f: fn(&Deployment) -> &str| or_dash(d.map_or("", f));
        t.row(vec![
            e.name.clone(),
            field(|d| &d.revision),
            field(|d| &d.run_id),
            field(|d| &d.pipeline),
            field(|d| &d.status),
            field(|d| &d.kind),
            d.map_or("-".to_string(), |d| {
                when(d.finished_ms.max(d.started_ms), now)
            }),
            e.deployments.to_string(),
        ]);
    }
    t.render()
}

pub fn deployments(items: &[Deployment], now: i64) -> String {
    let mut t = Table::new(&[
        "ID", "KIND", "REVISION", "RUN", "STAGE", "STATUS", "STARTED", "DURATION", "RESTORES",
        "METRICS",
    ]);
    for d in items {
        let duration = if d.started_ms > 0 && d.finished_ms >= d.started_ms {
            duration_text((d.finished_ms - d.started_ms) as u64)
        } else {
            "-".to_string()
        };
        let mut metrics: Vec<_> = d.metrics.iter().collect();
        metrics.sort_by(|a, b| a.0.cmp(b.0));
        let metrics: Vec<String> = metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.row(vec![
            d.id.to_string(),
            or_dash(&d.kind),
            or_dash(&d.revision),
            or_dash(&d.run_id),
            or_dash(&d.stage),
            or_dash(&d.status),
            when(d.started_ms, now),
            duration,
            if d.restores > 0 {
                d.restores.to_string()
            } else {
                "-".to_string()
            },
            or_dash(&metrics.join(" ")),
        ]);
    }
    t.render()
}

fn or_dash_num<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// `cluster status`: one row per node; an ERROR column only when some node did not answer.
pub fn cluster_nodes(rows: &[NodeRow]) -> String {
    let errors = rows.iter().any(|r| r.error.is_some());
    let mut headers = vec![
        "ID",
        "ADDRESS",
        "ROLE",
        "TERM",
        "COMMIT",
        "APPLIED",
        "LAG",
        "LAST CONTACT",
        "VOTER",
    ];
    if errors {
        headers.push("ERROR");
    }
    let mut t = Table::new(&headers);
    for r in rows {
        let mut cells = vec![
            or_dash_num(r.id),
            or_dash(&r.address),
            r.role.clone(),
            or_dash_num(r.term),
            or_dash_num(r.commit),
            or_dash_num(r.applied),
            or_dash_num(r.lag),
            r.last_contact_ms.map_or("-".to_string(), |ms| {
                format!("{} ago", duration_text(ms.max(0) as u64))
            }),
            r.voter
                .map_or("-", |v| if v { "yes" } else { "no" })
                .to_string(),
        ];
        if errors {
            cells.push(or_dash(r.error.as_deref().unwrap_or("")));
        }
        t.row(cells);
    }
    t.render()
}

/// `cluster digest`: one row per node, then the verdict lines.
pub fn cluster_digests(rows: &[DigestRow], verdict: &[String]) -> String {
    let errors = rows.iter().any(|r| r.error.is_some());
    let mut headers = vec!["ID", "ADDRESS", "APPLIED", "DIGEST"];
    if errors {
        headers.push("ERROR");
    }
    let mut t = Table::new(&headers);
    for r in rows {
        let mut cells = vec![
            or_dash_num(r.id),
            or_dash(&r.address),
            or_dash_num(r.applied),
            or_dash(r.digest.as_deref().unwrap_or("")),
        ];
        if errors {
            cells.push(or_dash(r.error.as_deref().unwrap_or("")));
        }
        t.row(cells);
    }
    let mut out = t.render();
    out.push('\n');
    for line in verdict {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cd_proto::v1::{Approval, Attempt, GateDecision, RunState, TestCounts};

    pub(crate) const T0: i64 = 1_700_000_000_000;

    /// A run half-way: build done, test on its second attempt, production waiting at its gate.
    pub(crate) fn sample_run() -> Run {
        Run {
            id: "r-1".into(),
            pipeline: "web".into(),
            pipeline_version: 3,
            revision: "abc123".into(),
            trigger: "manual".into(),
            state: RunState::Running as i32,
            created_ms: T0,
            finished_ms: 0,
            params: [("ENV", "prod"), ("DEBUG", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            kind: "release".into(),
            reason: String::new(),
            commit_at_ms: 0,
            queued: false,
            superseded_by: String::new(),
            stages: vec![
                Stage {
                    name: "build".into(),
                    state: StageState::Succeeded as i32,
                    attempts: vec![Attempt {
                        number: 1,
                        agent: "agent-1".into(),
                        assigned_ms: T0 + 500,
                        started_ms: T0 + 1_000,
                        finished_ms: T0 + 46_000,
                        lease_until_ms: T0 + 60_000,
                        result: Some(StageResult {
                            exit_code: 0,
                            duration_ms: 45_000,
                            tests: Some(TestCounts {
                                total: 10,
                                passed: 9,
                                failed: 1,
                                errors: 0,
                                skipped: 0,
                            }),
                            metrics: [("accuracy".to_string(), 0.93)].into_iter().collect(),
                            cancelled: false,
                            errors: vec![],
                            oom_killed: false,
                            check_at_ms: 0,
                        }),
                        end_reason: String::new(),
                    }],
                    ..Default::default()
                },
                Stage {
                    name: "test".into(),
                    state: StageState::Running as i32,
                    needs: vec!["build".into()],
                    attempts: vec![
                        Attempt {
                            number: 1,
                            agent: "agent-1".into(),
                            started_ms: T0 + 47_000,
                            end_reason: "lease lapsed".into(),
                            ..Default::default()
                        },
                        Attempt {
                            number: 2,
                            agent: "agent-2".into(),
                            started_ms: T0 + 80_000,
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                Stage {
                    name: "deploy-production".into(),
                    state: StageState::AwaitingApproval as i32,
                    environment: "production".into(),
                    needs: vec!["test".into()],
                    gate: Some(GateDecision {
                        outcome: "waiting_approval".into(),
                        reasons: vec!["needs 1 approval, has 0".into()],
                        at_ms: T0 + 90_000,
                    }),
                    approvals: vec![Approval {
                        identity: "spiffe://conveyor.local/operator/bob".into(),
                        approved: false,
                        comment: "not on a Friday".into(),
                        at_ms: T0 + 95_000,
                    }],
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn table_aligns_columns_and_trims() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["xyz".into(), "1".into()]);
        t.row(vec!["q".into(), "two\nlines".into()]);
        assert_eq!(t.render(), "A    LONGER\nxyz  1\nq    two lines\n");
    }

    #[test]
    fn run_detail_lists_stages_with_state_attempt_agent_duration_reason() {
        let now = T0 + 100_000;
        let text = run_detail(&sample_run(), now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "run:      r-1");
        assert_eq!(lines[1], "pipeline: web v3");
        assert!(lines.contains(&"state:    running"));
        assert!(lines.contains(&"params:   DEBUG=1 ENV=prod"));

        let header = lines
            .iter()
            .position(|l| l.starts_with("STAGE"))
            .expect("stage table header");
        let cols: Vec<&str> = lines[header].split_whitespace().collect();
        assert_eq!(
            cols,
            ["STAGE", "STATE", "ATTEMPT", "AGENT", "DURATION", "REASON"]
        );
        // Columns line up: every row's state starts where the STATE header starts.
        let state_col = lines[header].find("STATE").unwrap();
        for row in &lines[header + 1..header + 4] {
            assert_ne!(row.as_bytes()[state_col], b' ');
            assert_eq!(&row[state_col - 2..state_col], "  ");
        }
        let build: Vec<&str> = lines[header + 1].split_whitespace().collect();
        assert_eq!(build[..4], ["build", "succeeded", "1", "agent-1"]);
        assert_eq!(build[4], duration_text(45_000));
        let test: Vec<&str> = lines[header + 2].split_whitespace().collect();
        assert_eq!(test[..4], ["test", "running", "2", "agent-2"]);
        assert_eq!(test[4], duration_text(20_000));
        let prod: Vec<&str> = lines[header + 3].split_whitespace().collect();
        assert_eq!(
            prod,
            ["deploy-production", "awaiting_approval", "-", "-", "-"]
        );

        assert!(text.contains("gate deploy-production: waiting_approval"));
        assert!(text.contains("  - needs 1 approval, has 0"));
        assert!(
            text.contains("rejected deploy-production by spiffe://conveyor.local/operator/bob at")
        );
        assert!(text.contains(": not on a Friday"));
        assert!(text.contains("attempt 1 of build on agent-1: exit 0, tests 9/10 passed"));
        assert!(text.contains("metrics accuracy=0.93"));
        assert!(text.contains("attempt 1 of test on agent-1 (ended: lease lapsed)"));
        assert!(!text.contains("attempt 2 of test"));
    }

    #[test]
    fn runs_table_has_one_row_per_run() {
        let mut done = sample_run();
        done.id = "r-2".into();
        done.state = RunState::Failed as i32;
        done.finished_ms = T0 + 60_000;
        let text = runs(&[sample_run(), done], T0 + 120_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "ID", "PIPELINE", "VERSION", "REVISION", "KIND", "STATE", "CREATED", "DURATION"
            ]
        );
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(row[..6], ["r-2", "web", "3", "abc123", "release", "failed"]);
        assert_eq!(row[7], duration_text(60_000));
    }

    #[test]
    fn applied_says_what_happened() {
        let p = Pipeline {
            name: "web".into(),
            version: 4,
            ..Default::default()
        };
        assert_eq!(applied(&p, false), "pipeline web version 4 (unchanged)\n");
        assert_eq!(applied(&p, true), "pipeline web version 4 (updated)\n");
    }

    #[test]
    fn stage_status_texts() {
        let run = sample_run();
        let now = T0 + 100_000;
        assert_eq!(
            stage_status(&run.stages[1], now),
            "running (attempt 2 on agent-2)"
        );
        assert_eq!(
            stage_status(&run.stages[0], now),
            format!("succeeded in {}", duration_text(45_000))
        );
        assert_eq!(
            stage_status(&run.stages[2], now),
            "awaiting_approval: needs 1 approval, has 0"
        );
        let mut failed = run.stages[0].clone();
        failed.state = StageState::Failed as i32;
        if let Some(r) = failed.attempts[0].result.as_mut() {
            r.exit_code = 2;
        }
        assert_eq!(
            stage_status(&failed, now),
            format!("failed after {}: exit code 2", duration_text(45_000))
        );
        let mut queued = run.stages[1].clone();
        queued.state = StageState::Queued as i32;
        queued.attempts.truncate(1);
        assert_eq!(
            stage_status(&queued, now),
            "queued (after attempt 1): lease lapsed"
        );
        let line = stage_change(&run.stages[1], 8, T0, now);
        assert_eq!(
            line,
            format!("{} test     running (attempt 2 on agent-2)", clock(T0))
        );
    }

    #[test]
    fn cluster_table_shows_unknowns_as_dashes_and_errors_last() {
        let rows = [
            NodeRow {
                id: Some(1),
                address: "https://127.0.0.1:7001".into(),
                role: "leader".into(),
                term: Some(5),
                commit: Some(42),
                applied: Some(42),
                lag: Some(0),
                voter: Some(true),
                ..NodeRow::default()
            },
            NodeRow {
                id: Some(2),
                address: "https://127.0.0.1:7002".into(),
                role: "unreachable".into(),
                lag: Some(3),
                last_contact_ms: Some(2_500),
                voter: Some(false),
                error: Some("connect: refused".into()),
                ..NodeRow::default()
            },
        ];
        let text = cluster_nodes(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "LAST", "CONTACT",
                "VOTER", "ERROR"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "1",
                "https://127.0.0.1:7001",
                "leader",
                "5",
                "42",
                "42",
                "0",
                "-",
                "yes",
                "-"
            ]
        );
        let contact = format!("{} ago", duration_text(2_500));
        let mut expected = vec![
            "2",
            "https://127.0.0.1:7002",
            "unreachable",
            "-",
            "-",
            "-",
            "3",
        ];
        expected.extend(contact.split_whitespace());
        expected.extend(["no", "connect:", "refused"]);
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), expected);
        // Without errors there is no ERROR column.
        assert!(!cluster_nodes(&rows[..1]).contains("ERROR"));
    }

    #[test]
    fn agents_and_environments_tables() {
        let text = agents(
            &[AgentInfo {
                name: "agent-1".into(),
                labels: vec!["linux".into(), "docker".into()],
                slots: 4,
                connected: true,
                last_seen_ms: T0,
                running: 1,
            }],
            T0 + 3_000,
        );
        let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[..5], ["agent-1", "linux,docker", "4", "1", "yes"]);
        assert!(text.lines().nth(1).unwrap().ends_with(" ago"));

        let text = environments(
            &[
                Environment {
                    name: "production".into(),
                    current: Some(Deployment {
                        revision: "abc".into(),
                        run_id: "r-1".into(),
                        pipeline: "web".into(),
                        status: "succeeded".into(),
                        kind: "release".into(),
                        ..Default::default()
                    }),
                    deployments: 2,
                },
                Environment {
                    name: "staging".into(),
                    ..Default::default()
                },
            ],
            T0,
        );
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[1],
            [
                "production",
                "abc",
                "r-1",
                "web",
                "succeeded",
                "release",
                "-",
                "2"
            ]
        );
        assert_eq!(lines[2], ["staging", "-", "-", "-", "-", "-", "-", "0"]);
    }
}
