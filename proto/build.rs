//! Compiles `cd/v1/*.proto` and `cd/raft/v1/*.proto` with protox (pure Rust), so `cargo build` needs no system protoc.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "cd/v1/types.proto",
        "cd/v1/control.proto",
        "cd/v1/agent.proto",
        "cd/v1/cluster.proto",
        "cd/raft/v1/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true);
    compiler.open_files(files)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("cd_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    // Messages that carry secret values get a hand-written Debug (src/redact.rs) that shows
    // names only, so no `{:?}` in a log line can print a value.
    tonic_prost_build::configure()
        .skip_debug([".cd.v1.Assignment", ".cd.v1.SetSecretRequest"])
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
