//! `gate.approvers`: who may approve or reject a gated stage. An entry is an operator's name
//! (`alice`), a full SPIFFE identity (`spiffe://<td>/operator/alice`) or a role
//! (`role:operator`). Only operators may call Approve at all (the authorization table), so
//! every entry names operators.

use crate::certs::{Identity, Role};
use crate::names::name_problem;

/// Why `entry` cannot be an approver, or `None`.
pub fn approver_problem(entry: &str) -> Option<String> {
    if let Some(role) = entry.strip_prefix("role:") {
        return match role.parse::<Role>() {
            Ok(Role::Operator) => None,
            Ok(other) => Some(format!(
                "role {other} cannot approve; only operators may (use `role:operator`)"
            )),
            Err(e) => Some(e.to_string()),
        };
    }
    if entry.starts_with("spiffe://") {
        return match entry.parse::<Identity>() {
            Ok(id) if id.role == Role::Operator => None,
            Ok(id) => Some(format!(
                "{id} has role {}; only operators may approve",
                id.role
            )),
            Err(e) => Some(e.to_string()),
        };
    }
    name_problem(entry).map(|p| {
        format!("{p} (an approver is a name, spiffe://<td>/operator/<name> or role:operator)")
    })
}

/// Whether `caller` (a `spiffe://` identity as text) matches one of `approvers`; an empty list
/// lets every operator decide.
pub fn may_approve(approvers: &[String], caller: &str) -> bool {
    if approvers.is_empty() {
        return true;
    }
    let Ok(id) = caller.parse::<Identity>() else {
        return false;
    };
    approvers.iter().any(|a| {
        if let Some(role) = a.strip_prefix("role:") {
            role == id.role.as_str()
        } else if a.starts_with("spiffe://") {
            *a == caller
        } else {
            id.role == Role::Operator && *a == id.name
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_names_operator_identities_or_the_operator_role() {
        assert_eq!(approver_problem("alice"), None);
        assert_eq!(approver_problem("spiffe://c.local/operator/alice"), None);
        assert_eq!(approver_problem("role:operator"), None);
        assert!(approver_problem("role:viewer").is_some_and(|p| p.contains("cannot approve")));
        assert!(approver_problem("role:admin").is_some_and(|p| p.contains("unknown role")));
        assert!(
            approver_problem("spiffe://c.local/viewer/v")
                .is_some_and(|p| p.contains("only operators"))
        );
        assert!(approver_problem("../x").is_some());
    }

    #[test]
    fn callers_match_by_name_identity_or_role() {
        let alice = "spiffe://c.local/operator/alice";
        let bob = "spiffe://c.local/operator/bob";
        let names = vec!["alice".to_string()];
        assert!(may_approve(&names, alice));
        assert!(!may_approve(&names, bob));
        assert!(!may_approve(&names, "unknown"));
        // A viewer named alice is not the operator alice.
        assert!(!may_approve(&names, "spiffe://c.local/viewer/alice"));
        let ids = vec![bob.to_string()];
        assert!(may_approve(&ids, bob) && !may_approve(&ids, alice));
        assert!(!may_approve(&ids, "spiffe://other.td/operator/bob"));
        let role = vec!["role:operator".to_string()];
        assert!(may_approve(&role, alice));
        assert!(may_approve(&[], bob));
    }
}
