//! Pipeline spec: YAML parsing and validation with errors naming file, line and field.

mod types;

pub use types::*;

/// Largest spec accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// A spec that failed to parse or validate. Displays as `file:line: field: message`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct SpecError {
    pub file: String,
    /// 1-based; 0 when no line applies (e.g. the file is too large).
    pub line: usize,
    /// Dotted path, e.g. `stages[2].needs` or `stages.test.timeout`.
    pub field: String,
    pub message: String,
}

/// Parses and validates a pipeline file.
pub fn parse(yaml: &str, file_name: &str) -> Result<PipelineSpec, SpecError> {
    let _ = (yaml, file_name);
    todo!("H1")
}

impl PipelineSpec {
    /// Makes a relative `source.path` absolute against `base_dir` (the pipeline file's folder).
    pub fn resolve_source(&mut self, base_dir: &std::path::Path) {
        if let Some(src) = &mut self.source {
            let p = std::path::Path::new(&src.path);
            if p.is_relative() {
                src.path = base_dir.join(p).to_string_lossy().into_owned();
            }
        }
    }
}
