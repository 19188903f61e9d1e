//! Secrets in replicated state: name -> the value sealed by the leader (`secret_key.rs`), with
//! who set it and when. Apply only stores and removes records; it never sees a plaintext, so
//! neither does the Raft log, a snapshot or sled. Callers wrap both commands in `AsCaller`,
//! so the audit log records them (name only).

use serde::{Deserialize, Serialize};

use super::command::{DeleteSecret, SetSecret};
use super::{Outcome, State, StateError};

/// Most secrets a cluster keeps.
pub const MAX_SECRETS: usize = 1000;
/// Most sealed bytes all secrets together may take: they live in every state snapshot.
pub const MAX_TOTAL_BYTES: usize = 8 * 1024 * 1024;

/// One stored secret. Never holds the value in clear. Bytes are hex in snapshots (serde would
/// write a JSON number per byte, four times the size).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub format: u32,
    #[serde(with = "hex_bytes")]
    pub key_id: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub nonce: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub ciphertext: Vec<u8>,
    pub updated_at_ms: i64,
    pub updated_by: String,
}

/// Bytes as a lowercase hex string.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if !text.len().is_multiple_of(2) {
            return Err(D::Error::custom("odd number of hex characters"));
        }
        (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or_else(|| D::Error::custom("not hex"))
            })
            .collect()
    }
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
    let others: usize = state
        .secrets
        .iter()
        .filter(|(name, _)| **name != c.name)
        .map(|(_, r)| r.ciphertext.len())
        .sum();
    if others + c.ciphertext.len() > MAX_TOTAL_BYTES {
        return Err(StateError::FailedPrecondition(format!(
            "secrets would take {} bytes together, over the limit of {MAX_TOTAL_BYTES}; delete some first",
            others + c.ciphertext.len()
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
        let text = String::from_utf8_lossy(&snap);
        assert!(
            text.contains("\"ciphertext\":\"0506\""),
            "hex in snapshots: {text}"
        );
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
        let mut huge = set_cmd("HUGE");
        huge.ciphertext = vec![0; MAX_TOTAL_BYTES + 1];
        let r = k.apply(Kind::SetSecret(huge));
        assert!(
            matches!(&r.result, Err(StateError::FailedPrecondition(m)) if m.contains("over the limit")),
            "{:?}",
            r.result
        );
        assert!(k.state.secrets.is_empty());
    }
}
