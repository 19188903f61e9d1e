//! The coordinator cluster as several nodes see it, merged into one picture (pure functions:
//! no I/O, so every rule is unit-tested here).
//!
//! Each node answers `Status` for itself (role, term, commit, applied) and lists the members it
//! knows; only the leader knows each peer's progress (lag, last contact) and whether it votes.
//! [`merge`] takes every answer (and every endpoint that did not answer) and makes one row per
//! node: a node's own answer wins for its role, term, commit and applied index, the leader's
//! for lag, last contact and voter. [`digest_groups`] compares state digests between nodes at
//! the same applied index.

use std::collections::{BTreeMap, BTreeSet};

use cd_proto::v1::{ClusterStatus, NodeInfo, StateDigestResponse};

use crate::client::parse_endpoint;

/// The role shown for a node that did not answer.
pub const UNREACHABLE: &str = "unreachable";
/// The role shown when nobody who answered knows it.
pub const UNKNOWN: &str = "unknown";

/// What one endpoint said when asked for its status.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The URL asked.
    pub endpoint: String,
    /// The node's answer, or why there is none (one line).
    pub answer: Result<ClusterStatus, String>,
}

/// One node in the merged picture; `None` where no answer tells.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeRow {
    /// `None` for an endpoint that did not answer and whose address no member has.
    pub id: Option<u64>,
    pub address: String,
    /// `leader`, `follower`, `candidate`, `learner`, `unknown` or `unreachable`.
    pub role: String,
    pub term: Option<u64>,
    pub commit: Option<u64>,
    pub applied: Option<u64>,
    /// Entries behind the leader (the leader's view).
    pub lag: Option<u64>,
    /// Milliseconds since the leader last heard from the node (the leader's view).
    pub last_contact_ms: Option<i64>,
    pub voter: Option<bool>,
    /// Why the node did not answer.
    pub error: Option<String>,
}

/// Whether two URLs name the same endpoint once normalised (`host:port` = `https://host:port`).
pub fn same_address(a: &str, b: &str) -> bool {
    let norm = |s: &str| parse_endpoint(s).unwrap_or_else(|_| s.trim().to_string());
    !a.trim().is_empty() && norm(a) == norm(b)
}

/// The answering node's entry for itself.
fn own(status: &ClusterStatus) -> Option<&NodeInfo> {
    status.nodes.iter().find(|n| n.id == status.node_id)
}

fn role_of(info: Option<&NodeInfo>) -> String {
    info.map(|n| n.role.as_str())
        .filter(|r| !r.is_empty())
        .unwrap_or(UNKNOWN)
        .to_string()
}

/// Merges every node's answer into one row per node, in id order, followed by the endpoints
/// that did not answer and that no member's address matches (id unknown).
///
/// - A node's own answer (the first endpoint that answered as that id) gives its role, term,
///   commit and applied index. Without one, a node whose address was asked and failed is
///   `unreachable` with the error; otherwise its role is the leader's view, or `unknown`.
/// - The leader is a node whose own answer says `leader`; if two do (a deposed leader that has
///   not noticed yet), the higher term wins. Its answer gives every node's lag and last
///   contact (none for peers it knows no progress of) and whether it votes; without a
///   leader's answer, a node's own answer says whether it votes.
/// - The address is the node's own entry, else the leader's, else any answer's, else the
///   endpoint it answered on.
pub fn merge(probes: &[Probe]) -> Vec<NodeRow> {
    let answers: Vec<(&str, &ClusterStatus)> = probes
        .iter()
        .filter_map(|p| p.answer.as_ref().ok().map(|a| (p.endpoint.as_str(), a)))
        .collect();
    let mut selves: BTreeMap<u64, (&str, &ClusterStatus)> = BTreeMap::new();
    for &(endpoint, answer) in &answers {
        selves.entry(answer.node_id).or_insert((endpoint, answer));
    }
    let leader: Option<&ClusterStatus> = selves
        .values()
        .map(|&(_, answer)| answer)
        .filter(|answer| own(answer).is_some_and(|n| n.role == "leader"))
        .max_by_key(|answer| own(answer).map_or(0, |n| n.term));

    let mut ids: BTreeSet<u64> = selves.keys().copied().collect();
    for (_, answer) in &answers {
        ids.extend(answer.nodes.iter().map(|n| n.id));
    }

    let mut failure_used = vec![false; probes.len()];
    let mut rows = Vec::new();
    for id in ids {
        let own_answer = selves.get(&id);
        let own_info = own_answer.and_then(|(_, answer)| own(answer));
        let leader_info = leader.and_then(|l| l.nodes.iter().find(|n| n.id == id));
        let any_info = answers.iter().find_map(|(_, answer)| {
            answer
                .nodes
                .iter()
                .find(|n| n.id == id && !n.address.is_empty())
        });
        let address = [own_info, leader_info, any_info]
            .into_iter()
            .flatten()
            .map(|n| n.address.as_str())
            .find(|a| !a.is_empty())
            .or(own_answer.map(|&(endpoint, _)| endpoint))
            .unwrap_or_default()
            .to_string();
        let mut row = NodeRow {
            id: Some(id),
            address,
            ..NodeRow::default()
        };
        // Every failed probe of this node's address belongs to this row, not a row of its own.
        let mut failure = None;
        for (i, probe) in probes.iter().enumerate() {
            if let Err(why) = &probe.answer
                && same_address(&probe.endpoint, &row.address)
            {
                failure_used[i] = true;
                failure.get_or_insert(why);
            }
        }
        match (own_answer, failure) {
            (Some(_), _) => {
                row.role = role_of(own_info);
                row.term = own_info.map(|n| n.term);
                row.commit = own_info.map(|n| n.commit);
                row.applied = own_info.map(|n| n.applied);
            }
            (None, Some(why)) => {
                row.role = UNREACHABLE.to_string();
                row.error = Some(why.clone());
            }
            (None, None) => row.role = role_of(leader_info),
        }
        if let (Some(l), Some(info)) = (leader, leader_info) {
            if id == l.node_id {
                row.lag = Some(0);
            } else if info.role != UNKNOWN {
                row.lag = Some(info.lag);
                row.last_contact_ms = (info.last_contact_ms > 0).then_some(info.last_contact_ms);
            }
        }
        row.voter = leader_info.or(own_info).map(|n| n.voter);
        rows.push(row);
    }
    for (probe, used) in probes.iter().zip(failure_used) {
        if let (Err(why), false) = (&probe.answer, used) {
            rows.push(NodeRow {
                id: None,
                address: probe.endpoint.clone(),
                role: UNREACHABLE.to_string(),
                error: Some(why.clone()),
                ..NodeRow::default()
            });
        }
    }
    rows
}

/// One row of `cluster digest`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DigestRow {
    pub id: Option<u64>,
    pub address: String,
    /// The applied index the digest is for.
    pub applied: Option<u64>,
    pub digest: Option<String>,
    pub error: Option<String>,
}

/// One row per node of `rows`, with the digest that node returned (by node id), or why there
/// is none.
pub fn digest_rows(
    rows: &[NodeRow],
    digests: &BTreeMap<u64, Result<StateDigestResponse, String>>,
) -> Vec<DigestRow> {
    rows.iter()
        .map(|row| {
            let mut out = DigestRow {
                id: row.id,
                address: row.address.clone(),
                ..DigestRow::default()
            };
            match row.id.and_then(|id| digests.get(&id)) {
                Some(Ok(d)) => {
                    out.applied = Some(d.applied);
                    out.digest = Some(d.digest.clone());
                }
                Some(Err(why)) => out.error = Some(why.clone()),
                None => {
                    out.error = Some(
                        row.error
                            .clone()
                            .unwrap_or_else(|| "not asked: no address known".to_string()),
                    );
                }
            }
            out
        })
        .collect()
}

/// The nodes that reported a digest at one applied index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestGroup {
    pub applied: u64,
    /// Each digest seen at this index, with the nodes that reported it (ids in order).
    pub digests: BTreeMap<String, Vec<u64>>,
}

impl DigestGroup {
    /// Whether every node at this index reported the same digest.
    pub fn agrees(&self) -> bool {
        self.digests.len() <= 1
    }

    /// How many nodes are at this index.
    pub fn nodes(&self) -> usize {
        self.digests.values().map(Vec::len).sum()
    }
}

/// Groups the digests by applied index (lowest first).
pub fn digest_groups(rows: &[DigestRow]) -> Vec<DigestGroup> {
    let mut by_index: BTreeMap<u64, BTreeMap<String, Vec<u64>>> = BTreeMap::new();
    for row in rows {
        if let (Some(id), Some(applied), Some(digest)) = (row.id, row.applied, &row.digest) {
            by_index
                .entry(applied)
                .or_default()
                .entry(digest.clone())
                .or_default()
                .push(id);
        }
    }
    by_index
        .into_iter()
        .map(|(applied, digests)| DigestGroup { applied, digests })
        .collect()
}

fn node_list(ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    match ids.as_slice() {
        [one] => format!("node {one}"),
        _ => format!("nodes {}", ids.join(", ")),
    }
}

/// The verdict under the digest table: whether every applied index shared by several nodes
/// has one digest, and lines saying so.
pub fn digest_verdict(groups: &[DigestGroup]) -> (bool, Vec<String>) {
    let agree = groups.iter().all(DigestGroup::agrees);
    let total: usize = groups.iter().map(DigestGroup::nodes).sum();
    let mut lines = Vec::new();
    match groups {
        [] => lines.push("no node returned a digest; nothing to compare".to_string()),
        [g] if g.agrees() && total > 1 => lines.push(format!(
            "all {total} nodes agree: same digest at applied index {}",
            g.applied
        )),
        _ => {
            for g in groups {
                let ids: Vec<u64> = g.digests.values().flatten().copied().collect();
                let line = if !g.agrees() {
                    let parts: Vec<String> = g
                        .digests
                        .iter()
                        .map(|(digest, ids)| format!("{} has {digest}", node_list(ids)))
                        .collect();
                    format!(
                        "applied {}: DIGESTS DIFFER: {}",
                        g.applied,
                        parts.join("; ")
                    )
                } else if ids.len() > 1 {
                    format!("applied {}: {} agree", g.applied, node_list(&ids))
                } else {
                    format!(
                        "applied {}: only {} (nothing to compare with)",
                        g.applied,
                        node_list(&ids)
                    )
                };
                lines.push(line);
            }
            lines.push(if !agree {
                "nodes at the same applied index DISAGREE: the replicated state has diverged"
                    .to_string()
            } else if groups.iter().any(|g| g.nodes() > 1) {
                "nodes at the same applied index agree".to_string()
            } else {
                "no two nodes are at the same applied index; run again to compare".to_string()
            });
        }
    }
    (agree, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64, role: &str, term: u64, applied: u64) -> NodeInfo {
        NodeInfo {
            id,
            address: format!("https://127.0.0.1:700{id}"),
            role: role.into(),
            term,
            commit: applied,
            applied,
            voter: true,
            ..NodeInfo::default()
        }
    }

    /// What a follower says: itself in full, peers as `unknown` with zeros.
    fn follower(id: u64, leader: u64, members: &[u64], term: u64, applied: u64) -> ClusterStatus {
        ClusterStatus {
            node_id: id,
            leader_id: leader,
            leader_address: format!("https://127.0.0.1:700{leader}"),
            nodes: members
                .iter()
                .map(|&m| {
                    if m == id {
                        info(m, "follower", term, applied)
                    } else {
                        info(m, "unknown", 0, 0)
                    }
                })
                .collect(),
        }
    }

    /// What the leader says: itself in full, peers with progress (lag, last contact).
    fn leader(
        id: u64,
        members: &[(u64, u64, i64, bool)],
        term: u64,
        applied: u64,
    ) -> ClusterStatus {
        let mut nodes = vec![info(id, "leader", term, applied)];
        for &(m, lag, contact, voter) in members {
            nodes.push(NodeInfo {
                role: if voter { "follower" } else { "learner" }.into(),
                term: 0,
                commit: 0,
                applied: 0,
                lag,
                last_contact_ms: contact,
                voter,
                ..info(m, "", 0, 0)
            });
        }
        nodes.sort_by_key(|n| n.id);
        ClusterStatus {
            node_id: id,
            leader_id: id,
            leader_address: format!("https://127.0.0.1:700{id}"),
            nodes,
        }
    }

    fn ok(endpoint: &str, status: ClusterStatus) -> Probe {
        Probe {
            endpoint: endpoint.into(),
            answer: Ok(status),
        }
    }

    fn failed(endpoint: &str, why: &str) -> Probe {
        Probe {
            endpoint: endpoint.into(),
            answer: Err(why.into()),
        }
    }

    #[test]
    fn own_answer_wins_for_state_and_leader_for_progress() {
        let probes = [
            ok("https://127.0.0.1:7002", follower(2, 1, &[1, 2, 3], 5, 40)),
            ok(
                "https://127.0.0.1:7001",
                leader(1, &[(2, 2, 120, true), (3, 0, 0, false)], 5, 42),
            ),
            failed("https://127.0.0.1:7003", "connect: connection refused"),
        ];
        let rows = merge(&probes);
        assert_eq!(rows.len(), 3, "{rows:#?}");
        assert_eq!(
            rows[0],
            NodeRow {
                id: Some(1),
                address: "https://127.0.0.1:7001".into(),
                role: "leader".into(),
                term: Some(5),
                commit: Some(42),
                applied: Some(42),
                lag: Some(0),
                last_contact_ms: None,
                voter: Some(true),
                error: None,
            }
        );
        assert_eq!(
            rows[1],
            NodeRow {
                id: Some(2),
                address: "https://127.0.0.1:7002".into(),
                role: "follower".into(),
                term: Some(5),
                commit: Some(40),
                applied: Some(40),
                lag: Some(2),
                last_contact_ms: Some(120),
                voter: Some(true),
                error: None,
            }
        );
        // Node 3 did not answer: unreachable with the error, the leader's view of its progress
        // and vote, and nothing of its own.
        assert_eq!(
            rows[2],
            NodeRow {
                id: Some(3),
                address: "https://127.0.0.1:7003".into(),
                role: "unreachable".into(),
                term: None,
                commit: None,
                applied: None,
                lag: Some(0),
                last_contact_ms: None,
                voter: Some(false),
                error: Some("connect: connection refused".into()),
            }
        );
    }

    #[test]
    fn without_the_leader_progress_is_unknown_and_roles_come_from_each_node() {
        let probes = [
            ok("https://127.0.0.1:7002", follower(2, 1, &[1, 2, 3], 5, 40)),
            ok("https://127.0.0.1:7003", follower(3, 1, &[1, 2, 3], 5, 39)),
            failed("https://127.0.0.1:7001", "no answer"),
        ];
        let rows = merge(&probes);
        let roles: Vec<&str> = rows.iter().map(|r| r.role.as_str()).collect();
        assert_eq!(roles, ["unreachable", "follower", "follower"]);
        assert!(
            rows.iter()
                .all(|r| r.lag.is_none() && r.last_contact_ms.is_none())
        );
        // Followers' views of their peers (zeros) never replace a node's own numbers.
        assert_eq!(rows[2].applied, Some(39));
        assert_eq!(rows[0].applied, None);
        assert_eq!(rows[0].voter, None);
        assert_eq!(rows[1].voter, Some(true));
    }

    #[test]
    fn a_member_nobody_could_ask_takes_the_leaders_view_of_its_role() {
        let mut status = leader(1, &[(4, 7, 900, false)], 2, 10);
        status.nodes[1].address.clear();
        let rows = merge(&[ok("https://127.0.0.1:7001", status)]);
        assert_eq!(rows[1].id, Some(4));
        assert_eq!(rows[1].role, "learner");
        assert_eq!(rows[1].address, "");
        assert_eq!(rows[1].lag, Some(7));
        assert_eq!(rows[1].last_contact_ms, Some(900));
        assert_eq!(rows[1].error, None);
    }

    #[test]
    fn unknown_endpoints_that_fail_get_rows_of_their_own_at_the_end() {
        let probes = [
            failed("https://10.0.0.9:7400", "connect: timed out"),
            ok("https://127.0.0.1:7001", leader(1, &[], 1, 3)),
        ];
        let rows = merge(&probes);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, Some(1));
        assert_eq!(
            rows[1],
            NodeRow {
                id: None,
                address: "https://10.0.0.9:7400".into(),
                role: "unreachable".into(),
                error: Some("connect: timed out".into()),
                ..NodeRow::default()
            }
        );
    }

    #[test]
    fn the_leader_with_the_higher_term_wins_and_addresses_match_normalised() {
        // Node 1 still thinks it leads (term 3); node 2 leads at term 4.
        let old = leader(1, &[(2, 9, 5000, true)], 3, 20);
        let new = leader(2, &[(1, 4, 300, true)], 4, 30);
        let probes = [
            ok("https://127.0.0.1:7001", old),
            ok("https://127.0.0.1:7002", new),
            // The same failed address, written without the scheme, joins node 3's row.
            failed("127.0.0.1:7003", "refused"),
        ];
        let mut rows = merge(&probes);
        assert_eq!(rows[0].role, "leader");
        assert_eq!(rows[0].term, Some(3));
        assert_eq!(rows[0].lag, Some(4));
        assert_eq!(rows[0].last_contact_ms, Some(300));
        assert_eq!(rows[1].lag, Some(0));
        // Node 3 is no member here: the failure gets a row of its own, id unknown.
        assert_eq!(rows.len(), 3, "{rows:#?}");
        assert_eq!((rows[2].id, rows[2].role.as_str()), (None, "unreachable"));

        let mut status = leader(2, &[(1, 0, 1, true), (3, 0, 0, true)], 4, 30);
        status.nodes[2].role = UNKNOWN.into();
        rows = merge(&[
            ok("https://127.0.0.1:7002", status),
            failed("127.0.0.1:7003", "refused"),
        ]);
        assert_eq!(rows.len(), 3, "{rows:#?}");
        assert_eq!(rows[2].role, "unreachable");
        assert_eq!(rows[2].error.as_deref(), Some("refused"));
        // The leader knows no progress of node 3.
        assert_eq!(rows[2].lag, None);
    }

    #[test]
    fn a_node_reached_on_another_url_keeps_the_member_address() {
        let mut status = follower(2, 1, &[1, 2], 1, 1);
        status.nodes[1].address = "https://node-2:7002".into();
        let rows = merge(&[ok("https://127.0.0.1:7002", status)]);
        assert_eq!(rows[1].address, "https://node-2:7002");
        assert_eq!(rows[1].role, "follower");
        // Node 1: a follower does not know its peers' roles.
        assert_eq!(rows[0].role, "unknown");
    }

    fn drow(id: u64, applied: u64, digest: &str) -> DigestRow {
        DigestRow {
            id: Some(id),
            address: format!("https://127.0.0.1:700{id}"),
            applied: Some(applied),
            digest: Some(digest.into()),
            error: None,
        }
    }

    #[test]
    fn digests_agree_per_applied_index() {
        let (agree, lines) = digest_verdict(&digest_groups(&[
            drow(1, 42, "aa"),
            drow(2, 42, "aa"),
            drow(3, 42, "aa"),
        ]));
        assert!(agree);
        assert_eq!(
            lines,
            ["all 3 nodes agree: same digest at applied index 42"]
        );

        let (agree, lines) = digest_verdict(&digest_groups(&[
            drow(1, 42, "aa"),
            drow(2, 41, "bb"),
            drow(3, 42, "aa"),
            DigestRow {
                id: Some(4),
                error: Some("refused".into()),
                ..DigestRow::default()
            },
        ]));
        assert!(agree);
        assert_eq!(
            lines,
            [
                "applied 41: only node 2 (nothing to compare with)",
                "applied 42: nodes 1, 3 agree",
                "nodes at the same applied index agree",
            ]
        );

        let (agree, lines) = digest_verdict(&digest_groups(&[
            drow(1, 42, "aa"),
            drow(2, 42, "bb"),
            drow(3, 42, "aa"),
        ]));
        assert!(!agree);
        assert_eq!(
            lines[0],
            "applied 42: DIGESTS DIFFER: nodes 1, 3 has aa; node 2 has bb"
        );
        assert!(lines[1].contains("DISAGREE"));

        let (agree, lines) = digest_verdict(&digest_groups(&[drow(1, 1, "x"), drow(2, 2, "y")]));
        assert!(agree);
        assert!(lines.last().unwrap().contains("no two nodes"));
        let (agree, lines) = digest_verdict(&[]);
        assert!(agree);
        assert_eq!(lines, ["no node returned a digest; nothing to compare"]);
    }

    #[test]
    fn digest_rows_follow_the_merged_rows() {
        let rows = merge(&[
            ok(
                "https://127.0.0.1:7001",
                leader(1, &[(2, 0, 1, true)], 1, 5),
            ),
            failed("https://127.0.0.1:7002", "refused"),
            failed("https://10.0.0.1:1", "timed out"),
        ]);
        let digests = BTreeMap::from([(
            1,
            Ok(StateDigestResponse {
                applied: 5,
                digest: "d1".into(),
            }),
        )]);
        let out = digest_rows(&rows, &digests);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].digest.as_deref(), Some("d1"));
        assert_eq!(out[0].applied, Some(5));
        assert_eq!(out[1].error.as_deref(), Some("refused"));
        assert_eq!(out[2].id, None);
        assert_eq!(out[2].error.as_deref(), Some("timed out"));
    }
}
