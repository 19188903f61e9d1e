//! The audit log: every write an API caller makes (apply, start, cancel, approve, reject,
//! rollback, incidents, revoke) with who made it and when. The API wraps such a write in
//! `AsCaller`; apply runs the inner command and, when it succeeds, appends an entry. Refused
//! writes change nothing and are not recorded. Only the newest `MAX_ENTRIES` are kept.

use serde::{Deserialize, Serialize};

use super::command::{AsCaller, Command, Kind};
use super::{Event, Outcome, State, StateError};

/// Entries kept in replicated state (older ones are dropped, oldest first).
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the whole history (1-based), stable when old entries are dropped.
    pub seq: u64,
    pub at_ms: i64,
    pub identity: String,
    /// `apply`, `start`, `cancel`, `approve`, `reject`, `rollback`, `incident-open`,
    /// `incident-resolve`, `revoke`, `secret-set`, `secret-delete`.
    pub action: String,
    /// What it acted on: pipeline, run (and stage), environment, incident or identity.
    pub target: String,
}

/// Wraps a write so apply records it with `identity`.
pub fn as_caller(identity: String, kind: Kind) -> Kind {
    Kind::AsCaller(AsCaller {
        identity,
        command: Some(Box::new(Command {
            version: super::command::COMMAND_VERSION,
            at_ms: 0,
            kind: Some(kind),
        })),
    })
}

/// The action and target of a write that is audited, or `None` for other commands.
fn describe(kind: &Kind, out: &Outcome) -> Option<(&'static str, String)> {
    Some(match kind {
        Kind::ApplyPipeline(c) => ("apply", c.name.clone()),
        Kind::StartRun(c) => match out {
            Outcome::Run(id) => ("start", id.clone()),
            _ => ("start", c.pipeline.clone()),
        },
        Kind::CancelRun(c) => ("cancel", c.run_id.clone()),
        Kind::Approve(c) => ("approve", format!("{}/{}", c.run_id, c.stage)),
        Kind::Reject(c) => ("reject", format!("{}/{}", c.run_id, c.stage)),
        Kind::Rollback(c) => match out {
            Outcome::Run(id) => ("rollback", format!("{} ({id})", c.environment)),
            _ => ("rollback", c.environment.clone()),
        },
        Kind::OpenIncident(c) => match out {
            Outcome::Incident(id) => ("incident-open", format!("{} (#{id})", c.environment)),
            _ => ("incident-open", c.environment.clone()),
        },
        Kind::ResolveIncident(c) => ("incident-resolve", format!("#{}", c.id)),
        Kind::Revoke(c) => ("revoke", c.identity.clone()),
        // The name only: a secret's value never reaches the audit log.
        Kind::SetSecret(c) => ("secret-set", c.name.clone()),
        Kind::DeleteSecret(c) => ("secret-delete", c.name.clone()),
        _ => return None,
    })
}

pub(super) fn apply_as_caller(
    state: &mut State,
    c: &AsCaller,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    let invalid = |message: &str| StateError::InvalidArgument {
        field: "command".into(),
        message: message.into(),
    };
    let kind = c
        .command
        .as_ref()
        .and_then(|cmd| cmd.kind.as_ref())
        .ok_or_else(|| invalid("an audited write carries no command"))?;
    if matches!(kind, Kind::AsCaller(_)) {
        return Err(invalid("audited writes do not nest"));
    }
    let out = super::apply_kind(state, kind, at, events)?;
    if let Some((action, target)) = describe(kind, &out) {
        let seq = state.audit.back().map_or(1, |e| e.seq + 1);
        state.audit.push_back(AuditEntry {
            seq,
            at_ms: at,
            identity: c.identity.clone(),
            action: action.to_string(),
            target,
        });
        if state.audit.len() > MAX_ENTRIES {
            let excess = state.audit.len() - MAX_ENTRIES;
            state.audit.drain(..excess);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::command::Approve;
    use super::super::testkit::*;
    use super::*;

    #[test]
    fn successful_writes_are_recorded_with_their_caller_and_refused_ones_are_not() {
        let mut k = Kit::new(&ml_pipeline(1));
        let op = "spiffe://c.local/operator/alice";
        let run = match k.ok(as_caller(
            op.into(),
            Kind::StartRun(super::super::command::StartRun {
                pipeline: "ml".into(),
                ..Default::default()
            }),
        )) {
            Outcome::Run(id) => id,
            other => panic!("{other:?}"),
        };
        let refused = k.apply(as_caller(
            op.into(),
            Kind::Approve(Approve {
                run_id: run.clone(),
                stage: "deploy".into(),
                identity: op.into(),
                comment: String::new(),
            }),
        ));
        assert!(
            refused.result.is_err(),
            "deploy is not awaiting approval yet"
        );
        assert_eq!(k.state.audit.len(), 1, "{:?}", k.state.audit);
        let e = &k.state.audit[0];
        assert_eq!(
            (e.seq, e.identity.as_str(), e.action.as_str()),
            (1, op, "start")
        );
        assert_eq!(e.target, run);
        assert!(e.at_ms > 0);
        // Nesting is refused; the cap keeps the newest entries with their sequence numbers.
        let nested = as_caller(
            op.into(),
            as_caller(op.into(), Kind::Noop(Default::default())),
        );
        assert!(k.apply(nested).result.is_err());
        for i in 0..MAX_ENTRIES + 5 {
            k.ok(as_caller(
                op.into(),
                Kind::Revoke(super::super::command::Revoke {
                    identity: format!("spiffe://c.local/agent/a{i}"),
                    reason: String::new(),
                    by: op.into(),
                }),
            ));
        }
        assert_eq!(k.state.audit.len(), MAX_ENTRIES);
        assert_eq!(
            k.state.audit.back().map(|e| e.seq),
            Some(MAX_ENTRIES as u64 + 6)
        );
    }
}
