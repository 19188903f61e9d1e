//! One file per command group; this module holds what they share: the context (output format
//! and how to connect), printing to stdout, and the dispatch from parsed arguments.

pub mod agents;
pub mod approve;
pub mod certs;
pub mod cluster;
pub mod env;
pub mod feedback;
pub mod logs;
pub mod pipeline;
pub mod revoke;
pub mod run;
pub mod secret;

use std::io::Write;

use serde_json::Value;

use crate::cli::{Cli, Command, Output};
use crate::client::{ClusterClient, Conn, ConnectConfig, LEADER_WAIT, resolve_tls};

/// What every command needs besides its own arguments.
pub struct Ctx {
    pub output: Output,
    pub connect: ConnectConfig,
}

impl Ctx {
    pub fn new(cli: &Cli) -> Ctx {
        let g = &cli.global;
        Ctx {
            output: g.output,
            connect: ConnectConfig {
                endpoints: g.endpoint.0.clone(),
                tls: resolve_tls(
                    g.ca.as_deref(),
                    g.cert.as_deref(),
                    g.key.as_deref(),
                    g.cert_dir.as_deref(),
                ),
                timeout: g.timeout,
                stale: g.stale,
                leader_wait: LEADER_WAIT,
            },
        }
    }

    /// Connects to the first endpoint that answers.
    pub async fn conn(&self) -> anyhow::Result<Conn> {
        Conn::connect(self.connect.clone()).await
    }

    /// Connects the cluster-administration client to the first endpoint that answers.
    pub async fn cluster_conn(&self) -> anyhow::Result<Conn<ClusterClient>> {
        Conn::connect(self.connect.clone()).await
    }

    /// Prints `table` or `json` depending on `-o`.
    pub fn show(
        &self,
        table: impl FnOnce() -> String,
        json: impl FnOnce() -> Value,
    ) -> anyhow::Result<()> {
        match self.output {
            Output::Table => print(&table()),
            Output::Json => print_json(&json()),
        }
    }
}

/// Writes text to stdout and flushes it.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Writes a JSON value, pretty-printed, to stdout.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print(&text)
}

/// Runs the parsed command; the result is the process exit code.
pub async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let ctx = Ctx::new(&cli);
    match cli.command {
        Command::Certs(cmd) => certs::run(&ctx, cmd),
        Command::Pipeline(cmd) => pipeline::run(&ctx, cmd).await.map(|()| 0),
        Command::Run(cmd) => run::run(&ctx, cmd).await,
        Command::Logs(args) => logs::run(&ctx, args).await.map(|()| 0),
        Command::Approve(args) => approve::approve(&ctx, args).await.map(|()| 0),
        Command::Reject(args) => approve::reject(&ctx, args).await.map(|()| 0),
        Command::Revoke(args) => revoke::run(&ctx, args).await.map(|()| 0),
        Command::Audit(args) => revoke::audit(&ctx, args).await.map(|()| 0),
        Command::Secret(cmd) => secret::run(&ctx, cmd).await.map(|()| 0),
        Command::Agents(cmd) => agents::run(&ctx, cmd).await.map(|()| 0),
        Command::Env(cmd) => env::run(&ctx, cmd).await.map(|()| 0),
        Command::Rollback(args) => env::rollback(&ctx, args).await,
        Command::Incident(cmd) => feedback::incident(&ctx, cmd).await.map(|()| 0),
        Command::Metrics(args) => feedback::metrics(&ctx, args).await.map(|()| 0),
        Command::Cluster(cmd) => cluster::run(&ctx, cmd).await,
    }
}
