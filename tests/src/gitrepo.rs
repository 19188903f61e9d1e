//! A real git repository in a temp dir, driven with the `git` CLI, for trigger and checkout
//! tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

pub struct GitRepo {
    pub dir: PathBuf,
}

impl GitRepo {
    /// `git init` on branch `main`, with one commit.
    pub fn init(dir: &Path) -> Result<GitRepo> {
        std::fs::create_dir_all(dir)?;
        let repo = GitRepo {
            dir: dir.to_path_buf(),
        };
        repo.git(&["init", "--quiet", "--initial-branch=main"])?;
        repo.git(&["config", "user.email", "test@example.com"])?;
        repo.git(&["config", "user.name", "Test"])?;
        repo.commit("first")?;
        Ok(repo)
    }

    pub fn git(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.dir)
            .args(args)
            .output()
            .context("running git")?;
        ensure!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Writes `file.txt` with `text`, commits it, and returns the commit's sha.
    pub fn commit(&self, text: &str) -> Result<String> {
        std::fs::write(self.dir.join("file.txt"), format!("{text}\n"))?;
        self.git(&["add", "file.txt"])?;
        self.git(&["commit", "--quiet", "-m", text])?;
        self.git(&["rev-parse", "HEAD"])
    }

    /// Committer time of `rev` in ms (`%ct` * 1000).
    pub fn commit_ms(&self, rev: &str) -> Result<i64> {
        Ok(self
            .git(&["log", "-1", "--format=%ct", rev])?
            .parse::<i64>()?
            * 1000)
    }

    pub fn path(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }
}
