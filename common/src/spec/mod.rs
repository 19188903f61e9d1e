//! Pipeline spec: YAML parsing and validation with errors naming file, line and field.
//!
//! How: `yaml_serde` turns the text into a small tree whose nodes carry ids (`node`), the tree
//! is converted field by field (`convert`), then stages are checked against each other
//! (`validate`). A failure names a node id; its line is found by re-reading the text with
//! `yaml_serde` and stopping at that node, whose error `yaml_serde` stamps with the node's
//! line (see `node`). Alias expansion is bounded while the tree is built.
//!
//! A stage with an `image` runs in a container (Docker executor) and may set these options,
//! which land in [`StageSpec::container`]; on a stage without `image` each of them is an
//! error:
//!
//! ```yaml
//! - name: build
//!   image: ghcr.io/acme/builder:1.4     # [host[:port]/]path[:tag][@sha256:<64 hex>]
//!   image_pull: always                  # never | if-missing (default) | always
//!   resources:
//!     cpus: 1.5                         # 0.01 ..= 1024 cores
//!     memory: 2g                        # bytes, or k/m/g/t (binary; `Mi`, `MiB` too): 6m ..= 1t
//!   network: none                       # none | bridge (default) | host
//!   user: "1000:1000"                   # name or uid, optional :group or :gid
//!   docker: true                        # mount the agent's Docker socket (default false)
//!   run: make build
//! ```
//!
//! The image reference and these values follow Docker's own rules (see `container`), so an
//! accepted stage is one the executor can start.

mod approvers;
mod container;
mod convert;
mod node;
mod triggers;
mod types;
mod validate;

pub use approvers::{approver_problem, may_approve};
pub use container::{
    MAX_CPUS, MAX_IMAGE_NAME_LEN, MAX_MEMORY_BYTES, MAX_USER_LEN, MIN_CPUS, MIN_MEMORY_BYTES,
};
pub use convert::{MAX_FAILURE_THRESHOLD, MAX_RETRIES, url_problem};
pub use triggers::{MAX_CONCURRENCY, MIN_POLL_INTERVAL_MS, next_fire_ms, parse_cron};
pub use types::*;

/// Largest spec accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// A spec that failed to parse or validate. Displays as `file:line: field: message`.
///
/// `field` is the path from the document root to the offending value: map keys joined with
/// `.`, list items as 0-based `[i]`, e.g. `name`, `stages[1].needs[0]`,
/// `stages[4].gate.metrics[0].from`, `stages[0].env.MY_VAR`. Errors about the whole file
/// (size, YAML syntax, alias bombs, more than one document, a root that is not a mapping)
/// use `(document)`. `line` is where the offending value starts (its key's line when the
/// value is empty; for a missing field, the first line of the mapping that lacks it; for a
/// value reached through an alias, the anchor's line).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct SpecError {
    pub file: String,
    /// 1-based; 0 when no line applies (e.g. the file is too large).
    pub line: usize,
    /// Path from the document root, e.g. `stages[2].needs[0]` (see above).
    pub field: String,
    pub message: String,
}

/// Parses and validates a pipeline file: every field's type and value (including a stage's
/// image reference and container options, which need `image`), then the rules between
/// stages. The first problem found is returned as a [`SpecError`].
pub fn parse(yaml: &str, file_name: &str) -> Result<PipelineSpec, SpecError> {
    let error = |line: usize, field: &str, message: String| SpecError {
        file: file_name.to_string(),
        line,
        field: field.to_string(),
        message,
    };
    if yaml.len() > MAX_SPEC_BYTES {
        return Err(error(
            0,
            convert::DOCUMENT,
            format!(
                "the spec is {} bytes; the limit is {MAX_SPEC_BYTES} bytes",
                yaml.len()
            ),
        ));
    }
    let root = node::build(yaml).map_err(|e| {
        let field = e.field.as_deref().unwrap_or(convert::DOCUMENT);
        error(e.line, field, e.message)
    })?;
    let located = |fail: convert::Fail| {
        let line = node::locate(yaml, fail.node).max(1);
        error(line, &fail.field, fail.message)
    };
    let mut converted = convert::convert(&root).map_err(located)?;
    validate::validate(&converted.spec, &converted.stages).map_err(|pending| {
        let mut fail = pending.fail;
        if let Some(other) = pending.other {
            let other_line = node::locate(yaml, other).max(1);
            fail.message = fail.message.replace("{line}", &other_line.to_string());
        }
        located(fail)
    })?;
    if !converted.raw_env.is_empty() {
        let raw = node::raw_scalars(yaml, &convert::raw_env_ids(&converted));
        for (stage, name, id) in std::mem::take(&mut converted.raw_env) {
            let text = raw.get(&id).cloned().unwrap_or_default();
            let env = match stage {
                Some(i) => converted.spec.stages.get_mut(i).map(|s| &mut s.env),
                None => Some(&mut converted.spec.env),
            };
            if let Some(env) = env {
                env.insert(name, text);
            }
        }
    }
    Ok(converted.spec)
}

impl PipelineSpec {
    /// Makes a relative `source.path` absolute against `base_dir` (the pipeline file's folder),
    /// and so a relative repository path (`repository`, `trigger.git.repository`; anything
    /// with a `:` is a URL and stays as it is).
    pub fn resolve_source(&mut self, base_dir: &std::path::Path) {
        if let Some(src) = &mut self.source {
            let p = std::path::Path::new(&src.path);
            if p.is_relative() {
                src.path = base_dir.join(p).to_string_lossy().into_owned();
            }
        }
        let resolve = |repo: &mut String| {
            if !repo.contains(':') && std::path::Path::new(repo.as_str()).is_relative() {
                *repo = base_dir.join(&*repo).to_string_lossy().into_owned();
            }
        };
        if let Some(r) = &mut self.repository {
            resolve(r);
        }
        if let Some(g) = &mut self.trigger.git {
            resolve(&mut g.repository);
        }
    }
}
