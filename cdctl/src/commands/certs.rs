//! `cdctl certs init|issue|show`: makes the cluster CA, issues certificates with SPIFFE
//! identities and shows what a certificate says. Local files only; no server is contacted.

use anyhow::anyhow;
use cd_common::certs::{CertError, IssuedFiles, describe_pem_file, init_ca, issue};
use serde_json::json;

use super::Ctx;
use crate::cli::{CertsCommand, CertsInitArgs, CertsIssueArgs, CertsShowArgs};
use crate::error::{UsageError, usage};

/// Runs a `certs` command; the result is the exit code.
pub fn run(ctx: &Ctx, cmd: CertsCommand) -> anyhow::Result<u8> {
    match cmd {
        CertsCommand::Init(args) => init(ctx, args).map(|()| 0),
        CertsCommand::Issue(args) => issue_cmd(ctx, args).map(|()| 0),
        CertsCommand::Show(args) => show(ctx, args),
    }
}

/// Prints identity, role, name and validity; exit code 1 when a server would refuse the
/// certificate for what it says (no valid identity, expired or not yet valid).
fn show(ctx: &Ctx, args: CertsShowArgs) -> anyhow::Result<u8> {
    let s = describe_pem_file(&args.file).map_err(|e| anyhow!("certs show: {e}"))?;
    let now = cd_common::time::now_ms() / 1000;
    let validity = if now > s.not_after {
        format!("EXPIRED {} ago", days_text(now - s.not_after))
    } else if now < s.not_before {
        format!(
            "NOT YET VALID (starts in {})",
            days_text(s.not_before - now)
        )
    } else {
        format!("valid, expires in {}", days_text(s.not_after - now))
    };
    let usable = s.identity.is_ok() && (s.not_before..=s.not_after).contains(&now);
    ctx.show(
        || {
            let mut t = format!("file:         {}\n", args.file.display());
            match &s.identity {
                Ok(id) => {
                    t += &format!("identity:     {id}\n");
                    t += &format!("role:         {}\n", id.role);
                    t += &format!("name:         {}\n", id.name);
                    t += &format!("trust domain: {}\n", id.trust_domain);
                }
                Err(why) => {
                    t += &format!("identity:     NONE: {why}\n");
                    t += "              (every Conveyor server refuses this certificate)\n";
                }
            }
            t += &format!("subject:      {}\n", s.subject);
            t += &format!("issuer:       {}\n", s.issuer);
            t += &format!("not before:   {}\n", utc(s.not_before));
            t += &format!("expires:      {} ({validity})\n", utc(s.not_after));
            if !s.dns_and_ips.is_empty() {
                t += &format!("hosts:        {}\n", s.dns_and_ips.join(", "));
            }
            t
        },
        || {
            json!({
                "file": args.file.display().to_string(),
                "identity": s.identity.as_ref().ok().map(ToString::to_string),
                "role": s.identity.as_ref().ok().map(|id| id.role.as_str()),
                "name": s.identity.as_ref().ok().map(|id| id.name.clone()),
                "trust_domain": s.identity.as_ref().ok().map(|id| id.trust_domain.clone()),
                "identity_error": s.identity.as_ref().err(),
                "subject": s.subject,
                "issuer": s.issuer,
                "not_before": utc(s.not_before),
                "not_after": utc(s.not_after),
                "status": validity,
                "hosts": s.dns_and_ips,
            })
        },
    )?;
    Ok(if usable { 0 } else { 1 })
}

fn utc(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn days_text(secs: i64) -> String {
    let days = secs / 86_400;
    if days >= 2 {
        format!("{days} days")
    } else {
        format!("{} hours", secs / 3600)
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
