//! `cdctl approve` and `cdctl reject`: record a decision on a stage waiting at its gate.

use cd_proto::v1::{ApproveRequest, RejectRequest, Run};

use super::Ctx;
use crate::cli::{ApproveArgs, RejectArgs};
use crate::render::{json, stage_state_name};

/// `approved deploy of run r-1; stage is now queued`.
fn decided(verb: &str, run: &Run, stage: &str) -> String {
    let state = run
        .stages
        .iter()
        .find(|s| s.name == stage)
        .map_or("unknown", |s| stage_state_name(s.state));
    format!("{verb} {stage} of run {}; stage is now {state}\n", run.id)
}

pub async fn approve(ctx: &Ctx, args: ApproveArgs) -> anyhow::Result<()> {
    let mut conn = ctx.conn().await?;
    let req = ApproveRequest {
        run_id: args.run,
        stage: args.stage.clone(),
        comment: args.comment.unwrap_or_default(),
    };
    let run = conn
        .call("approve", async |mut c| c.approve(req.clone()).await)
        .await?;
    ctx.show(
        || decided("approved", &run, &args.stage),
        || json::run(&run),
    )
}

pub async fn reject(ctx: &Ctx, args: RejectArgs) -> anyhow::Result<()> {
    let mut conn = ctx.conn().await?;
    let req = RejectRequest {
        run_id: args.run,
        stage: args.stage.clone(),
        reason: args.reason,
    };
    let run = conn
        .call("reject", async |mut c| c.reject(req.clone()).await)
        .await?;
    ctx.show(
        || decided("rejected", &run, &args.stage),
        || json::run(&run),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cd_proto::v1::{Stage, StageState};

    #[test]
    fn decision_line_names_the_new_state() {
        let run = Run {
            id: "r-1".into(),
            stages: vec![Stage {
                name: "deploy".into(),
                state: StageState::GateFailed as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            decided("rejected", &run, "deploy"),
            "rejected deploy of run r-1; stage is now gate_failed\n"
        );
    }
}
