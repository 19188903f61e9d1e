//! `cdctl revoke IDENTITY`: refuse an agent's or operator's certificate cluster-wide.

use cd_proto::v1::RevokeRequest;
use serde_json::json;

use super::Ctx;
use crate::cli::RevokeArgs;

pub async fn run(ctx: &Ctx, args: RevokeArgs) -> anyhow::Result<()> {
    let mut conn = ctx.conn().await?;
    let req = RevokeRequest {
        identity: args.identity,
        reason: args.reason,
    };
    let r = conn
        .call("revoke", async |mut c| c.revoke(req.clone()).await)
        .await?;
    ctx.show(
        || {
            if r.already {
                format!("{} was already revoked (by {})\n", r.identity, r.revoked_by)
            } else {
                format!("revoked {}\n", r.identity)
            }
        },
        || {
            json!({
                "identity": r.identity,
                "revoked_at_ms": r.revoked_at_ms,
                "revoked_by": r.revoked_by,
                "already": r.already,
            })
        },
    )
}
