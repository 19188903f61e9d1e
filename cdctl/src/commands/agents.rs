//! `cdctl agents list`: the build agents the cluster knows, with their load and heartbeat.

use cd_proto::v1::ListAgentsRequest;

use super::Ctx;
use crate::cli::AgentsCommand;
use crate::render::{json, table};

pub async fn run(ctx: &Ctx, cmd: AgentsCommand) -> anyhow::Result<()> {
    match cmd {
        AgentsCommand::List => {
            let mut conn = ctx.conn().await?;
            let resp = conn
                .read("agents list", async |mut c| {
                    c.list_agents(ListAgentsRequest {}).await
                })
                .await?;
            let now = cd_common::time::now_ms();
            ctx.show(
                || table::agents(&resp.agents, now),
                || json::list(&resp.agents, json::agent),
            )
        }
    }
}
