//! Revocation: an agent's or operator's identity is refused from the moment the `Revoke`
//! entry is applied, even though its certificate stays valid until it expires.

use cd_common::certs::{Identity, Role};
use serde::{Deserialize, Serialize};

use super::command::Revoke;
use super::{Event, Outcome, State, StateError};

/// When and why an identity was revoked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revocation {
    pub at_ms: i64,
    pub by: String,
    pub reason: String,
}

impl State {
    /// Whether the identity (`spiffe://...` text) has been revoked.
    pub fn is_revoked(&self, identity: &str) -> bool {
        self.revoked.contains_key(identity)
    }
}

/// Records the revocation (a second one changes nothing and answers `Revoked(false)`).
pub(super) fn revoke(
    state: &mut State,
    c: &Revoke,
    at: i64,
    events: &mut Vec<Event>,
) -> Result<Outcome, StateError> {
    let id: Identity = c
        .identity
        .parse()
        .map_err(
            |e: cd_common::certs::CertError| StateError::InvalidArgument {
                field: "identity".into(),
                message: e.to_string(),
            },
        )?;
    if id.role == Role::Coordinator {
        return Err(StateError::InvalidArgument {
            field: "identity".into(),
            message: format!(
                "{id} is a coordinator; remove a node with `cdctl cluster remove` instead"
            ),
        });
    }
    let key = id.to_string();
    if state.revoked.contains_key(&key) {
        return Ok(Outcome::Revoked(false));
    }
    state.revoked.insert(
        key.clone(),
        Revocation {
            at_ms: at,
            by: c.by.clone(),
            reason: c.reason.clone(),
        },
    );
    events.push(Event::Revoked { identity: key });
    Ok(Outcome::Revoked(true))
}

#[cfg(test)]
mod tests {
    use super::super::command::{Command, Kind};
    use super::super::{State, apply};
    use super::*;

    fn revoke(st: &mut State, identity: &str, at: i64) -> super::super::Applied {
        let c = Kind::Revoke(Revoke {
            identity: identity.into(),
            reason: "laptop lost".into(),
            by: "spiffe://c.local/operator/root".into(),
        });
        apply(st, &Command::new(at, c), at as u64)
    }

    #[test]
    fn a_revocation_is_recorded_once_and_announced() {
        let mut st = State::default();
        let before = st.digest();
        let a = revoke(&mut st, "spiffe://c.local/agent/a1", 5);
        assert_eq!(a.result, Ok(Outcome::Revoked(true)));
        assert_eq!(
            a.events,
            vec![Event::Revoked {
                identity: "spiffe://c.local/agent/a1".into()
            }]
        );
        assert!(st.is_revoked("spiffe://c.local/agent/a1"));
        assert!(!st.is_revoked("spiffe://c.local/agent/a2"));
        assert_ne!(st.digest(), before);
        let again = revoke(&mut st, "spiffe://c.local/agent/a1", 6);
        assert_eq!(again.result, Ok(Outcome::Revoked(false)));
        assert!(again.events.is_empty());
        assert_eq!(st.revoked["spiffe://c.local/agent/a1"].at_ms, 5);
        // Survives a snapshot.
        let snap = st.to_snapshot().expect("snapshot");
        let back = State::from_snapshot(&snap).expect("load");
        assert!(back.is_revoked("spiffe://c.local/agent/a1"));
    }

    #[test]
    fn coordinators_and_malformed_identities_cannot_be_revoked() {
        let mut st = State::default();
        for bad in [
            "spiffe://c.local/coordinator/n1",
            "agent-1",
            "spiffe://c.local/admin/x",
        ] {
            let a = revoke(&mut st, bad, 1);
            assert!(
                matches!(a.result, Err(StateError::InvalidArgument { ref field, .. }) if field == "identity"),
                "{bad}: {:?}",
                a.result
            );
        }
        assert!(st.revoked.is_empty());
    }
}
