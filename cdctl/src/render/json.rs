//! JSON for `-o json`, built by hand from the proto messages so the shape is ours to keep
//! stable: field names as in the proto (snake_case), enum states as lowercase names
//! (`"awaiting_approval"`), maps as objects (keys sorted), times as milliseconds since the
//! epoch (0 when unset), absent optional messages as `null`.

use std::collections::HashMap;

use cd_proto::v1::{
    AgentInfo, Approval, Attempt, Deployment, Environment, GateDecision, LogChunk, Pipeline, Run,
    Stage, StageResult, TestCounts,
};
use serde_json::{Map, Value, json};

use super::{run_state_name, stage_state_name};
use crate::cluster_view::{DigestGroup, DigestRow, NodeRow};

fn string_map(map: &HashMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

fn number_map(map: &HashMap<String, f64>) -> Value {
    // Non-finite numbers have no JSON form; they become null.
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<Map<_, _>>(),
    )
}

pub fn pipeline(p: &Pipeline) -> Value {
    json!({
        "name": p.name,
        "version": p.version,
        "spec_yaml": p.spec_yaml,
        "file_name": p.file_name,
        "created_ms": p.created_ms,
        "stage_names": p.stage_names,
        "triggers": p.triggers,
        "webhook_refused": p.webhook_refused,
        "last_commit": p.last_commit,
        "last_commit_run": p.last_commit_run,
        "last_fire_ms": p.last_fire_ms,
        "concurrency": p.concurrency,
        "on_new_run": p.on_new_run,
    })
}

/// The answer to `pipeline apply`.
pub fn applied(p: Option<&Pipeline>, changed: bool) -> Value {
    json!({
        "pipeline": p.map(pipeline),
        "changed": changed,
    })
}

pub fn test_counts(t: &TestCounts) -> Value {
    json!({
        "total": t.total,
        "passed": t.passed,
        "failed": t.failed,
        "errors": t.errors,
        "skipped": t.skipped,
    })
}

pub fn stage_result(r: &StageResult) -> Value {
    json!({
        "exit_code": r.exit_code,
        "duration_ms": r.duration_ms,
        "tests": r.tests.as_ref().map(test_counts),
        "metrics": number_map(&r.metrics),
        "cancelled": r.cancelled,
        "errors": r.errors,
    })
}

pub fn attempt(a: &Attempt) -> Value {
    json!({
        "number": a.number,
        "agent": a.agent,
        "assigned_ms": a.assigned_ms,
        "started_ms": a.started_ms,
        "finished_ms": a.finished_ms,
        "lease_until_ms": a.lease_until_ms,
        "result": a.result.as_ref().map(stage_result),
        "end_reason": a.end_reason,
    })
}

pub fn gate(g: &GateDecision) -> Value {
    json!({
        "outcome": g.outcome,
        "reasons": g.reasons,
        "at_ms": g.at_ms,
    })
}

pub fn approval(a: &Approval) -> Value {
    json!({
        "identity": a.identity,
        "approved": a.approved,
        "comment": a.comment,
        "at_ms": a.at_ms,
    })
}

pub fn stage(s: &Stage) -> Value {
    json!({
        "name": s.name,
        "state": stage_state_name(s.state),
        "attempts": s.attempts.iter().map(attempt).collect::<Vec<_>>(),
        "reason": s.reason,
        "gate": s.gate.as_ref().map(gate),
        "approvals": s.approvals.iter().map(approval).collect::<Vec<_>>(),
        "environment": s.environment,
        "needs": s.needs,
        "waiting_for": s.waiting_for,
    })
}

pub fn run(r: &Run) -> Value {
    json!({
        "id": r.id,
        "pipeline": r.pipeline,
        "pipeline_version": r.pipeline_version,
        "revision": r.revision,
        "trigger": r.trigger,
        "state": run_state_name(r.state),
        "created_ms": r.created_ms,
        "finished_ms": r.finished_ms,
        "stages": r.stages.iter().map(stage).collect::<Vec<_>>(),
        "params": string_map(&r.params),
        "kind": r.kind,
        "reason": r.reason,
        "queued": r.queued,
        "superseded_by": r.superseded_by,
    })
}

pub fn deployment(d: &Deployment) -> Value {
    json!({
        "id": d.id,
        "environment": d.environment,
        "run_id": d.run_id,
        "pipeline": d.pipeline,
        "revision": d.revision,
        "stage": d.stage,
        "status": d.status,
        "started_ms": d.started_ms,
        "finished_ms": d.finished_ms,
        "metrics": number_map(&d.metrics),
        "kind": d.kind,
        "restores": d.restores,
    })
}

pub fn environment(e: &Environment) -> Value {
    json!({
        "name": e.name,
        "current": e.current.as_ref().map(deployment),
        "deployments": e.deployments,
    })
}

pub fn agent(a: &AgentInfo) -> Value {
    json!({
        "name": a.name,
        "labels": a.labels,
        "slots": a.slots,
        "connected": a.connected,
        "last_seen_ms": a.last_seen_ms,
        "running": a.running,
    })
}

/// A log chunk, with its bytes as text (invalid UTF-8 replaced).
pub fn log_chunk(c: &LogChunk) -> Value {
    let (run_id, stage, attempt) = c.attempt.as_ref().map_or(("", "", 0), |a| {
        (a.run_id.as_str(), a.stage.as_str(), a.attempt)
    });
    json!({
        "run_id": run_id,
        "stage": stage,
        "attempt": attempt,
        "seq": c.seq,
        "data": String::from_utf8_lossy(&c.data),
    })
}

/// A node of `cluster status`; what nobody could tell is `null`.
pub fn cluster_node(r: &NodeRow) -> Value {
    json!({
        "id": r.id,
        "address": r.address,
        "role": r.role,
        "term": r.term,
        "commit": r.commit,
        "applied": r.applied,
        "lag": r.lag,
        "last_contact_ms": r.last_contact_ms,
        "voter": r.voter,
        "error": r.error,
    })
}

/// The answer of `cluster digest`: each node's digest, the groups by applied index, and
/// whether nodes at the same index agree.
pub fn cluster_digests(rows: &[DigestRow], groups: &[DigestGroup], agree: bool) -> Value {
    json!({
        "nodes": rows.iter().map(|r| json!({
            "id": r.id,
            "address": r.address,
            "applied": r.applied,
            "digest": r.digest,
            "error": r.error,
        })).collect::<Vec<_>>(),
        "groups": groups.iter().map(|g| json!({
            "applied": g.applied,
            "agree": g.agrees(),
            "digests": g.digests.iter().map(|(digest, ids)| json!({
                "digest": digest,
                "nodes": ids,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "agree": agree,
    })
}

/// A list of messages as a JSON array.
pub fn list<T>(items: &[T], one: impl Fn(&T) -> Value) -> Value {
    Value::Array(items.iter().map(one).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::table::tests::sample_run;

    #[test]
    fn run_shape_is_stable() {
        let v = run(&sample_run());
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "created_ms",
                "finished_ms",
                "id",
                "kind",
                "params",
                "pipeline",
                "pipeline_version",
                "queued",
                "reason",
                "revision",
                "stages",
                "state",
                "superseded_by",
                "trigger"
            ]
        );
        assert_eq!(v["id"], "r-1");
        assert_eq!(v["state"], "running");
        assert_eq!(v["params"], json!({"ENV": "prod", "DEBUG": "1"}));
        assert_eq!(v["created_ms"], 1_700_000_000_000i64);

        let stages = v["stages"].as_array().unwrap();
        assert_eq!(stages.len(), 3);
        assert_eq!(stages[0]["name"], "build");
        assert_eq!(stages[0]["state"], "succeeded");
        assert_eq!(stages[0]["gate"], Value::Null);
        assert_eq!(stages[1]["state"], "running");
        assert_eq!(stages[2]["state"], "awaiting_approval");
        assert_eq!(stages[2]["environment"], "production");
        assert_eq!(stages[2]["needs"], json!(["test"]));

        let attempts = stages[1]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2);
        assert_eq!(attempts[0]["number"], 1);
        assert_eq!(attempts[0]["end_reason"], "lease lapsed");
        assert_eq!(attempts[0]["result"], Value::Null);
        assert_eq!(attempts[1]["agent"], "agent-2");

        let result = &stages[0]["attempts"][0]["result"];
        assert_eq!(result["exit_code"], 0);
        assert_eq!(result["duration_ms"], 45_000);
        assert_eq!(
            result["tests"],
            json!({"total": 10, "passed": 9, "failed": 1, "errors": 0, "skipped": 0})
        );
        assert_eq!(result["metrics"], json!({"accuracy": 0.93}));
        assert_eq!(result["errors"], json!([]));

        let g = &stages[2]["gate"];
        assert_eq!(g["outcome"], "waiting_approval");
        assert_eq!(g["reasons"], json!(["needs 1 approval, has 0"]));
        assert_eq!(
            stages[2]["approvals"][0]["identity"],
            "spiffe://conveyor.local/operator/bob"
        );
        assert_eq!(stages[2]["approvals"][0]["approved"], false);
    }

    #[test]
    fn environment_and_deployment_shape() {
        let d = Deployment {
            id: 7,
            environment: "production".into(),
            run_id: "r-1".into(),
            status: "succeeded".into(),
            kind: "rollback".into(),
            restores: 5,
            metrics: [("accuracy".to_string(), f64::NAN)].into_iter().collect(),
            ..Default::default()
        };
        let e = environment(&Environment {
            name: "production".into(),
            current: Some(d),
            deployments: 7,
        });
        assert_eq!(e["current"]["id"], 7);
        assert_eq!(e["current"]["restores"], 5);
        assert_eq!(e["current"]["kind"], "rollback");
        assert_eq!(e["current"]["metrics"], json!({"accuracy": null}));
        let empty = environment(&Environment::default());
        assert_eq!(empty["current"], Value::Null);
    }

    #[test]
    fn log_chunk_data_is_text() {
        let c = LogChunk {
            attempt: Some(cd_proto::v1::AttemptRef {
                run_id: "r".into(),
                stage: "s".into(),
                attempt: 2,
                ..Default::default()
            }),
            seq: 3,
            data: b"hi\xff\n".to_vec(),
            encoding: 0,
        };
        assert_eq!(
            log_chunk(&c),
            json!({"run_id": "r", "stage": "s", "attempt": 2, "seq": 3, "data": "hi\u{fffd}\n"})
        );
    }
}
