//! Reading a branch head with the real `git` CLI: the leader keeps one bare cache repository
//! per pipeline under its data dir and fetches the branch into it, so a poll transfers only
//! new objects and the commit time can be read locally.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

/// Longest a single git command may take before the poll counts as failed.
const GIT_TIMEOUT: Duration = Duration::from_secs(60);

/// A branch head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub sha: String,
    /// Committer time (`%ct`), ms since the epoch.
    pub commit_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("git {what} timed out after {GIT_TIMEOUT:?}")]
    Timeout { what: String },
    #[error("git {what} failed: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("git log printed {0:?}, not `<sha> <time>`")]
    Unexpected(String),
}

async fn git(dir: Option<&Path>, args: &[&str], what: &str) -> Result<String, GitError> {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(GIT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| GitError::Timeout {
            what: what.to_string(),
        })??;
    if !out.status.success() {
        return Err(GitError::Failed {
            what: what.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Fetches `branch` of `repository` into the bare cache at `cache` (created on first use) and
/// returns its newest `n` commits along the first-parent line, newest first, with their
/// commit times.
pub async fn recent(
    cache: &Path,
    repository: &str,
    branch: &str,
    n: usize,
) -> Result<Vec<Head>, GitError> {
    if !cache.join("HEAD").exists() {
        if let Some(parent) = cache.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let path = cache.to_string_lossy();
        git(None, &["init", "--bare", "--quiet", "--", &path], "init").await?;
    }
    let refspec = format!("+refs/heads/{branch}:refs/heads/polled");
    // The spec refuses repositories starting with `-`, and `--` ends option parsing anyway.
    git(
        Some(cache),
        &["fetch", "--quiet", "--no-tags", "--", repository, &refspec],
        "fetch",
    )
    .await?;
    let count = format!("-{}", n.max(1));
    let out = git(
        Some(cache),
        &[
            "log",
            &count,
            "--first-parent",
            "--format=%H %ct",
            "refs/heads/polled",
            "--",
        ],
        "log",
    )
    .await?;
    out.lines().map(parse_head).collect()
}

fn parse_head(line: &str) -> Result<Head, GitError> {
    let (sha, time) = line
        .split_once(' ')
        .ok_or_else(|| GitError::Unexpected(line.to_string()))?;
    let secs: i64 = time
        .parse()
        .map_err(|_| GitError::Unexpected(line.to_string()))?;
    if sha.len() < 40 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(GitError::Unexpected(line.to_string()));
    }
    Ok(Head {
        sha: sha.to_string(),
        commit_at_ms: secs.saturating_mul(1000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sha_and_commit_time() {
        let sha = "a".repeat(40);
        assert_eq!(
            parse_head(&format!("{sha} 1700000000")).unwrap(),
            Head {
                sha,
                commit_at_ms: 1_700_000_000_000
            }
        );
        assert!(parse_head("nonsense").is_err());
    }
}
