//! `/metrics` in the Prometheus text format: the MTTR, MTBF and DORA figures of every
//! environment (the same as `GetMetrics`), as gauges labelled `env`, computed at scrape time
//! over a fixed window. Served on plain HTTP (`--metrics-listen`), from this node's applied
//! state, so any node of a cluster can be scraped. A minimal HTTP/1.1 responder: one request
//! per connection, `GET /metrics` only.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::raft::RaftHandle;
use crate::state::{State, metrics};

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics` on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    node: RaftHandle,
    window_ms: i64,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &node, window_ms).await {
                debug!(%peer, error = %e, "metrics endpoint: request failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, node: &RaftHandle, window_ms: i64) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => {
            let now = cd_common::time::now_ms();
            ("200 OK", node.read(|st| render(st, now, window_ms)))
        }
        ("GET", _) => (
            "404 Not Found",
            "only /metrics is served here\n".to_string(),
        ),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// One gauge family: name, help, and a value per environment (`None` omits the sample).
struct Family {
    name: &'static str,
    help: &'static str,
    value: fn(&metrics::Figures) -> Option<f64>,
}

const SECONDS: f64 = 1000.0;

const FAMILIES: &[Family] = &[
    Family {
        name: "conveyor_mttr_seconds",
        help: "Mean time to recovery: total recovery time / failures (incidents) in the window.",
        value: |f| f.mttr_ms.map(|v| v / SECONDS),
    },
    Family {
        name: "conveyor_mtbf_seconds",
        help: "Mean time between failures: (operating time - total recovery time) / failures.",
        value: |f| f.mtbf_ms.map(|v| v / SECONDS),
    },
    Family {
        name: "conveyor_failures",
        help: "Incidents opened in the window.",
        value: |f| Some(f.failures as f64),
    },
    Family {
        name: "conveyor_open_incidents",
        help: "Incidents of the window still open.",
        value: |f| Some(f.open_incidents as f64),
    },
    Family {
        name: "conveyor_deployment_frequency_per_day",
        help: "DORA: successful release deployments per day of operating time.",
        value: |f| f.deployments_per_day,
    },
    Family {
        name: "conveyor_lead_time_median_seconds",
        help: "DORA: median lead time for changes (commit, or run creation, to deployed).",
        value: |f| f.lead_time_median_ms.map(|v| v / SECONDS),
    },
    Family {
        name: "conveyor_lead_time_mean_seconds",
        help: "Mean lead time for changes.",
        value: |f| f.lead_time_mean_ms.map(|v| v / SECONDS),
    },
    Family {
        name: "conveyor_change_failure_rate",
        help: "DORA: deployments that failed, were rolled back or caused an incident / deployments.",
        value: |f| f.change_failure_rate,
    },
    Family {
        name: "conveyor_time_to_restore_median_seconds",
        help: "DORA: median recovery time of resolved incidents.",
        value: |f| f.restore_median_ms.map(|v| v / SECONDS),
    },
];

/// The text exposition of every environment's figures over `[now - window, now]`.
pub fn render(state: &State, now_ms: i64, window_ms: i64) -> String {
    let since = if window_ms <= 0 {
        0
    } else {
        now_ms.saturating_sub(window_ms).max(0)
    };
    let envs: BTreeSet<&str> = state
        .deployments
        .iter()
        .map(|d| d.environment.as_str())
        .collect();
    let figures: Vec<metrics::Figures> = envs
        .iter()
        .map(|env| metrics::compute(state, env, since, now_ms))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP conveyor_metrics_window_seconds Length of the window the figures cover (0: all history).\n# TYPE conveyor_metrics_window_seconds gauge\nconveyor_metrics_window_seconds {}",
        window_ms.max(0) as f64 / SECONDS
    );
    for family in FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} gauge", family.name);
        for f in &figures {
            if let Some(v) = (family.value)(f) {
                let _ = writeln!(
                    out,
                    "{}{{env=\"{}\"}} {v}",
                    family.name,
                    escape(&f.environment)
                );
            }
        }
    }
    out
}

/// A label value as the text format wants it.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Deployment, DeploymentStatus, Incident, Resolution, RunKind};

    fn deployment(id: u64, env: &str, finished_ms: i64) -> Deployment {
        Deployment {
            id,
            environment: env.into(),
            run_id: String::new(),
            pipeline: "p".into(),
            pipeline_version: 1,
            revision: "r".into(),
            stage: "deploy".into(),
            status: DeploymentStatus::Succeeded,
            started_ms: finished_ms - 1,
            finished_ms,
            metrics: Default::default(),
            kind: RunKind::Release,
            restores: 0,
        }
    }

    #[test]
    fn every_environment_gets_its_gauges_and_missing_figures_are_omitted() {
        let mut st = State::default();
        st.deployments.push(deployment(1, "production", 1_000));
        st.deployments.push(deployment(2, "staging", 1_000));
        st.incidents.push(Incident {
            id: 1,
            environment: "production".into(),
            opened_ms: 11_000,
            resolved_ms: 31_000,
            reason: "down".into(),
            opened_by: "monitor".into(),
            deployment: 1,
            run_id: String::new(),
            stage: String::new(),
            rollback_run: String::new(),
            resolution: Some(Resolution::Manual),
            resolved_by: "op".into(),
            restored_by_deployment: 0,
            note: String::new(),
        });
        let text = render(&st, 101_000, 0);
        // Operating 100 s, one failure of 20 s: MTTR 20 s, MTBF 80 s.
        assert!(
            text.contains("conveyor_mttr_seconds{env=\"production\"} 20\n"),
            "{text}"
        );
        assert!(
            text.contains("conveyor_mtbf_seconds{env=\"production\"} 80\n"),
            "{text}"
        );
        assert!(
            text.contains("conveyor_failures{env=\"staging\"} 0\n"),
            "{text}"
        );
        assert!(
            !text.contains("conveyor_mttr_seconds{env=\"staging\"}"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE conveyor_change_failure_rate gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("conveyor_change_failure_rate{env=\"production\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("conveyor_metrics_window_seconds 0\n"),
            "{text}"
        );
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
