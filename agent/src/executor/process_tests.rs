//! Process executor tests with real `sh` processes.

use super::*;
use crate::executor::lines::MAX_PIECE;
use std::collections::BTreeMap;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::sys::wait::{WaitPidFlag, waitpid};

const LIMIT: Duration = Duration::from_secs(30);

fn key(stage: &str) -> AttemptKey {
    AttemptKey {
        run_id: "run-1".into(),
        stage: stage.into(),
        attempt: 1,
        fencing_term: 0,
    }
}

fn spec(stage: &str, command: &str) -> StageSpec {
    let mut env = BTreeMap::new();
    env.insert("CD_STAGE".to_string(), stage.to_string());
    StageSpec {
        key: key(stage),
        command: command.into(),
        env,
        secrets: Default::default(),
        source: None,
        image: String::new(),
        container: Default::default(),
    }
}

struct Ran {
    exit: Exit,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    pieces: Vec<OutputPiece>,
}

/// Starts `spec`, drains output while waiting, and returns everything.
async fn run_with(
    exec: &ProcessExecutor,
    spec: &StageSpec,
    ws: &Workspace,
    cancel: CancellationToken,
    grace: Duration,
) -> Ran {
    let mut execution = exec.start(spec, ws).await.expect("start");
    let mut output = execution.take_output().expect("output");
    assert!(execution.take_output().is_none(), "output is taken once");
    let collect = async {
        let mut pieces = Vec::new();
        while let Some(p) = output.recv().await {
            pieces.push(p);
        }
        pieces
    };
    let (exit, pieces) = tokio::time::timeout(LIMIT, async {
        tokio::join!(execution.wait(cancel, grace), collect)
    })
    .await
    .expect("command ended in time");
    let pick = |s: OutputStream| -> Vec<u8> {
        pieces
            .iter()
            .filter(|p| p.stream == s)
            .flat_map(|p| p.data.clone())
            .collect()
    };
    Ran {
        exit: exit.expect("wait"),
        stdout: pick(OutputStream::Stdout),
        stderr: pick(OutputStream::Stderr),
        pieces,
    }
}

/// Waits (bounded) until `path` holds `n` lines, and returns them as PIDs.
async fn wait_for_pids(path: &Path, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if pids.len() >= n {
                return pids;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never got {n} pids",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts (bounded poll) that every pid is gone: `kill(pid, 0)` reports ESRCH. The test process
/// is a child subreaper so orphaned grandchildren are reaped here rather than by a PID 1 that
/// might never do it.
async fn assert_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for &pid in pids {
        let pid = Pid::from_raw(pid);
        loop {
            let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
            match kill(pid, None) {
                Err(Errno::ESRCH) => break,
                other => assert!(
                    Instant::now() < deadline,
                    "process {pid} still exists ({other:?})"
                ),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn become_subreaper() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

#[tokio::test]
async fn output_is_captured_in_order_with_the_exit_code() {
    let root = tempfile::tempdir().expect("tempdir");
    let exec = ProcessExecutor::new(root.path());
    let spec = spec(
        "order",
        "i=1; while [ $i -le 300 ]; do echo out $i; echo err $i >&2; i=$((i+1)); done; \
         pwd; echo \"stage=$CD_STAGE\"; printf 'partial tail'; exit 3",
    );
    let ws = exec.prepare(&spec).await.expect("prepare");
    assert_eq!(ws.path(), exec.workspace_path(&spec.key));
    let ran = run_with(
        &exec,
        &spec,
        &ws,
        CancellationToken::new(),
        Duration::from_secs(1),
    )
    .await;

    let mut want_out: String = (1..=300).map(|i| format!("out {i}\n")).collect();
    want_out.push_str(&format!(
        "{}\nstage=order\npartial tail",
        ws.path().canonicalize().expect("canonical").display()
    ));
    let want_err: String = (1..=300).map(|i| format!("err {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), want_out);
    assert_eq!(String::from_utf8_lossy(&ran.stderr), want_err);
    assert_eq!(ran.exit.code, Some(3));
    assert_eq!(ran.exit.exit_code(), 3);
    assert!(!ran.exit.terminated);

    exec.destroy(ws.clone()).await.expect("destroy");
    assert!(!ws.path().exists());
    assert!(!root.path().join("run-1").exists(), "empty parents go too");
}

#[tokio::test]
async fn long_lines_are_split_into_bounded_pieces() {
    let root = tempfile::tempdir().expect("tempdir");
    let exec = ProcessExecutor::new(root.path());
    let spec = spec("long", "head -c 100000 /dev/zero | tr '\\0' a");
    let ws = exec.prepare(&spec).await.expect("prepare");
    let ran = run_with(
        &exec,
        &spec,
        &ws,
        CancellationToken::new(),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(ran.stdout.len(), 100_000);
    assert!(ran.pieces.iter().all(|p| p.data.len() <= MAX_PIECE));
    assert_eq!(ran.exit.exit_code(), 0);
}

#[tokio::test]
async fn the_source_is_copied_into_a_fresh_workspace() {
    let root = tempfile::tempdir().expect("tempdir");
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(src.path().join("sub")).expect("mkdir");
    std::fs::write(src.path().join("sub/a.txt"), "alpha").expect("write");
    std::fs::write(src.path().join("run.sh"), "echo from-script").expect("write");
    std::os::unix::fs::symlink("sub/a.txt", src.path().join("link")).expect("symlink");

    let exec = ProcessExecutor::new(root.path());
    let mut spec = spec("copy", "cat sub/a.txt; echo; cat link; echo; sh run.sh");
    spec.source = Some(src.path().to_path_buf());
    // A leftover from an earlier try of the same attempt is wiped.
    let stale = exec.workspace_path(&spec.key);
    std::fs::create_dir_all(&stale).expect("mkdir");
    std::fs::write(stale.join("old"), "x").expect("write");

    let ws = exec.prepare(&spec).await.expect("prepare");
    assert!(!ws.path().join("old").exists());
    let ran = run_with(
        &exec,
        &spec,
        &ws,
        CancellationToken::new(),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout),
        "alpha\nalpha\nfrom-script\n"
    );

    spec.source = Some(src.path().join("does-not-exist"));
    let err = exec.prepare(&spec).await.unwrap_err();
    assert!(matches!(err, ExecError::CopySource { .. }), "{err}");
    assert!(err.to_string().contains("does-not-exist"), "{err}");
}

#[tokio::test]
async fn cancel_kills_the_whole_process_tree() {
    become_subreaper();
    let root = tempfile::tempdir().expect("tempdir");
    let exec = ProcessExecutor::new(root.path());
    let spec = spec(
        "tree",
        "sleep 100 & echo $! >> pids; sleep 100 & echo $! >> pids; \
         sh -c 'sleep 100 & echo $! >> pids; wait' & echo $! >> pids; wait",
    );
    let ws = exec.prepare(&spec).await.expect("prepare");
    let cancel = CancellationToken::new();
    let pid_file = ws.path().join("pids");
    let trigger = async {
        let pids = wait_for_pids(&pid_file, 4).await;
        cancel.cancel();
        pids
    };
    let (ran, pids) = tokio::join!(
        run_with(&exec, &spec, &ws, cancel.clone(), Duration::from_secs(5)),
        trigger
    );
    assert!(ran.exit.terminated);
    assert_eq!(ran.exit.exit_code(), -1);
    assert_gone(&pids).await;
}

#[tokio::test]
async fn a_command_ignoring_sigterm_is_killed_after_the_grace_period() {
    become_subreaper();
    let root = tempfile::tempdir().expect("tempdir");
    let exec = ProcessExecutor::new(root.path());
    let spec = spec(
        "stubborn",
        "trap '' TERM; sleep 100 & echo $! > pids; echo $$ >> pids; wait; wait; echo survived",
    );
    let ws = exec.prepare(&spec).await.expect("prepare");
    let cancel = CancellationToken::new();
    let grace = Duration::from_millis(400);
    let pid_file = ws.path().join("pids");
    let trigger = async {
        let pids = wait_for_pids(&pid_file, 2).await;
        cancel.cancel();
        (pids, Instant::now())
    };
    let (ran, (pids, cancelled_at)) =
        tokio::join!(run_with(&exec, &spec, &ws, cancel.clone(), grace), trigger);
    assert!(
        cancelled_at.elapsed() >= grace,
        "SIGTERM was ignored for the grace period"
    );
    assert!(ran.exit.terminated);
    assert_eq!(ran.exit.signal, Some(Signal::SIGKILL as i32));
    assert!(!String::from_utf8_lossy(&ran.stdout).contains("survived"));
    assert_gone(&pids).await;
}

#[tokio::test]
async fn background_jobs_die_when_the_shell_exits() {
    become_subreaper();
    let root = tempfile::tempdir().expect("tempdir");
    let exec = ProcessExecutor::new(root.path());
    let spec = spec("leftover", "sleep 100 & echo $! > pids; echo done");
    let ws = exec.prepare(&spec).await.expect("prepare");
    let ran = run_with(
        &exec,
        &spec,
        &ws,
        CancellationToken::new(),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(ran.exit.exit_code(), 0);
    assert!(!ran.exit.terminated);
    let pids = wait_for_pids(&ws.path().join("pids"), 1).await;
    assert_gone(&pids).await;
}

#[tokio::test]
async fn an_image_is_refused_by_the_process_backend() {
    let root = tempfile::tempdir().expect("tempdir");
    let exec = ProcessExecutor::new(root.path());
    let mut spec = spec("img", "true");
    spec.image = "alpine:3".into();
    let ws = exec.prepare(&spec).await.expect("prepare");
    let err = exec.start(&spec, &ws).await.err().expect("refused");
    assert!(err.to_string().contains("alpine:3"), "{err}");
}

#[test]
fn names_from_the_network_become_safe_path_components() {
    assert_eq!(path_component("build"), "build");
    assert_eq!(path_component("run-01.x_y"), "run-01.x_y");
    for hostile in ["..", "../etc", "a/b", "", ".hidden", "a b"] {
        let c = path_component(hostile);
        assert!(
            !c.contains('/') && !c.starts_with('.') && !c.is_empty(),
            "{hostile:?} -> {c}"
        );
    }
    assert_ne!(
        path_component("a/b"),
        path_component("a_b"),
        "no collisions"
    );
}

#[tokio::test]
async fn secrets_are_in_the_stage_environment_and_not_in_its_debug_form() {
    let root = tempfile::tempdir().expect("tempdir");
    let exec = ProcessExecutor::new(root.path());
    let mut spec = spec("sec", "printf '%s|%s' \"$TOKEN\" \"$CD_STAGE\"");
    spec.secrets = crate::executor::SecretEnv(BTreeMap::from([(
        "TOKEN".to_string(),
        "value-of-token".to_string(),
    )]));
    let shown = format!("{spec:?}");
    assert!(
        shown.contains("TOKEN") && !shown.contains("value-of-token"),
        "{shown}"
    );
    let ws = exec.prepare(&spec).await.expect("prepare");
    let ran = run_with(
        &exec,
        &spec,
        &ws,
        CancellationToken::new(),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "value-of-token|sec");
    exec.destroy(ws).await.expect("destroy");
}
