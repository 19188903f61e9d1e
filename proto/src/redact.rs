//! `Debug` for the messages that carry secret values (generated without one, see build.rs):
//! every field as usual except the values, of which only the names are shown.

use std::fmt;

use crate::v1::{Assignment, SetSecretRequest};

impl fmt::Debug for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secret_names: Vec<&String> = self.secrets.keys().collect();
        secret_names.sort();
        f.debug_struct("Assignment")
            .field("attempt", &self.attempt)
            .field("pipeline", &self.pipeline)
            .field("revision", &self.revision)
            .field("command", &self.command)
            .field("env", &self.env)
            .field("timeout_ms", &self.timeout_ms)
            .field("lease_until_ms", &self.lease_until_ms)
            .field("reports", &self.reports)
            .field("source_path", &self.source_path)
            .field("environment", &self.environment)
            .field("image", &self.image)
            .field("container", &self.container)
            .field("monitor", &self.monitor)
            .field("repository", &self.repository)
            .field("secrets", &secret_names)
            .finish()
    }
}

impl fmt::Debug for SetSecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetSecretRequest")
            .field("name", &self.name)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_secret_names_never_values() {
        let a = Assignment {
            secrets: [("TOKEN".to_string(), "hunter2-value".to_string())].into(),
            command: "echo hi".into(),
            ..Default::default()
        };
        let text = format!("{a:?}");
        assert!(text.contains("TOKEN") && text.contains("echo hi"), "{text}");
        assert!(!text.contains("hunter2-value"), "{text}");
        let r = SetSecretRequest {
            name: "TOKEN".into(),
            value: b"hunter2-value".to_vec(),
        };
        let text = format!("{r:?}");
        assert!(
            text.contains("TOKEN") && !text.contains("hunter2"),
            "{text}"
        );
    }
}
