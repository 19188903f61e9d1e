//! `cdctl pipeline apply|list|show`: stores pipeline specs and reads them back.

use anyhow::Context;
use cd_proto::v1::{ApplyPipelineRequest, GetPipelineRequest, ListPipelinesRequest};

use super::{Ctx, print};
use crate::cli::{Output, PipelineCommand};
use crate::render::{json, table};

pub async fn run(ctx: &Ctx, cmd: PipelineCommand) -> anyhow::Result<()> {
    match cmd {
        PipelineCommand::Apply { file } => apply(ctx, &file).await,
        PipelineCommand::List => list(ctx).await,
        PipelineCommand::Show { name, version } => show(ctx, name, version.unwrap_or(0)).await,
        PipelineCommand::Status { name } => status(ctx, name).await,
    }
}

/// Reads the file and works out the request: `file_name` as given, `base_dir` absolute.
fn apply_request(file: &std::path::Path) -> anyhow::Result<ApplyPipelineRequest> {
    let spec_yaml =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let absolute = std::fs::canonicalize(file)
        .with_context(|| format!("cannot resolve {}", file.display()))?;
    let base_dir = absolute
        .parent()
        .map(|dir| dir.display().to_string())
        .unwrap_or_else(|| "/".to_string());
    Ok(ApplyPipelineRequest {
        spec_yaml,
        file_name: file.display().to_string(),
        base_dir,
    })
}

async fn apply(ctx: &Ctx, file: &std::path::Path) -> anyhow::Result<()> {
    let what = "pipeline apply";
    let req = apply_request(file).context(what)?;
    let mut conn = ctx.conn().await?;
    let resp = conn
        .call(what, async |mut c| c.apply_pipeline(req.clone()).await)
        .await?;
    let pipeline = resp.pipeline.unwrap_or_default();
    ctx.show(
        || table::applied(&pipeline, resp.changed),
        || json::applied(Some(&pipeline), resp.changed),
    )
}

async fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let mut conn = ctx.conn().await?;
    let resp = conn
        .read("pipeline list", async |mut c| {
            c.list_pipelines(ListPipelinesRequest {}).await
        })
        .await?;
    let now = cd_common::time::now_ms();
    ctx.show(
        || table::pipelines(&resp.pipelines, now),
        || json::list(&resp.pipelines, json::pipeline),
    )
}

async fn show(ctx: &Ctx, name: String, version: u32) -> anyhow::Result<()> {
    let mut conn = ctx.conn().await?;
    let req = GetPipelineRequest { name, version };
    let p = conn
        .read("pipeline show", async |mut c| {
            c.get_pipeline(req.clone()).await
        })
        .await?;
    match ctx.output {
        Output::Table => {
            let mut text = p.spec_yaml;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            print(&text)
        }
        Output::Json => super::print_json(&json::pipeline(&p)),
    }
}

async fn status(ctx: &Ctx, name: String) -> anyhow::Result<()> {
    let mut conn = ctx.conn().await?;
    let req = GetPipelineRequest { name, version: 0 };
    let p = conn
        .read("pipeline status", async |mut c| {
            c.get_pipeline(req.clone()).await
        })
        .await?;
    match ctx.output {
        Output::Table => print(&crate::render::table::pipeline_status(&p)),
        Output::Json => super::print_json(&json::pipeline(&p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_request_keeps_the_name_and_makes_base_dir_absolute() {
        let dir = std::env::temp_dir().join(format!("cdctl-apply-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("web.yaml");
        std::fs::write(&file, "name: web\n").unwrap();
        let req = apply_request(&file).unwrap();
        assert_eq!(req.spec_yaml, "name: web\n");
        assert_eq!(req.file_name, file.display().to_string());
        assert_eq!(
            req.base_dir,
            std::fs::canonicalize(&dir).unwrap().display().to_string()
        );
        let err = apply_request(&dir.join("missing.yaml")).unwrap_err();
        assert!(format!("{err:#}").starts_with("cannot read "), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
