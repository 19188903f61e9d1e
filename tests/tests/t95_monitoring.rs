//! The feedback loop end to end through real binaries: a monitoring stage whose health check
//! starts failing after a deployment fails it, the environment is rolled back automatically,
//! an incident opens at the failed check and is resolved by the rollback's passing health
//! check, and `cdctl metrics` shows MTTR, MTBF and DORA figures equal to values computed here
//! from the recorded times (`cdctl incident list`, the deployment history).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cd_proto::v1 as pb;
use cd_tests::*;
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Deploys `$CD_REVISION` into `$SITE`; with `BREAK=1` the deployed service is broken (the
/// health check reads the marker), and a rollback repairs it.
const DEPLOY: &str = r#"set -e
if [ "$1" = "--rollback" ]; then rm -f "$SITE/broken"; fi
echo "$CD_REVISION" > "$SITE/current"
if [ "$BREAK" = "1" ] && [ "$1" != "--rollback" ]; then touch "$SITE/broken"; fi
echo "deployed $CD_REVISION${1:+ ($1)}"
"#;

const HEALTHCHECK: &str = r#"if [ -f "$SITE/broken" ]; then echo "unhealthy: $(cat "$SITE/current")"; exit 1; fi
echo "healthy: $(cat "$SITE/current")"
"#;

/// The monitor's probe: the health-check script.
const COMMAND_PROBE: &str = "command: sh ./healthcheck.sh";

fn pipeline(scripts: &Path, site: &Path, probe: &str) -> String {
    format!(
        "name: svc
source: {{ path: {scripts} }}
env: {{ SITE: {site} }}
stages:
  - name: build
    run: echo build $CD_REVISION
  - name: deploy
    needs: [build]
    environment: production
    run: sh ./deploy.sh
    rollback: sh ./deploy.sh --rollback
  - name: monitor
    needs: [deploy]
    on_failure: rollback
    monitor:
      duration: 1500ms
      interval: 150ms  # a check may take longer on a loaded machine (timeout below)
      failure_threshold: 3
      timeout: 10s
      {probe}
",
        scripts = scripts.display(),
        site = site.display()
    )
}

fn cdctl_ok(s: &Single, args: &[&str]) -> String {
    let out = s.cdctl().args(args).output().expect("cdctl runs");
    assert!(
        out.status.success(),
        "cdctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cdctl_json(s: &Single, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let text = cdctl_ok(s, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("cdctl {args:?}: {e}: {text}"))
}

async fn release(
    c: &mut pb::control_service_client::ControlServiceClient<tonic::transport::Channel>,
    revision: &str,
    commit_at_ms: i64,
    params: &[(&str, &str)],
) -> anyhow::Result<String> {
    let run = c
        .start_run(pb::StartRunRequest {
            pipeline: "svc".into(),
            revision: revision.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            trigger: "test".into(),
            commit_at_ms,
        })
        .await?
        .into_inner();
    Ok(run.id)
}

/// A free port on 127.0.0.1 (bound and released) for `--metrics-listen`.
fn free_addr() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

/// The whole response to a plain-HTTP GET.
async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// The incident's automatic rollback run, waited for: it must succeed.
async fn rollback_succeeded(s: &Single, incident: &Value) -> anyhow::Result<(String, pb::Run)> {
    let rollback = incident["rollback_run"]
        .as_str()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| anyhow::anyhow!("the incident names no rollback run: {incident}"))?
        .to_string();
    let rb = s.wait_final(&rollback, RUN_TIMEOUT).await?;
    assert_eq!(
        rb.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&rb))
    );
    Ok((rollback, rb))
}

fn int(v: &Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

fn float(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_monitor_rolls_back_opens_and_resolves_an_incident_and_feeds_the_metrics()
-> anyhow::Result<()> {
    let metrics_addr = free_addr()?;
    let mut s = Single::start(&["agent-1"], &["--metrics-listen", &metrics_addr], &[]).await?;
    let scripts = s.path("scripts");
    let site = s.path("site");
    std::fs::create_dir_all(&scripts)?;
    std::fs::create_dir_all(&site)?;
    std::fs::write(scripts.join("deploy.sh"), DEPLOY)?;
    std::fs::write(scripts.join("healthcheck.sh"), HEALTHCHECK)?;
    let mut c = s.client().await?;
    apply_pipeline(&mut c, &pipeline(&scripts, &site, COMMAND_PROBE), &scripts).await?;

    // v1: deployed, healthy for the whole watch.
    let t0 = cd_common::time::now_ms();
    let v1_commit = t0 - 3_600_000;
    let v1 = release(&mut c, "v1", v1_commit, &[]).await?;
    let run = s.wait_final(&v1, RUN_TIMEOUT).await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    let monitor_log = String::from_utf8(logs(&mut c, &v1, "monitor").await?)?;
    assert!(monitor_log.contains("healthy: v1"), "{monitor_log}");
    assert!(monitor_log.contains(": ok (exit code 0)"), "{monitor_log}");
    assert!(!monitor_log.contains("FAIL"), "{monitor_log}");

    // v2: its deployment breaks the service; the monitor fails after 3 failed checks.
    let v2_commit = cd_common::time::now_ms() - 600_000;
    let v2 = release(&mut c, "v2", v2_commit, &[("BREAK", "1")]).await?;
    let run = s.wait_final(&v2, RUN_TIMEOUT).await?;
    assert_eq!(
        run.state,
        RunState::Failed as i32,
        "{}",
        describe(Some(&run))
    );
    let monitor = stage(&run, "monitor");
    assert_eq!(
        monitor.state,
        StageState::Failed as i32,
        "{}",
        describe(Some(&run))
    );
    assert!(
        monitor.reason.contains("3 consecutive checks failed"),
        "{}",
        monitor.reason
    );
    let failed_attempt = monitor.attempts.last().expect("attempt").clone();
    let failed_check_at = failed_attempt
        .result
        .as_ref()
        .map(|r| r.check_at_ms)
        .expect("result");

    // The incident opened at that check and names the rollback run it started.
    let incidents = cdctl_json(&s, &["incident", "list"]);
    let incident = incidents[0].clone();
    assert_eq!(incidents.as_array().map(Vec::len), Some(1), "{incidents}");
    assert_eq!(incident["environment"], "production");
    assert_eq!(incident["opened_by"], "monitor");
    assert_eq!(incident["run_id"], v2.as_str());
    assert_eq!(int(&incident, "opened_ms"), failed_check_at);
    assert!(
        failed_check_at >= failed_attempt.started_ms
            && failed_check_at <= failed_attempt.finished_ms
    );
    let v2_log = String::from_utf8(logs(&mut c, &v2, "monitor").await?)?;
    assert!(
        v2_log.contains(&format!("check 3 at {failed_check_at}: FAIL (exit code 1)")),
        "the incident opened at the third failed check: {v2_log}"
    );
    // The rollback redeploys v1 and re-runs the health check, which passes.
    let (rollback, rb) = rollback_succeeded(&s, &incident).await?;
    assert_eq!(rb.kind, "rollback");
    assert_eq!(rb.revision, "v1");
    let names: Vec<&str> = rb.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["deploy", "monitor"]);
    assert_eq!(std::fs::read_to_string(site.join("current"))?.trim(), "v1");
    assert!(!site.join("broken").exists());
    let check = stage(&rb, "monitor")
        .attempts
        .last()
        .expect("check")
        .clone();
    let passed_at = check
        .result
        .as_ref()
        .map(|r| r.check_at_ms)
        .expect("result");

    let history = c
        .environment_history(pb::EnvironmentHistoryRequest {
            environment: "production".into(),
        })
        .await?
        .into_inner()
        .deployments;
    let by_run = |run: &str| {
        history
            .iter()
            .find(|d| d.run_id == run)
            .cloned()
            .unwrap_or_else(|| panic!("deployment of {run}: {history:?}"))
    };
    let (d1, d2, d3) = (by_run(&v1), by_run(&v2), by_run(&rollback));
    assert_eq!(d2.status, "rolled_back");
    assert_eq!((d3.kind.as_str(), d3.revision.as_str()), ("rollback", "v1"));
    assert_eq!(
        history.first().map(|d| d.id),
        Some(d3.id),
        "v1 is back in production"
    );

    let incident = eventually("the incident to be resolved", RUN_TIMEOUT, || async {
        let list = cdctl_json(&s, &["incident", "list", "--env", "production"]);
        (list[0]["status"] == "rollback").then(|| list[0].clone())
    })
    .await?;
    assert_eq!(
        int(&incident, "resolved_ms"),
        passed_at,
        "resolved at the passing check"
    );
    assert_eq!(incident["resolved_by"], rollback.as_str());
    assert_eq!(int(&incident, "deployment") as u64, d2.id);
    assert_eq!(int(&incident, "restored_by_deployment") as u64, d3.id);
    let (opened, resolved) = (int(&incident, "opened_ms"), int(&incident, "resolved_ms"));
    assert!(resolved > opened);

    // The figures, computed by hand from the recorded times.
    let m = cdctl_json(&s, &["metrics", "--env", "production", "--since", "30d"]);
    let now = int(&m, "now_ms");
    assert_eq!(int(&m, "operating_since_ms"), d1.finished_ms, "{m}");
    let operating = now - d1.finished_ms;
    let recovery = resolved - opened;
    assert_eq!(int(&m, "operating_ms"), operating);
    assert_eq!(int(&m, "failures"), 1);
    assert_eq!(int(&m, "recovery_ms"), recovery);
    assert!(close(float(&m, "mttr_ms"), recovery as f64), "MTTR {m}");
    assert!(
        close(float(&m, "mtbf_ms"), (operating - recovery) as f64),
        "MTBF {m}"
    );
    let dora = &m["dora"];
    assert_eq!(
        int(dora, "deployments"),
        2,
        "v1 and v2; the rollback is no change"
    );
    let per_day = 2.0 / (operating as f64 / 86_400_000.0);
    assert!(
        close(float(dora, "deployment_frequency_per_day"), per_day),
        "{m}"
    );
    let leads = [
        (d1.finished_ms - v1_commit) as f64,
        (d2.finished_ms - v2_commit) as f64,
    ];
    let mean = (leads[0] + leads[1]) / 2.0;
    assert!(close(float(dora, "lead_time_mean_ms"), mean), "{m}");
    assert!(
        close(float(dora, "lead_time_median_ms"), mean),
        "median of two: {m}"
    );
    assert_eq!(int(dora, "lead_time_from_run_created"), 0);
    assert!(
        close(float(dora, "change_failure_rate"), 0.5),
        "v2 of 2: {m}"
    );
    assert!(
        close(float(dora, "time_to_restore_median_ms"), recovery as f64),
        "{m}"
    );
    let text = cdctl_ok(&s, &["metrics"]);
    eprintln!(
        "cdctl metrics:\n{text}\ncdctl incident list:\n{}",
        cdctl_ok(&s, &["incident", "list"])
    );
    assert!(text.contains("MTTR") && text.contains("MTBF"), "{text}");
    assert!(text.contains("(1 of 2 deployments)"), "{text}");

    // The same figures as Prometheus gauges.
    let scrape = http_get(&metrics_addr, "/metrics").await?;
    assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n"), "{scrape}");
    let gauge = |name: &str| -> f64 {
        let prefix = format!("{name}{{env=\"production\"}} ");
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {scrape}"))
    };
    assert!(
        close(gauge("conveyor_mttr_seconds"), recovery as f64 / 1000.0),
        "{scrape}"
    );
    assert_eq!(gauge("conveyor_failures"), 1.0);
    assert_eq!(gauge("conveyor_change_failure_rate"), 0.5);
    let mtbf = gauge("conveyor_mtbf_seconds");
    assert!(
        mtbf >= (operating - recovery) as f64 / 1000.0,
        "later scrape, longer MTBF: {scrape}"
    );

    // An incident by hand: opened, resolved, and counted as a second failure.
    let opened2 = cdctl_json(
        &s,
        &[
            "incident",
            "open",
            "production",
            "--reason",
            "users report slow pages",
        ],
    );
    let id = int(&opened2, "id");
    assert_eq!(id, 2);
    assert_eq!(opened2["status"], "open");
    let resolved2 = cdctl_json(
        &s,
        &[
            "incident",
            "resolve",
            &id.to_string(),
            "--note",
            "cache flushed",
        ],
    );
    assert_eq!(resolved2["status"], "manual");
    assert_eq!(resolved2["note"], "cache flushed");
    let recovery2 = int(&resolved2, "resolved_ms") - int(&resolved2, "opened_ms");
    let m = cdctl_json(&s, &["metrics", "--env", "production"]);
    let operating = int(&m, "now_ms") - d1.finished_ms;
    let total = recovery + recovery2;
    assert_eq!(int(&m, "failures"), 2);
    assert!(close(float(&m, "mttr_ms"), total as f64 / 2.0), "{m}");
    assert!(
        close(float(&m, "mtbf_ms"), (operating - total) as f64 / 2.0),
        "{m}"
    );
    let refused = s
        .cdctl()
        .args(["incident", "resolve", &id.to_string()])
        .output()?;
    assert!(!refused.status.success(), "resolving twice is refused");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("already resolved"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Incidents are replicated state: a node killed with SIGKILL replays them from its log.
    let before = cdctl_json(&s, &["incident", "list"]);
    s.coord.restart()?;
    let after = eventually("the restarted node to answer", RUN_TIMEOUT, || async {
        let out = s
            .cdctl()
            .args(["-o", "json", "incident", "list"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
            .flatten()
    })
    .await?;
    assert_eq!(after, before);
    assert_eq!(after.as_array().map(Vec::len), Some(2));
    Ok(())
}

/// Answers every GET with 503 while `$SITE/broken` exists, else 200; counts requests.
async fn site_server(site: std::path::PathBuf) -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/health", listener.local_addr()?);
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let broken = site.join("broken").exists();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let status = if broken {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            });
        }
    });
    Ok((url, hits))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_probe_that_starts_failing_rolls_back_and_its_recheck_resolves_the_incident()
-> anyhow::Result<()> {
    let s = Single::start(&["agent-1"], &[], &[]).await?;
    let scripts = s.path("scripts");
    let site = s.path("site");
    std::fs::create_dir_all(&scripts)?;
    std::fs::create_dir_all(&site)?;
    std::fs::write(scripts.join("deploy.sh"), DEPLOY)?;
    let (url, hits) = site_server(site.clone()).await?;
    let probe = format!("http: {{ url: \"{url}\", expect_status: 200 }}");
    let mut c = s.client().await?;
    apply_pipeline(&mut c, &pipeline(&scripts, &site, &probe), &scripts).await?;

    let v1 = release(&mut c, "v1", 0, &[]).await?;
    let run = s.wait_final(&v1, RUN_TIMEOUT).await?;
    assert_eq!(
        run.state,
        RunState::Succeeded as i32,
        "{}",
        describe(Some(&run))
    );
    let log = String::from_utf8(logs(&mut c, &v1, "monitor").await?)?;
    assert!(
        log.contains(&format!("ok (GET {url}: status 200 (expected 200))")),
        "{log}"
    );
    let after_v1 = hits.load(Ordering::SeqCst);
    assert!(after_v1 >= 5, "about 1500ms / 150ms checks, got {after_v1}");

    let v2 = release(&mut c, "v2", 0, &[("BREAK", "1")]).await?;
    let run = s.wait_final(&v2, RUN_TIMEOUT).await?;
    assert_eq!(
        stage(&run, "monitor").state,
        StageState::Failed as i32,
        "{}",
        describe(Some(&run))
    );
    let log = String::from_utf8(logs(&mut c, &v2, "monitor").await?)?;
    assert!(
        log.contains("FAIL (GET ") && log.contains("status 503 (expected 200)"),
        "{log}"
    );

    let incident = eventually(
        "the incident to be resolved by the rollback",
        RUN_TIMEOUT,
        || async {
            let list = cdctl_json(&s, &["incident", "list"]);
            (list[0]["status"] == "rollback").then(|| list[0].clone())
        },
    )
    .await?;
    let (rollback, rb) = rollback_succeeded(&s, &incident).await?;
    let check_log = String::from_utf8(logs(&mut c, &rollback, "monitor").await?)?;
    assert!(
        check_log.contains("until the first passing check"),
        "{check_log}"
    );
    assert!(
        check_log.contains("check 1 at ") && !check_log.contains("check 2 at "),
        "{check_log}"
    );
    let passed_at = stage(&rb, "monitor")
        .attempts
        .last()
        .and_then(|a| a.result.as_ref())
        .map(|r| r.check_at_ms)
        .expect("result");
    assert_eq!(int(&incident, "resolved_ms"), passed_at);
    assert_eq!(std::fs::read_to_string(site.join("current"))?.trim(), "v1");
    Ok(())
}
