//! What the Docker backend asks the engine for, built from a stage spec without touching the
//! engine: the pull policy, the container's configuration (command, env, limits, network, user,
//! mounts) and the labels that tie a container to its agent and attempt.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig};

use super::{ExecError, StageSpec, Workspace};
use crate::registry::AttemptKey;

/// Where the attempt's workspace is mounted in the container; also its working directory.
pub const WORKSPACE_MOUNT: &str = "/workspace";
/// The engine's socket, mounted at the same path when a stage asks for `docker: true`.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

pub const LABEL_AGENT: &str = "conveyor.agent";
pub const LABEL_RUN: &str = "conveyor.run";
pub const LABEL_STAGE: &str = "conveyor.stage";
pub const LABEL_ATTEMPT: &str = "conveyor.attempt";

/// When the image is pulled (`image_pull:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    Never,
    IfMissing,
    Always,
}

impl Pull {
    /// Empty means `if-missing`.
    pub fn parse(text: &str) -> Result<Self, ExecError> {
        match text {
            "never" => Ok(Self::Never),
            "" | "if-missing" => Ok(Self::IfMissing),
            "always" => Ok(Self::Always),
            other => Err(ExecError::Unsupported(format!(
                "image_pull {other:?}: expected never, if-missing or always"
            ))),
        }
    }
}

/// The engine's `NetworkMode` for `network:`; empty means `bridge`.
pub fn network_mode(text: &str) -> Result<&'static str, ExecError> {
    match text {
        "none" => Ok("none"),
        "" | "bridge" => Ok("bridge"),
        "host" => Ok("host"),
        other => Err(ExecError::Unsupported(format!(
            "network {other:?}: expected none, bridge or host"
        ))),
    }
}

/// `image` as a pull reference: without a tag or digest the engine would pull every tag, so
/// `:latest` is added.
pub fn pull_reference(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || last.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// The labels of one attempt's container.
pub fn attempt_labels(agent: &str, key: &AttemptKey) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_AGENT.to_string(), agent.to_string()),
        (LABEL_RUN.to_string(), key.run_id.clone()),
        (LABEL_STAGE.to_string(), key.stage.clone()),
        (LABEL_ATTEMPT.to_string(), key.attempt.to_string()),
    ])
}

/// A `list_containers` filter matching containers that carry every one of `labels`.
pub fn label_filter(labels: &HashMap<String, String>) -> HashMap<String, Vec<String>> {
    let mut matches: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    matches.sort();
    HashMap::from([("label".to_string(), matches)])
}

/// The container for one attempt: `sh -c <command>` in `/workspace` with the stage's env
/// (`CD_WORKSPACE=/workspace`), its limits, network and user, and the attempt's labels. Not
/// removed automatically: the exit state is read before the container is removed.
pub fn create_body(
    spec: &StageSpec,
    workspace: &Workspace,
    agent: &str,
) -> Result<ContainerCreateBody, ExecError> {
    let options = &spec.container;
    let network = network_mode(&options.network)?;
    let host_path = workspace.path().to_string_lossy();
    if host_path.contains(':') {
        return Err(ExecError::Unsupported(format!(
            "workspace {host_path}: a path with ':' cannot be mounted into a container"
        )));
    }
    let mut binds = vec![format!("{host_path}:{WORKSPACE_MOUNT}")];
    if options.docker_socket {
        binds.push(format!("{DOCKER_SOCKET}:{DOCKER_SOCKET}"));
    }
    let mut env = spec.env.clone();
    env.extend(spec.secrets.0.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert("CD_WORKSPACE".into(), WORKSPACE_MOUNT.into());
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let memory =
        (options.memory_bytes > 0).then(|| i64::try_from(options.memory_bytes).unwrap_or(i64::MAX));
    let host_config = HostConfig {
        nano_cpus: nano_cpus(options.cpus),
        memory,
        // Equal to the memory limit: no swap on top, so the limit is real.
        memory_swap: memory,
        network_mode: Some(network.to_string()),
        binds: Some(binds),
        auto_remove: Some(false),
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: Some(vec!["sh".into(), "-c".into()]),
        cmd: Some(vec![spec.command.clone()]),
        env: Some(env),
        working_dir: Some(WORKSPACE_MOUNT.into()),
        user: (!options.user.is_empty()).then(|| options.user.clone()),
        labels: Some(attempt_labels(agent, &spec.key)),
        attach_stdin: Some(false),
        open_stdin: Some(false),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// CPU cores as the engine's billionths of a CPU; `None` for no limit.
fn nano_cpus(cpus: f64) -> Option<i64> {
    (cpus.is_finite() && cpus > 0.0).then(|| (cpus * 1e9).round().min(i64::MAX as f64) as i64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::executor::ContainerOptions;

    fn spec(options: ContainerOptions) -> StageSpec {
        StageSpec {
            key: AttemptKey {
                run_id: "r1".into(),
                stage: "build".into(),
                attempt: 3,
                fencing_term: 7,
            },
            command: "echo hi; exit 3".into(),
            env: BTreeMap::from([
                ("A".to_string(), "1".to_string()),
                ("CD_WORKSPACE".to_string(), "/host/ws".to_string()),
            ]),
            secrets: Default::default(),
            source: None,
            image: "conveyor-test/busybox:local".into(),
            container: options,
        }
    }

    fn workspace() -> Workspace {
        Workspace::new("/work/ws/r1/build/3".into(), spec(Default::default()).key)
    }

    #[test]
    fn the_container_runs_the_command_in_the_workspace_with_the_limits() {
        let options = ContainerOptions {
            image_pull: "never".into(),
            cpus: 1.5,
            memory_bytes: 64 << 20,
            network: "none".into(),
            user: "1000:1000".into(),
            docker_socket: true,
        };
        let body = create_body(&spec(options), &workspace(), "agent-1").expect("valid");
        assert_eq!(body.image.as_deref(), Some("conveyor-test/busybox:local"));
        let command: Vec<String> = body
            .entrypoint
            .clone()
            .into_iter()
            .flatten()
            .chain(body.cmd.clone().into_iter().flatten())
            .collect();
        assert_eq!(command, ["sh", "-c", "echo hi; exit 3"]);
        assert_eq!(body.working_dir.as_deref(), Some("/workspace"));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(
            body.env,
            Some(vec![
                "A=1".to_string(),
                "CD_WORKSPACE=/workspace".to_string()
            ])
        );
        // Secrets join the container's environment (and only its environment).
        let mut with_secret = spec(Default::default());
        with_secret.secrets =
            crate::executor::SecretEnv(BTreeMap::from([("TOKEN".to_string(), "v".to_string())]));
        let secret_body = create_body(&with_secret, &workspace(), "agent-1").expect("valid");
        assert_eq!(
            secret_body.env,
            Some(vec![
                "A=1".to_string(),
                "CD_WORKSPACE=/workspace".to_string(),
                "TOKEN=v".to_string()
            ])
        );
        let labels = body.labels.expect("labels");
        assert_eq!(labels[LABEL_AGENT], "agent-1");
        assert_eq!(labels[LABEL_RUN], "r1");
        assert_eq!(labels[LABEL_STAGE], "build");
        assert_eq!(labels[LABEL_ATTEMPT], "3");
        let host = body.host_config.expect("host config");
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.memory_swap, Some(64 << 20));
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.auto_remove, Some(false));
        assert_eq!(
            host.binds,
            Some(vec![
                "/work/ws/r1/build/3:/workspace".to_string(),
                "/var/run/docker.sock:/var/run/docker.sock".to_string(),
            ])
        );
    }

    #[test]
    fn defaults_mean_no_limits_bridge_and_the_images_user() {
        let body = create_body(&spec(Default::default()), &workspace(), "a").expect("valid");
        assert_eq!(body.user, None);
        let host = body.host_config.expect("host config");
        assert_eq!(
            (host.nano_cpus, host.memory, host.memory_swap),
            (None, None, None)
        );
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        assert_eq!(host.binds.map(|b| b.len()), Some(1));
    }

    #[test]
    fn bad_values_are_named() {
        let bad = ContainerOptions {
            network: "overlay".into(),
            ..Default::default()
        };
        let err = create_body(&spec(bad), &workspace(), "a").unwrap_err();
        assert!(err.to_string().contains("network \"overlay\""), "{err}");
        assert!(Pull::parse("sometimes").is_err());
        assert_eq!(Pull::parse("").ok(), Some(Pull::IfMissing));
        assert_eq!(Pull::parse("always").ok(), Some(Pull::Always));
    }

    #[test]
    fn pull_references_always_name_a_tag() {
        assert_eq!(pull_reference("busybox"), "busybox:latest");
        assert_eq!(pull_reference("busybox:1.36"), "busybox:1.36");
        assert_eq!(
            pull_reference("localhost:5000/team/app"),
            "localhost:5000/team/app:latest"
        );
        assert_eq!(pull_reference("app@sha256:abc"), "app@sha256:abc");
        let filter = label_filter(&attempt_labels("a", &spec(Default::default()).key));
        assert_eq!(
            filter["label"],
            [
                "conveyor.agent=a",
                "conveyor.attempt=3",
                "conveyor.run=r1",
                "conveyor.stage=build"
            ]
        );
    }
}
