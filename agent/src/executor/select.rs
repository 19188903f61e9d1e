//! The agent's executor: picks the backend per stage. A stage with an image runs in a container
//! when the agent found a usable Docker engine at start, and fails with the reason when it did
//! not; every other stage runs as a host process. Workspaces are laid out the same for both.

use futures::future::BoxFuture;

use super::docker::DockerExecutor;
use super::process::ProcessExecutor;
use super::{ExecError, Execution, Executor, StageSpec, Workspace};

pub struct Backends {
    process: ProcessExecutor,
    /// The Docker backend, or why this agent has none (one line).
    docker: Result<DockerExecutor, String>,
}

impl Backends {
    pub fn new(process: ProcessExecutor, docker: Result<DockerExecutor, String>) -> Self {
        Self { process, docker }
    }
}

impl Executor for Backends {
    fn name(&self) -> &'static str {
        match self.docker {
            Ok(_) => "process+docker",
            Err(_) => "process",
        }
    }

    fn prepare<'a>(&'a self, spec: &'a StageSpec) -> BoxFuture<'a, Result<Workspace, ExecError>> {
        self.process.prepare(spec)
    }

    fn start<'a>(
        &'a self,
        spec: &'a StageSpec,
        workspace: &'a Workspace,
    ) -> BoxFuture<'a, Result<Box<dyn Execution>, ExecError>> {
        if spec.image.is_empty() {
            return self.process.start(spec, workspace);
        }
        match &self.docker {
            Ok(docker) => docker.start(spec, workspace),
            Err(why) => {
                let message = format!(
                    "image {}: this agent cannot run container stages: Docker engine unavailable \
                     ({why})",
                    spec.image
                );
                Box::pin(async move { Err(ExecError::Unsupported(message)) })
            }
        }
    }

    fn destroy(&self, workspace: Workspace) -> BoxFuture<'_, Result<(), ExecError>> {
        match &self.docker {
            Ok(docker) => docker.destroy(workspace),
            Err(_) => self.process.destroy(workspace),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::registry::AttemptKey;

    #[tokio::test]
    async fn without_docker_an_image_fails_with_the_reason_and_host_stages_run() {
        let root = tempfile::tempdir().expect("tempdir");
        let backends = Backends::new(
            ProcessExecutor::new(root.path()),
            Err("socket /var/run/docker.sock not found".into()),
        );
        let mut spec = StageSpec {
            key: AttemptKey {
                run_id: "r".into(),
                stage: "s".into(),
                attempt: 1,
                fencing_term: 0,
            },
            command: "exit 4".into(),
            env: BTreeMap::new(),
            secrets: Default::default(),
            source: None,
            image: "busybox:1".into(),
            container: Default::default(),
        };
        let ws = backends.prepare(&spec).await.expect("prepare");
        let err = backends.start(&spec, &ws).await.err().expect("refused");
        let text = err.to_string();
        assert!(text.contains("busybox:1"), "{text}");
        assert!(
            text.contains("Docker engine unavailable (socket /var/run/docker.sock not found)"),
            "{text}"
        );

        spec.image.clear();
        let execution = backends.start(&spec, &ws).await.expect("host process");
        let exit = execution
            .wait(Default::default(), std::time::Duration::from_secs(1))
            .await
            .expect("wait");
        assert_eq!(exit.exit_code(), 4);
        backends.destroy(ws.clone()).await.expect("destroy");
        assert!(!ws.path().exists());
    }
}
