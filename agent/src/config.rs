//! The agent's configuration, as built by the `cd-agent` binary or by the coordinator's dev mode.

use std::path::PathBuf;
use std::time::Duration;

use cd_common::tls::TlsPaths;

/// Everything [`crate::run`] needs to know. Build it with [`AgentConfig::new`] and change the
/// fields that differ from the defaults.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The agent's name; it must match the name in the agent's certificate.
    pub name: String,
    /// Labels stages can ask for (`labels: [linux]` in a pipeline).
    pub labels: Vec<String>,
    /// How many stages run at once (default 2).
    pub slots: u32,
    /// Coordinator addresses such as `https://127.0.0.1:7400`, tried in order. A follower's
    /// `cd-leader` hint is followed when it names another node.
    pub endpoints: Vec<String>,
    /// CA, certificate and key for mutual TLS.
    pub tls: TlsPaths,
    /// Workspaces live under `work_dir/workspaces/<run>/<stage>/<attempt>`. One agent per
    /// `work_dir`: the agent locks it and clears old workspaces on start.
    pub work_dir: PathBuf,
    /// How often leases are renewed (default 2 s).
    pub heartbeat_interval: Duration,
    /// How long a cancelled stage gets between SIGTERM and SIGKILL (default 5 s).
    pub kill_grace: Duration,
}

impl AgentConfig {
    /// A configuration with the defaults: no labels, 2 slots, 2 s heartbeat, 5 s kill grace.
    pub fn new(
        name: impl Into<String>,
        endpoints: Vec<String>,
        tls: TlsPaths,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            labels: Vec::new(),
            slots: 2,
            endpoints,
            tls,
            work_dir: work_dir.into(),
            heartbeat_interval: Duration::from_secs(2),
            kill_grace: Duration::from_secs(5),
        }
    }

    /// Checks the values that would make the agent useless, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        if self.endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err("endpoints: at least one coordinator address is needed".into());
        }
        if self.slots == 0 {
            return Err("slots: must be at least 1".into());
        }
        if self.heartbeat_interval.is_zero() {
            return Err("heartbeat_interval: must be greater than zero".into());
        }
        Ok(())
    }

    /// How long shutdown waits for cancelled stages to report before giving up.
    pub(crate) fn shutdown_wait(&self) -> Duration {
        self.kill_grace + Duration::from_secs(10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> TlsPaths {
        TlsPaths {
            ca: "ca.pem".into(),
            cert: "agent.pem".into(),
            key: "agent.key".into(),
        }
    }

    #[test]
    fn defaults_and_validation() {
        let c = AgentConfig::new(
            "a1",
            vec!["https://127.0.0.1:7400".into()],
            paths(),
            "/tmp/w",
        );
        assert_eq!(c.slots, 2);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.kill_grace, Duration::from_secs(5));
        assert!(c.validate().is_ok());

        let mut bad = c.clone();
        bad.slots = 0;
        assert!(bad.validate().unwrap_err().starts_with("slots"));
        let mut bad = c;
        bad.endpoints.clear();
        assert!(bad.validate().unwrap_err().starts_with("endpoints"));
    }
}
