//! `cdctl revoke IDENTITY`: refuse an agent's or operator's certificate cluster-wide; and
//! `cdctl audit`: who wrote what, when.

use cd_proto::v1::{ListAuditRequest, RevokeRequest};
use serde_json::json;

use super::Ctx;
use crate::cli::{AuditArgs, RevokeArgs};
use crate::render::when;

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

pub async fn audit(ctx: &Ctx, args: AuditArgs) -> anyhow::Result<()> {
    let mut conn = ctx.conn().await?;
    let req = ListAuditRequest {
        limit: args.limit,
        identity: args.identity.unwrap_or_default(),
    };
    let entries = conn
        .call("list audit", async |mut c| c.list_audit(req.clone()).await)
        .await?
        .entries;
    let now = cd_common::time::now_ms();
    ctx.show(
        || {
            let mut t = format!(
                "{:<6} {:<16} {:<45} {:<16} TARGET\n",
                "SEQ", "WHEN", "IDENTITY", "ACTION"
            );
            for e in &entries {
                t += &format!(
                    "{:<6} {:<16} {:<45} {:<16} {}\n",
                    e.seq,
                    when(e.at_ms, now),
                    e.identity,
                    e.action,
                    e.target
                );
            }
            t
        },
        || {
            json!(
                entries
                    .iter()
                    .map(|e| json!({
                        "seq": e.seq,
                        "at_ms": e.at_ms,
                        "identity": e.identity,
                        "action": e.action,
                        "target": e.target,
                    }))
                    .collect::<Vec<_>>()
            )
        },
    )
}
