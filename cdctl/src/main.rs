//! `cdctl`, Conveyor's operator CLI. It talks to the coordinators only over gRPC (mutual TLS),
//! like any third-party client. This file parses the arguments and turns the outcome into an
//! exit code and one `error: ...` line; the work is in `commands/`.

mod cli;
mod client;
mod cluster_view;
mod commands;
mod error;
mod render;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cd_common::tls::install_crypto_provider();
    // Usage errors exit here with code 2 (and --help / --version with 0).
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::Error::new(err).context("cannot start the runtime")),
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) if error::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {err:#}");
    ExitCode::from(error::exit_code_for(err))
}
