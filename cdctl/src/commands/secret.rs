//! `cdctl secret set|list|delete`: the value comes from stdin only (never argv, which shell
//! history and `ps` show), and nothing this command prints ever contains it.

use std::io::{IsTerminal, Read};

use cd_proto::v1::{DeleteSecretRequest, ListSecretsRequest, SetSecretRequest};
use serde_json::json;

use super::Ctx;
use crate::cli::SecretCommand;
use crate::error::usage;
use crate::render::when;

pub async fn run(ctx: &Ctx, cmd: SecretCommand) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Set { name } => set(ctx, name).await,
        SecretCommand::List => list(ctx).await,
        SecretCommand::Delete { name } => delete(ctx, name).await,
    }
}

/// The value as given on stdin, less one trailing newline (`\n` or `\r\n`).
fn value_from(mut raw: Vec<u8>) -> Vec<u8> {
    if raw.ends_with(b"\n") {
        raw.pop();
        if raw.ends_with(b"\r") {
            raw.pop();
        }
    }
    raw
}

fn check_name(name: &str) -> anyhow::Result<()> {
    match cd_common::secrets::name_problem(name) {
        Some(p) => usage(format!("NAME: {p}")),
        None => Ok(()),
    }
}

async fn set(ctx: &Ctx, name: String) -> anyhow::Result<()> {
    check_name(&name)?;
    let limit = cd_common::secrets::MAX_VALUE_LEN as u64 + 3;
    if std::io::stdin().is_terminal() {
        // Not echoed anywhere but the terminal itself; say what is expected instead of hanging.
        eprintln!("reading the value of {name} from standard input; end it with Ctrl-D");
    }
    let mut raw = Vec::new();
    std::io::stdin().take(limit).read_to_end(&mut raw)?;
    let value = value_from(raw);
    if let Some(p) = cd_common::secrets::value_problem(&value) {
        return usage(format!("the value read from standard input: {p}"));
    }
    let mut conn = ctx.conn().await?;
    let req = SetSecretRequest { name, value };
    let info = conn
        .call("set secret", async |mut c| c.set_secret(req.clone()).await)
        .await?;
    ctx.show(
        || format!("secret {} set\n", info.name),
        || {
            json!({
                "name": info.name,
                "updated_at_ms": info.updated_at_ms,
                "updated_by": info.updated_by,
            })
        },
    )
}

async fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let mut conn = ctx.conn().await?;
    let secrets = conn
        .read("list secrets", async |mut c| {
            c.list_secrets(ListSecretsRequest {}).await
        })
        .await?
        .secrets;
    let now = cd_common::time::now_ms();
    ctx.show(
        || {
            let mut t = format!("{:<32} {:<16} UPDATED BY\n", "NAME", "UPDATED");
            for s in &secrets {
                t += &format!(
                    "{:<32} {:<16} {}\n",
                    s.name,
                    when(s.updated_at_ms, now),
                    s.updated_by
                );
            }
            t
        },
        || {
            json!(
                secrets
                    .iter()
                    .map(|s| json!({
                        "name": s.name,
                        "updated_at_ms": s.updated_at_ms,
                        "updated_by": s.updated_by,
                    }))
                    .collect::<Vec<_>>()
            )
        },
    )
}

async fn delete(ctx: &Ctx, name: String) -> anyhow::Result<()> {
    check_name(&name)?;
    let mut conn = ctx.conn().await?;
    let req = DeleteSecretRequest { name };
    let r = conn
        .call("delete secret", async |mut c| {
            c.delete_secret(req.clone()).await
        })
        .await?;
    ctx.show(
        || format!("secret {} deleted\n", r.name),
        || json!({ "name": r.name, "deleted": true }),
    )
}

#[cfg(test)]
mod tests {
    use super::value_from;

    #[test]
    fn one_trailing_newline_is_removed() {
        assert_eq!(value_from(b"abc\n".to_vec()), b"abc");
        assert_eq!(value_from(b"abc\r\n".to_vec()), b"abc");
        assert_eq!(value_from(b"abc\n\n".to_vec()), b"abc\n");
        assert_eq!(value_from(b"abc".to_vec()), b"abc");
        assert_eq!(value_from(b"\n".to_vec()), b"");
    }
}
