//! `cdctl env list|history` and `cdctl rollback`: what is deployed where, and putting the
//! previous good deployment back.

use cd_proto::v1::{EnvironmentHistoryRequest, ListEnvironmentsRequest, RollbackRequest};

use super::Ctx;
use crate::cli::{EnvCommand, RollbackArgs};
use crate::render::{json, table};

pub async fn run(ctx: &Ctx, cmd: EnvCommand) -> anyhow::Result<()> {
    let mut conn = ctx.conn().await?;
    let now = cd_common::time::now_ms();
    match cmd {
        EnvCommand::List => {
            let resp = conn
                .read("env list", async |mut c| {
                    c.list_environments(ListEnvironmentsRequest {}).await
                })
                .await?;
            ctx.show(
                || table::environments(&resp.environments, now),
                || json::list(&resp.environments, json::environment),
            )
        }
        EnvCommand::History { env } => {
            let req = EnvironmentHistoryRequest { environment: env };
            let resp = conn
                .read("env history", async |mut c| {
                    c.environment_history(req.clone()).await
                })
                .await?;
            ctx.show(
                || table::deployments(&resp.deployments, now),
                || json::list(&resp.deployments, json::deployment),
            )
        }
    }
}

/// Starts the rollback run and prints its id (table) or the run (JSON); with `--watch`
/// follows it and the exit code is `run watch`'s.
pub async fn rollback(ctx: &Ctx, args: RollbackArgs) -> anyhow::Result<u8> {
    let mut conn = ctx.conn().await?;
    let req = RollbackRequest {
        environment: args.env,
        reason: args.reason.unwrap_or_default(),
    };
    let run = conn
        .call("rollback", async |mut c| c.rollback(req.clone()).await)
        .await?;
    super::run::print_new_run(ctx, &run, args.watch)?;
    if args.watch {
        super::run::watch(ctx, &mut conn, &run.id, "rollback").await
    } else {
        Ok(0)
    }
}
