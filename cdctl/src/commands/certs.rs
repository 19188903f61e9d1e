//! `cdctl certs init|issue`: makes the cluster CA and issues certificates with SPIFFE
//! identities. Local files only; no server is contacted.

use anyhow::anyhow;
use cd_common::certs::{CertError, IssuedFiles, init_ca, issue};
use serde_json::json;

use super::Ctx;
use crate::cli::{CertsCommand, CertsInitArgs, CertsIssueArgs};
use crate::error::{UsageError, usage};

pub fn run(ctx: &Ctx, cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init(args) => init(ctx, args),
        CertsCommand::Issue(args) => issue_cmd(ctx, args),
    }
}

fn cert_error(what: &str, err: CertError) -> anyhow::Error {
    match err {
        CertError::Identity(_) => anyhow::Error::new(UsageError(err.to_string())),
        other => anyhow!("{other}"),
    }
    .context(what.to_string())
}

fn show_files(ctx: &Ctx, label: &str, files: &IssuedFiles) -> anyhow::Result<()> {
    ctx.show(
        || {
            format!(
                "{label}: {}\nkey: {}\n",
                files.cert.display(),
                files.key.display()
            )
        },
        || {
            json!({
                "cert": files.cert.display().to_string(),
                "key": files.key.display().to_string(),
            })
        },
    )
}

fn init(ctx: &Ctx, args: CertsInitArgs) -> anyhow::Result<()> {
    if args.trust_domain.trim().is_empty() {
        return usage("certs init: --trust-domain must not be empty");
    }
    let files = init_ca(&args.dir, &args.trust_domain).map_err(|e| cert_error("certs init", e))?;
    show_files(ctx, "CA certificate", &files)
}

/// Names become file names and SPIFFE path segments: keep them to a safe alphabet.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("--name must not be empty".to_string());
    }
    if name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "--name `{name}` may only hold letters, digits, `-`, `_` and `.` (not first)"
        ));
    }
    Ok(())
}

fn issue_cmd(ctx: &Ctx, args: CertsIssueArgs) -> anyhow::Result<()> {
    if let Err(why) = check_name(&args.name) {
        return usage(format!("certs issue: {why}"));
    }
    if let Some(san) = args.sans.iter().find(|s| s.trim().is_empty()) {
        return usage(format!("certs issue: empty --san `{san}`"));
    }
    let out = args.out.clone().unwrap_or_else(|| args.dir.clone());
    let files = issue(
        &args.dir,
        &out,
        args.role.into(),
        &args.name,
        &args.sans,
        args.days,
    )
    .map_err(|e| cert_error("certs issue", e))?;
    show_files(ctx, "certificate", &files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("agent-1").is_ok());
        assert!(check_name("node_2.local").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("../x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(".hidden").is_err());
    }
}
