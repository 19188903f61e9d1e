//! Helpers for tests against the real Docker engine. No registry is reachable, so the test image
//! is built here: `FROM scratch` with Debian's static busybox as `/bin/busybox` and a symlink
//! for each of its applets. A missing engine fails the test (never a silent skip).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};

/// The busybox test image.
pub const BUSYBOX_IMAGE: &str = "conveyor-test/busybox:local";

/// Where Debian's `busybox-static` installs its binary.
const BUSYBOX: &str = "/bin/busybox";

/// Fails the test unless the Docker engine answers. In CI (`CI=true`) the engine was promised;
/// elsewhere the message says how to get one. Returns the engine's version.
pub fn require_docker() -> String {
    let answer = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output();
    let why = match answer {
        Ok(out) if out.status.success() => {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => format!("cannot run the docker CLI: {e}"),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true and the Docker engine is unavailable ({why}): container tests must run in CI"
        );
    }
    panic!(
        "the Docker engine is unavailable ({why}); these tests need a running engine \
         (start dockerd, or `service docker start`) and are never skipped"
    );
}

/// Runs `build` for `tag` once per test process; later calls with the same tag return the first
/// outcome.
fn build_once(tag: &str, build: impl FnOnce() -> Result<()>) -> Result<()> {
    static BUILT: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    // Held across the build: tests of one process wait for the first build instead of racing.
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    let outcome = built
        .entry(tag.to_string())
        .or_insert_with(|| build().map_err(|e| format!("{e:#}")));
    outcome.clone().map_err(anyhow::Error::msg)
}

/// The busybox test image, built on first use. Installs `busybox-static` with apt-get when the
/// static binary is missing (CI runs as root).
pub fn busybox_image() -> &'static str {
    require_docker();
    build_once(BUSYBOX_IMAGE, build_busybox)
        .unwrap_or_else(|e| panic!("cannot build {BUSYBOX_IMAGE}: {e:#}"));
    BUSYBOX_IMAGE
}

fn build_busybox() -> Result<()> {
    ensure_static_busybox()?;
    let ctx = tempfile::Builder::new().prefix("cd-busybox-").tempdir()?;
    let root = ctx.path().join("rootfs");
    for dir in ["bin", "etc", "tmp", "root"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::copy(BUSYBOX, root.join("bin/busybox"))?;
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    let list = run(Command::new(BUSYBOX).arg("--list"))?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nCMD [\"sh\"]\n",
    )?;
    run(Command::new("docker")
        .args(["build", "-q", "-t", BUSYBOX_IMAGE])
        .arg(ctx.path()))
    .context("docker build")?;
    Ok(())
}

/// Makes sure `/bin/busybox` is the static build (the image has no libc to link against).
fn ensure_static_busybox() -> Result<()> {
    if Path::new(BUSYBOX).exists() && is_static(Path::new(BUSYBOX))? {
        return Ok(());
    }
    let install = || run(Command::new("apt-get").args(["install", "-y", "-qq", "busybox-static"]));
    if install().is_err() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        install().context("apt-get install busybox-static (run as root)")?;
    }
    if !is_static(Path::new(BUSYBOX))? {
        bail!("{BUSYBOX} is still dynamically linked after installing busybox-static");
    }
    Ok(())
}

/// Whether an ELF executable has no program interpreter (no `PT_INTERP` header).
fn is_static(path: &Path) -> Result<bool> {
    let data = std::fs::read(path).with_context(|| path.display().to_string())?;
    let field = |at: usize, len: usize| -> Result<u64> {
        let bytes = data
            .get(at..at + len)
            .with_context(|| format!("{}: truncated ELF header", path.display()))?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    };
    if data.get(..5) != Some(b"\x7fELF\x02".as_slice()) || data.get(5) != Some(&1) {
        bail!("{}: not a little-endian 64-bit ELF file", path.display());
    }
    let (phoff, phentsize, phnum) = (field(0x20, 8)?, field(0x36, 2)?, field(0x38, 2)?);
    for i in 0..phnum {
        const PT_INTERP: u64 = 3;
        if field((phoff + i * phentsize) as usize, 4)? == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs a command; a failure carries its stderr.
fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Ids of the containers (running or not) carrying every one of `labels` (`key=value`).
pub fn containers(labels: &[&str]) -> Vec<String> {
    list(labels).unwrap_or_else(|e| panic!("{e:#}"))
}

fn list(labels: &[&str]) -> Result<Vec<String>> {
    let mut cmd = Command::new("docker");
    cmd.args(["ps", "-a", "-q", "--no-trunc"]);
    for label in labels {
        cmd.arg("--filter").arg(format!("label={label}"));
    }
    let out = run(&mut cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// Whether the container exists and runs.
pub fn running(id: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", id])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.starts_with(b"true"))
}

/// Whether a container with this id (or name) exists.
pub fn exists(id: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "-f", "{{.Id}}", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An agent name no other test (of this or a concurrent test process) uses, so that an agent
/// removing "its" leftover containers at start never touches another test's.
pub fn agent_name(test: &str) -> String {
    format!("dk-{test}-{}", std::process::id())
}

/// Removes, when dropped, every container left by the named agent (a test that failed half-way,
/// or an agent killed with SIGKILL, leaves its containers running).
pub struct Sweep {
    agent: String,
}

impl Sweep {
    pub fn agent(agent: &str) -> Sweep {
        Sweep {
            agent: agent.to_string(),
        }
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        let ids = list(&[&format!("conveyor.agent={}", self.agent)]).unwrap_or_default();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
