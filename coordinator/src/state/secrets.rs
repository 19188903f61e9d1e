//! Secrets in replicated state: name -> the value sealed by the leader (`secret_key.rs`), with
//! who set it and when. Apply only stores and removes records; it never sees a plaintext, so
//! neither does the Raft log, a snapshot or sled. Callers wrap both commands in `AsCaller`,
//! so the audit log records them (name only).

use serde::{Deserialize, Serialize};

use super::command::{DeleteSecret, SetSecret};
use super::{Outcome, State, StateError};

/// Most secrets a cluster keeps (each up to 64 KiB sealed, all in the state snapshot).
pub const MAX_SECRETS: usize = 1000;

/// One stored secret. Never holds the value in clear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub format: u32,
    pub key_id: Vec<u8>,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub updated_at_ms: i64,
    pub updated_by: String,
}

fn check_name(name: &str) -> Result<(), StateError> {
    match cd_common::secrets::name_problem(name) {
        None => Ok(()),
        Some(message) => Err(StateError::InvalidArgument {
            field: "name".into(),
            message,
        }),
    }
}

pub(super) fn set(state: &mut State, c: &SetSecret, at: i64) -> Result<Outcome, StateError> {
    check_name(&c.name)?;
    if c.ciphertext.is_empty() || c.nonce.is_empty() {
        return Err(StateError::InvalidArgument {
            field: "ciphertext".into(),
            message: "a secret must arrive sealed".into(),
        });
    }
    if !state.secrets.contains_key(&c.name) && state.secrets.len() >= MAX_SECRETS {
        return Err(StateError::FailedPrecondition(format!(
            "the cluster already keeps {MAX_SECRETS} secrets, the limit; delete one first"
        )));
    }
    state.secrets.insert(
        c.name.clone(),
        SecretRecord {
            format: c.format,
            key_id: c.key_id.clone(),
            nonce: c.nonce.clone(),
            ciphertext: c.ciphertext.clone(),
            updated_at_ms: at,
            updated_by: c.by.clone(),
        },
    );
    Ok(Outcome::Done)
}

pub(super) fn delete(state: &mut State, c: &DeleteSecret) -> Result<Outcome, StateError> {
    check_name(&c.name)?;
    match state.secrets.remove(&c.name) {
        Some(_) => Ok(Outcome::Done),
        None => Err(StateError::NotFound(format!(
            "secret {} does not exist",
            c.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::audit::as_caller;
    use super::super::testkit::*;
    use super::super::{Kind, State};
    use super::*;

    fn set_cmd(name: &str) -> SetSecret {
        SetSecret {
            name: name.into(),
            ciphertext: vec![1, 2, 3, 4],
            nonce: vec![9; 12],
            key_id: vec![7; 8],
            format: 1,
            by: "spiffe://c.local/operator/alice".into(),
        }
    }

    #[test]
    fn set_replace_delete_are_audited_by_name_and_survive_a_snapshot() {
        let mut k = Kit::new(&ml_pipeline(1));
        let op = "spiffe://c.local/operator/alice";
        k.ok(as_caller(op.into(), Kind::SetSecret(set_cmd("TOKEN"))));
        let rec = k.state.secrets.get("TOKEN").cloned();
        assert_eq!(rec.as_ref().map(|r| r.updated_by.as_str()), Some(op));
        assert_eq!(
            rec.as_ref().map(|r| r.ciphertext.clone()),
            Some(vec![1, 2, 3, 4])
        );
        let mut again = set_cmd("TOKEN");
        again.ciphertext = vec![5, 6];
        k.ok(as_caller(op.into(), Kind::SetSecret(again)));
        assert_eq!(k.state.secrets.len(), 1);
        let snap = k.state.to_snapshot().unwrap_or_default();
        let back = State::from_snapshot(&snap);
        assert_eq!(back.ok().map(|s| s.secrets), Some(k.state.secrets.clone()));
        k.ok(as_caller(
            op.into(),
            Kind::DeleteSecret(DeleteSecret {
                name: "TOKEN".into(),
            }),
        ));
        assert!(k.state.secrets.is_empty());
        let actions: Vec<(&str, &str)> = k
            .state
            .audit
            .iter()
            .map(|e| (e.action.as_str(), e.target.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("secret-set", "TOKEN"),
                ("secret-set", "TOKEN"),
                ("secret-delete", "TOKEN")
            ]
        );
    }

    #[test]
    fn bad_names_unsealed_values_and_unknown_deletes_are_refused() {
        let mut k = Kit::new(&ml_pipeline(1));
        let r = k.apply(Kind::SetSecret(set_cmd("lower")));
        assert!(
            matches!(&r.result, Err(StateError::InvalidArgument { field, .. }) if field == "name"),
            "{:?}",
            r.result
        );
        let mut unsealed = set_cmd("TOKEN");
        unsealed.ciphertext.clear();
        assert!(k.apply(Kind::SetSecret(unsealed)).result.is_err());
        let r = k.apply(Kind::DeleteSecret(DeleteSecret {
            name: "NOPE".into(),
        }));
        assert!(matches!(r.result, Err(StateError::NotFound(_))));
        assert!(k.state.secrets.is_empty());
    }
}
