//! `cdctl cluster status|add|remove|transfer-leader|digest`: the coordinators' Raft cluster.
//!
//! `status` and `digest` ask every node they can find: the `--endpoint` list, then every member
//! address the answers name, until no new address turns up. The merging rules are in
//! [`crate::cluster_view`]. The membership and leadership changes are writes: they go through
//! [`crate::client::Conn::call`], which follows `cd-leader` and waits out elections, and then
//! print the cluster's status as `status` does.

use std::collections::{BTreeMap, HashSet};

use cd_proto::v1::{
    AddNodeRequest, ClusterStatus, ClusterStatusRequest, RemoveNodeRequest, StateDigestRequest,
    StateDigestResponse, TransferLeaderRequest,
};
use futures::future::join_all;
use tonic::Status;

use super::{Ctx, print};
use crate::cli::{ClusterCommand, Output};
use crate::client::{ClusterClient, Conn, ConnectFailure, parse_endpoint};
use crate::cluster_view::{NodeRow, Probe, digest_groups, digest_rows, digest_verdict, merge};
use crate::error::StatusError;
use crate::render::{json, table};

pub async fn run(ctx: &Ctx, cmd: ClusterCommand) -> anyhow::Result<u8> {
    match cmd {
        ClusterCommand::Status => status(ctx).await,
        ClusterCommand::Add { id, url } => {
            let req = AddNodeRequest {
                id,
                address: url.clone(),
                // Only a coordinator that lost its data asks to be re-added.
                rejoin: false,
            };
            let done = format!(
                "node {id} added as a learner at {url}; the leader makes it a voter once it has \
                 caught up"
            );
            change(ctx, "cluster add", done, async |mut c| {
                c.add_node(req.clone()).await
            })
            .await
        }
        ClusterCommand::Remove { id } => {
            let done = format!("node {id} removed");
            change(ctx, "cluster remove", done, async |mut c| {
                c.remove_node(RemoveNodeRequest { id }).await
            })
            .await
        }
        ClusterCommand::TransferLeader { id } => {
            let done = format!("node {id} is the leader");
            change(ctx, "cluster transfer-leader", done, async |mut c| {
                c.transfer_leader(TransferLeaderRequest { id }).await
            })
            .await
        }
        ClusterCommand::Digest => digest(ctx).await,
    }
}

/// Every node's answers, as found by [`survey`].
struct Survey {
    probes: Vec<Probe>,
    /// StateDigest answers by node id (when asked for).
    digests: BTreeMap<u64, Result<StateDigestResponse, String>>,
}

/// A status (and maybe digest) error as one line: `unavailable: not the leader`.
fn status_text(status: Status) -> String {
    StatusError::from(status).to_string()
}

/// Asks one endpoint for its status (and its digest, when `with_digest`). Only an unusable TLS
/// configuration is an error; a node that cannot be reached is a failed [`Probe`].
async fn ask(
    ctx: &Ctx,
    endpoint: String,
    with_digest: bool,
) -> anyhow::Result<(Probe, Option<Result<StateDigestResponse, String>>)> {
    let mut conn = match Conn::<ClusterClient>::connect_to(&ctx.connect, &endpoint).await {
        Ok(conn) => conn,
        Err(ConnectFailure::Config(err)) => return Err(err),
        Err(ConnectFailure::Transport(why)) => {
            let answer = Err(format!("connect: {why}"));
            return Ok((Probe { endpoint, answer }, None));
        }
    };
    let answer = conn
        .call_once(async |mut c| c.status(ClusterStatusRequest {}).await)
        .await
        .map_err(status_text);
    let digest = if with_digest && answer.is_ok() {
        Some(
            conn.call_once(async |mut c| c.state_digest(StateDigestRequest {}).await)
                .await
                .map_err(status_text),
        )
    } else {
        None
    };
    Ok((Probe { endpoint, answer }, digest))
}

/// Addresses still to ask, each once.
#[derive(Default)]
struct Frontier {
    seen: HashSet<String>,
    queue: Vec<String>,
    /// Member addresses that are not URLs: reported as failed probes.
    invalid: Vec<Probe>,
}

impl Frontier {
    fn add(&mut self, address: &str) {
        let address = address.trim();
        if address.is_empty() {
            return;
        }
        match parse_endpoint(address) {
            Ok(url) => {
                if self.seen.insert(url.clone()) {
                    self.queue.push(url);
                }
            }
            Err(why) => {
                if self.seen.insert(address.to_string()) {
                    self.invalid.push(Probe {
                        endpoint: address.to_string(),
                        answer: Err(format!("not a usable address: {why}")),
                    });
                }
            }
        }
    }

    fn add_members(&mut self, probe: &Probe) {
        if let Ok(status) = &probe.answer {
            for node in &status.nodes {
                self.add(&node.address);
            }
            self.add(&status.leader_address);
        }
    }
}

/// Asks every node that can be found: first `seed` (answers already in hand, not asked
/// again), then every `--endpoint`, then every member address any answer names, round after
/// round (each round concurrently) until no new address turns up.
async fn survey(ctx: &Ctx, seed: Vec<Probe>, with_digest: bool) -> anyhow::Result<Survey> {
    let mut frontier = Frontier::default();
    for probe in &seed {
        frontier
            .seen
            .insert(parse_endpoint(&probe.endpoint).unwrap_or_else(|_| probe.endpoint.clone()));
    }
    for endpoint in &ctx.connect.endpoints {
        frontier.add(endpoint);
    }
    for probe in &seed {
        frontier.add_members(probe);
    }
    let mut survey = Survey {
        probes: seed,
        digests: BTreeMap::new(),
    };
    while !frontier.queue.is_empty() {
        let round = std::mem::take(&mut frontier.queue);
        let answers = join_all(round.into_iter().map(|e| ask(ctx, e, with_digest))).await;
        for answer in answers {
            let (probe, digest) = answer?;
            if let (Ok(status), Some(digest)) = (&probe.answer, digest) {
                survey.digests.entry(status.node_id).or_insert(digest);
            }
            frontier.add_members(&probe);
            survey.probes.push(probe);
        }
    }
    survey.probes.append(&mut frontier.invalid);
    Ok(survey)
}

/// Says on stderr which nodes did not answer (their rows already hold the errors).
fn note_unreachable(rows: &[NodeRow]) -> anyhow::Result<()> {
    let missing: Vec<String> = rows
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| match r.id {
            Some(id) if r.address.is_empty() => format!("node {id}"),
            Some(id) => format!("node {id} ({})", r.address),
            None => r.address.clone(),
        })
        .collect();
    if !missing.is_empty() {
        use std::io::Write;
        writeln!(
            std::io::stderr(),
            "note: {} of {} nodes did not answer: {}",
            missing.len(),
            rows.len(),
            missing.join(", ")
        )?;
    }
    Ok(())
}

/// Prints the merged table (after `headline` in table mode) or JSON list.
fn show_nodes(ctx: &Ctx, headline: Option<&str>, rows: &[NodeRow]) -> anyhow::Result<()> {
    ctx.show(
        || {
            let mut text = headline.map_or(String::new(), |h| format!("{h}\n\n"));
            text.push_str(&table::cluster_nodes(rows));
            text
        },
        || json::list(rows, json::cluster_node),
    )?;
    note_unreachable(rows)
}

/// The error when no node answered at all: every endpoint with why.
fn nobody_answered(what: &str, probes: &[Probe]) -> anyhow::Error {
    let reasons: Vec<String> = probes
        .iter()
        .filter_map(|p| {
            p.answer
                .as_ref()
                .err()
                .map(|why| format!("{}: {why}", p.endpoint))
        })
        .collect();
    anyhow::anyhow!("{what}: no node answered: {}", reasons.join("; "))
}

async fn status(ctx: &Ctx) -> anyhow::Result<u8> {
    let survey = survey(ctx, Vec::new(), false).await?;
    if survey.probes.iter().all(|p| p.answer.is_err()) {
        return Err(nobody_answered("cluster status", &survey.probes));
    }
    show_nodes(ctx, None, &merge(&survey.probes))?;
    Ok(0)
}

/// Makes a membership or leadership change at the leader, then prints the cluster's status:
/// the leader's answer plus every other node's own.
async fn change(
    ctx: &Ctx,
    what: &str,
    done: String,
    f: impl AsyncFnMut(ClusterClient) -> Result<tonic::Response<ClusterStatus>, Status>,
) -> anyhow::Result<u8> {
    let mut conn = ctx.cluster_conn().await?;
    let answer = conn.call(what, f).await?;
    let seed = vec![Probe {
        endpoint: conn.endpoint().to_string(),
        answer: Ok(answer),
    }];
    let survey = survey(ctx, seed, false).await?;
    show_nodes(ctx, Some(&done), &merge(&survey.probes))?;
    Ok(0)
}

async fn digest(ctx: &Ctx) -> anyhow::Result<u8> {
    let survey = survey(ctx, Vec::new(), true).await?;
    if survey.probes.iter().all(|p| p.answer.is_err()) {
        return Err(nobody_answered("cluster digest", &survey.probes));
    }
    let nodes = merge(&survey.probes);
    let rows = digest_rows(&nodes, &survey.digests);
    let groups = digest_groups(&rows);
    let (agree, verdict) = digest_verdict(&groups);
    match ctx.output {
        Output::Table => print(&table::cluster_digests(&rows, &verdict))?,
        Output::Json => super::print_json(&json::cluster_digests(&rows, &groups, agree))?,
    }
    note_unreachable(&nodes)?;
    Ok(if agree { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_view::same_address;
    use cd_proto::v1::NodeInfo;

    #[test]
    fn frontier_asks_each_address_once_and_reports_bad_ones() {
        let mut f = Frontier::default();
        f.add("https://127.0.0.1:7001");
        f.add("127.0.0.1:7001");
        f.add("");
        f.add("ftp://x");
        f.add("ftp://x");
        assert_eq!(f.queue, ["https://127.0.0.1:7001"]);
        assert_eq!(f.invalid.len(), 1);
        assert!(
            f.invalid[0]
                .answer
                .as_ref()
                .unwrap_err()
                .starts_with("not a usable address")
        );
        f.add_members(&Probe {
            endpoint: "https://127.0.0.1:7001".into(),
            answer: Ok(ClusterStatus {
                node_id: 1,
                leader_id: 1,
                leader_address: "https://127.0.0.1:7001".into(),
                nodes: vec![NodeInfo {
                    id: 2,
                    address: "https://127.0.0.1:7002".into(),
                    ..NodeInfo::default()
                }],
            }),
        });
        assert_eq!(
            f.queue,
            ["https://127.0.0.1:7001", "https://127.0.0.1:7002"]
        );
        assert!(same_address(&f.queue[1], "127.0.0.1:7002"));
    }
}
