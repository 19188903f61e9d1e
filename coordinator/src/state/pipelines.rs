//! Storing pipeline specs as numbered versions.

use cd_common::spec::PipelineSpec;

use super::command::ApplyPipeline;
use super::{Outcome, Pipeline, PipelineVersion, State, StateError};

pub(super) fn apply_pipeline(
    state: &mut State,
    c: &ApplyPipeline,
    at: i64,
) -> Result<Outcome, StateError> {
    let spec: PipelineSpec =
        serde_json::from_str(&c.spec_json).map_err(|e| StateError::InvalidArgument {
            field: "spec_json".into(),
            message: format!("cannot decode validated spec: {e}"),
        })?;
    if spec.name != c.name {
        return Err(StateError::InvalidArgument {
            field: "name".into(),
            message: format!("command names {:?} but spec is {:?}", c.name, spec.name),
        });
    }
    let pipeline = state
        .pipelines
        .entry(c.name.clone())
        .or_insert_with(|| Pipeline {
            name: c.name.clone(),
            versions: Vec::new(),
            next_run: 1,
        });
    if let Some(latest) = pipeline.latest()
        && latest.spec == spec
        && latest.spec_yaml == c.spec_yaml
    {
        return Ok(Outcome::Pipeline {
            version: latest.version,
            changed: false,
        });
    }
    let version = pipeline.latest().map_or(1, |v| v.version + 1);
    pipeline.versions.push(PipelineVersion {
        version,
        spec,
        spec_yaml: c.spec_yaml.clone(),
        file_name: c.file_name.clone(),
        created_ms: at,
    });
    Ok(Outcome::Pipeline {
        version,
        changed: true,
    })
}
