//! Checks the run's revision out into a stage's workspace when the pipeline names a
//! repository: `git init`, `git fetch <repository> <revision>`, `git checkout --detach`.
//! Fetching the revision itself (a commit id, a branch, `HEAD`) means the workspace holds
//! exactly what the run was pinned to, even if the branch moved since.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

/// Longest a checkout may take.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(600);

async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(CHECKOUT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("git {} timed out after {CHECKOUT_TIMEOUT:?}", args[0]))?
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {} failed: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Checks `revision` of `repository` out into the (empty) directory `dir`; returns the commit
/// id. The error is the message the stage fails with.
pub async fn checkout(dir: &Path, repository: &str, revision: &str) -> Result<String, String> {
    if repository.starts_with('-') || revision.starts_with('-') {
        return Err(format!(
            "refusing to check out {revision:?} of {repository:?}: looks like an option"
        ));
    }
    let revision = if revision.is_empty() {
        "HEAD"
    } else {
        revision
    };
    let fail = |e: String| format!("checkout of {revision} from {repository} failed: {e}");
    git(dir, &["init", "--quiet"]).await.map_err(fail)?;
    git(
        dir,
        &["fetch", "--quiet", "--no-tags", "--", repository, revision],
    )
    .await
    .map_err(fail)?;
    git(dir, &["checkout", "--quiet", "--detach", "FETCH_HEAD"])
        .await
        .map_err(fail)?;
    git(dir, &["rev-parse", "HEAD"]).await.map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[tokio::test]
    async fn checks_out_the_pinned_commit_not_the_branch_head() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        sh(&repo, &["init", "--quiet", "--initial-branch=main"]);
        let commit = |text: &str| {
            std::fs::write(repo.join("f.txt"), text).unwrap();
            sh(&repo, &["add", "f.txt"]);
            sh(
                &repo,
                &[
                    "-c",
                    "user.email=t@e",
                    "-c",
                    "user.name=t",
                    "commit",
                    "-qm",
                    text,
                ],
            );
            sh(&repo, &["rev-parse", "HEAD"])
        };
        let first = commit("one");
        commit("two");
        let ws = tmp.path().join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        let got = checkout(&ws, &repo.to_string_lossy(), &first)
            .await
            .unwrap();
        assert_eq!(got, first);
        assert_eq!(std::fs::read_to_string(ws.join("f.txt")).unwrap(), "one");

        let ws2 = tmp.path().join("ws2");
        std::fs::create_dir_all(&ws2).unwrap();
        let err = checkout(
            &ws2,
            &repo.to_string_lossy(),
            "0000000000000000000000000000000000000bad",
        )
        .await
        .unwrap_err();
        assert!(err.starts_with("checkout of 0000"), "{err}");
    }
}
