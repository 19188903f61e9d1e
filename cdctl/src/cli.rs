//! Command-line arguments (clap derive): the global connection and output options, one enum
//! per command group, and the parsers for values clap cannot check by itself (`--param K=V`,
//! `--timeout`, `--endpoint` lists). A parser's error is a usage error: clap exits with 2.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::{EndpointList, parse_endpoint, parse_endpoint_list};

#[derive(Debug, Parser)]
#[command(
    name = "cdctl",
    version,
    about = "Operate a Conveyor cluster: pipelines, runs, logs, approvals, agents, environments \
             and the coordinator cluster itself.",
    long_about = "Operate a Conveyor cluster over mutual-TLS gRPC: apply pipelines, start and \
                  watch runs, read logs, approve promotions, inspect agents and environments, \
                  roll back, and manage the coordinators' Raft cluster (`cdctl cluster`). \
                  `cdctl certs` makes the cluster CA and certificates locally.\n\n\
                  Any coordinator in --endpoint will do: writes go to the leader (a follower \
                  names it and cdctl calls again there), and so do reads, which are \
                  linearizable by default (served by the leader, so they see every write \
                  acknowledged before them). --stale lets the node asked answer reads from its \
                  own applied state instead, which may lag the leader.\n\n\
                  Exit codes: 0 success, 1 failure (or a watched run that did not succeed), \
                  2 usage or validation error."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts, before or after the subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Coordinator URL, or a comma-separated list tried in order until one connects.
    #[arg(
        long,
        global = true,
        env = "CD_ENDPOINT",
        value_name = "URL[,URL...]",
        default_value = "https://127.0.0.1:7400",
        value_parser = parse_endpoint_list
    )]
    pub endpoint: EndpointList,
    /// Cluster CA certificate (PEM) [default: $CD_CERT_DIR/ca.pem].
    #[arg(long, global = true, env = "CD_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) [default: $CD_CERT_DIR/operator.pem].
    #[arg(long, global = true, env = "CD_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) [default: $CD_CERT_DIR/operator-key.pem].
    #[arg(long, global = true, env = "CD_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Folder holding ca.pem, operator.pem and operator-key.pem, used for any of --ca, --cert
    /// and --key not given.
    #[arg(long, global = true, env = "CD_CERT_DIR", value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value_t = Output::Table
    )]
    pub output: Output,
    /// Time limit for each unary call and for connecting (e.g. 500ms, 10s, 1m).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Let the node asked answer reads (list, show, history, watch, logs) from its own applied
    /// state, which may lag the leader. Without it reads are linearizable: served by the
    /// leader (a follower redirects to it). Writes and `cluster` commands are unaffected.
    #[arg(long, global = true, env = "CD_STALE")]
    pub stale: bool,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts (one object per line for streams).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the cluster CA and issue certificates (local files only, no server needed).
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Apply, list and show pipeline specs.
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// Start, list, show, watch and cancel runs.
    #[command(subcommand)]
    Run(RunCommand),
    /// Print a stage's log (every attempt, or one), optionally following new output.
    Logs(LogsArgs),
    /// Approve a stage that waits at its promotion gate.
    Approve(ApproveArgs),
    /// Reject a stage that waits at its promotion gate (a reason is required).
    Reject(RejectArgs),
    /// Revoke an agent's or operator's identity: the cluster refuses its certificate from now
    /// on, and a connected agent is disconnected. Cannot be undone; issue a new name instead.
    Revoke(RevokeArgs),
    /// Show the audit log: recent writes (apply, start, cancel, approve, reject, rollback,
    /// incidents, revoke) with who made them and when. Operators only.
    Audit(AuditArgs),
    /// Set, list and delete secrets: values stages receive as environment variables, stored
    /// encrypted and masked (`***`) in logs. Values are never shown.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Show the build agents known to the cluster.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Show environments and their deployment history.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Roll an environment back to its previous successful deployment; prints the run id.
    Rollback(RollbackArgs),
    /// Open, resolve and list incidents (periods during which an environment was failing).
    #[command(subcommand)]
    Incident(IncidentCommand),
    /// MTTR, MTBF and the four DORA metrics of an environment, from replicated history.
    ///
    /// MTTR = total recovery time / number of failures; MTBF = (total operating time - total
    /// recovery time) / number of failures. A failure is an incident opened in the window; its
    /// recovery time runs until it was resolved (until now while open). Operating time runs
    /// from the start of the window, or from the environment's first successful deployment if
    /// later, to now. DORA: deployment frequency (successful release deployments per day of operating
    /// time), lead time for changes (deployment finished - commit time; the run's creation
    /// time when the commit time is unknown, which the output says), change failure rate
    /// (deployments that failed, were rolled back or had an incident opened against them /
    /// all deployments) and time to restore service (median recovery time of resolved
    /// incidents).
    Metrics(MetricsArgs),
    /// Inspect and change the coordinators' Raft cluster: status, membership, leadership,
    /// state digests.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Ask every coordinator for its status and show one row per node.
    ///
    /// Calls every --endpoint and every member address any node reports. Each node's own
    /// answer gives its ROLE, TERM, COMMIT and APPLIED; the leader's answer gives LAG (log
    /// entries behind the leader) and LAST CONTACT. A node that does not answer shows as
    /// `unreachable` with the error; that is noted on stderr and the exit code stays 0 (1 only
    /// when no node answers).
    Status,
    /// Add a node as a learner (a voter once it has caught up); prints the cluster status.
    ///
    /// The node joins as a learner; the leader makes it a voter once it has caught up. Run
    /// this before starting the new coordinator with --join.
    Add {
        /// The new node's id (a positive integer not used in the cluster).
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        /// The new node's API address, as the other nodes and clients reach it
        /// (https://HOST:PORT).
        #[arg(value_parser = parse_endpoint)]
        url: String,
    },
    /// Remove a node from the cluster; prints the cluster status.
    ///
    /// Removing the leader hands leadership to the most up-to-date voter first; cdctl then
    /// finishes the removal at the new leader.
    Remove {
        /// Id of the node to remove.
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
    },
    /// Make another voter the leader; prints the cluster status.
    TransferLeader {
        /// Id of the voter to lead.
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
    },
    /// Compare every node's digest of the replicated state.
    ///
    /// Asks every node (found as `cluster status` finds them) for the digest of its state at
    /// its applied index, and says whether nodes at the same applied index agree. Exit code 1
    /// if two nodes at the same index disagree.
    Digest,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a new cluster CA (DIR/ca.pem and DIR/ca-key.pem); refuses to overwrite one.
    Init(CertsInitArgs),
    /// Issue a certificate and key signed by the CA (OUT/NAME.pem and OUT/NAME-key.pem).
    Issue(CertsIssueArgs),
    /// Print a certificate's identity, role and expiry, and why a server would refuse it.
    /// Exit code 1 when it carries no valid identity or has expired.
    Show(CertsShowArgs),
}

#[derive(Debug, Args)]
pub struct CertsShowArgs {
    /// PEM certificate file (the first certificate in it is shown).
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct CertsInitArgs {
    /// Folder to write the CA into.
    #[arg(long, env = "CD_CERT_DIR", default_value = "certs")]
    pub dir: PathBuf,
    /// Trust domain of the SPIFFE identities (spiffe://TD/ROLE/NAME).
    #[arg(long, default_value = cd_common::certs::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
}

#[derive(Debug, Args)]
pub struct CertsIssueArgs {
    /// Role written into the identity; decides which calls the holder may make.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Name of the holder (node, agent or user). An operator named `operator` gets the files
    /// cdctl looks for by default.
    #[arg(long)]
    pub name: String,
    /// Folder holding the CA (ca.pem, ca-key.pem).
    #[arg(long, env = "CD_CERT_DIR", default_value = "certs")]
    pub dir: PathBuf,
    /// Folder to write the certificate and key into [default: the CA folder].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Extra DNS name or IP address (repeatable); coordinators always get localhost and
    /// 127.0.0.1.
    #[arg(long = "san", value_name = "SAN")]
    pub sans: Vec<String>,
    /// Days the certificate stays valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
    pub days: u32,
}

/// Roles a certificate can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// A coordinator node (peer Raft traffic).
    Coordinator,
    /// A build agent.
    Agent,
    /// A person or tool that changes pipelines, runs and approvals.
    Operator,
    /// Read-only access.
    Viewer,
}

impl From<RoleArg> for cd_common::certs::Role {
    fn from(role: RoleArg) -> Self {
        use cd_common::certs::Role;
        match role {
            RoleArg::Coordinator => Role::Coordinator,
            RoleArg::Agent => Role::Agent,
            RoleArg::Operator => Role::Operator,
            RoleArg::Viewer => Role::Viewer,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Store a pipeline spec from a YAML file as a new version (unless it is unchanged).
    Apply {
        /// Pipeline YAML file; relative `source.path` entries resolve against its folder.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List pipelines with their latest version.
    List,
    /// Print a pipeline's YAML (the latest version, or --version).
    Show {
        /// Pipeline name.
        name: String,
        /// Version to show [default: latest].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        version: Option<u32>,
    },
    /// Show how a pipeline's runs start and how many run at once: its triggers, the last
    /// commit and schedule time that started a run, webhook deliveries refused (counted by the
    /// answering node), concurrency and on_new_run.
    Status {
        /// Pipeline name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Start a run of a pipeline's latest version; prints the run id alone.
    Start(RunStartArgs),
    /// List runs, newest first as the server orders them.
    List {
        /// Only runs of this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// Show at most N runs [default: all].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// Show a run: stages with state, attempt, agent, duration, reason, gate decisions and
    /// approvals.
    Show {
        /// Run id.
        run: String,
    },
    /// Follow a run until it ends, one line per stage change.
    ///
    /// Exit code 0 if the run succeeded; 1 if it failed or was cancelled, or if the stream
    /// broke before the run ended.
    Watch {
        /// Run id.
        run: String,
    },
    /// Cancel a run: running stages are stopped, pending ones skipped.
    Cancel {
        /// Run id.
        run: String,
        /// Why, recorded on the run.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct RunStartArgs {
    /// Pipeline name.
    pub pipeline: String,
    /// Source revision to build (commit, tag or anything the stages understand).
    #[arg(long)]
    pub revision: Option<String>,
    /// Parameter passed to every stage as an environment variable (repeatable).
    #[arg(long = "param", value_name = "K=V", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// After printing the id, follow the run as `run watch` does (same exit codes).
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Run id.
    pub run: String,
    /// Stage name.
    pub stage: String,
    /// Only this attempt [default: every attempt, one after another].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub attempt: Option<u32>,
    /// Keep printing new output until the stage ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// Run id.
    pub run: String,
    /// Stage waiting for approval.
    pub stage: String,
    /// Comment recorded with the approval.
    #[arg(long)]
    pub comment: Option<String>,
}

#[derive(Debug, Args)]
pub struct RejectArgs {
    /// Run id.
    pub run: String,
    /// Stage waiting for approval.
    pub stage: String,
    /// Why the change must not be promoted (required).
    #[arg(long, value_parser = parse_nonempty)]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Newest entries to show.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Only this caller (a name such as `alice`, or a full spiffe:// identity).
    #[arg(long)]
    pub identity: Option<String>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The identity to revoke: spiffe://<trust-domain>/<role>/<name> (see `cdctl certs show`).
    pub identity: String,
    /// Why (recorded with the revocation).
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create or replace a secret; the value is read from standard input.
    #[command(
        long_about = "Create or replace a secret. The value is read from standard \
        input (never from the command line, where it would land in shell history and `ps`); \
        one trailing newline is removed, so `echo \"$TOKEN\" | cdctl secret set TOKEN` stores \
        the token itself. An empty value is refused; values are UTF-8 text up to 64 KiB.\n\n\
        A stage receives the secret as an environment variable when it lists the name under \
        `secrets:`. The coordinators encrypt it with their --secret-key-file key (every \
        coordinator of a cluster needs the same key) and mask it as `***` in stored logs.\n\n\
        Make a key: head -c 32 /dev/urandom | xxd -p -c 64 > secret.key"
    )]
    Set {
        /// Secret name: A-Z, 0-9 and `_`, not starting with a digit (the variable's name).
        name: String,
    },
    /// List secret names with who set each and when (never values).
    List,
    /// Delete a secret; stages that list it fail until it is set again.
    Delete {
        /// Secret name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List agents: labels, slots, running stages, connection and last heartbeat.
    List,
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// List environments with what is deployed in each.
    List,
    /// Show an environment's deployments, newest last.
    History {
        /// Environment name.
        env: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum IncidentCommand {
    /// Open an incident against an environment by hand; prints its id.
    Open {
        /// Environment that is failing, e.g. production.
        env: String,
        /// What is wrong (required).
        #[arg(long, value_parser = parse_nonempty)]
        reason: String,
    },
    /// Resolve an open incident by hand.
    Resolve {
        /// Incident id (from `incident list`).
        id: u64,
        /// What fixed it.
        #[arg(long)]
        note: Option<String>,
    },
    /// List incidents, oldest first.
    List {
        /// Only this environment's.
        #[arg(long)]
        env: Option<String>,
        /// Only incidents still open.
        #[arg(long)]
        open: bool,
    },
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Environment the figures are for.
    #[arg(long, default_value = "production")]
    pub env: String,
    /// Window: from this long ago until now (`30d`, `12h`, `90m`); `all` for all history.
    #[arg(long, default_value = "30d", value_parser = parse_window)]
    pub since: u64,
}

/// `--since`: a duration in milliseconds, or `all` (0: all history).
pub fn parse_window(text: &str) -> Result<u64, String> {
    if text == "all" {
        return Ok(0);
    }
    match cd_common::duration::parse_duration_ms(text)? {
        0 => Err("the window must be longer than zero (or `all`)".to_string()),
        ms => Ok(ms),
    }
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Environment to roll back.
    pub env: String,
    /// Why, recorded on the rollback run.
    #[arg(long)]
    pub reason: Option<String>,
    /// After printing the id, follow the rollback run as `run watch` does (same exit codes).
    #[arg(long)]
    pub watch: bool,
}

/// Parses `K=V`: the name is an environment-variable name, the value anything (may hold `=`).
pub fn parse_param(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("expected K=V, got `{text}`"));
    };
    if key.is_empty() {
        return Err(format!("empty parameter name in `{text}`; expected K=V"));
    }
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "`{key}` is not a valid parameter name (letters, digits and _, not starting with a digit)"
        ));
    }
    if value.contains('\0') {
        return Err(format!("the value of `{key}` contains a NUL byte"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Parses a positive duration such as `500ms`, `10s` or `1m`; a bare number is seconds.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let ms = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>()
            .ok()
            .and_then(|secs| secs.checked_mul(1000))
            .ok_or_else(|| format!("timeout `{text}` is too large"))?
    } else {
        cd_common::duration::parse_duration_ms(text)?
    };
    if ms == 0 {
        return Err("timeout must be more than 0".to_string());
    }
    Ok(Duration::from_millis(ms))
}

/// Accepts any text with something other than whitespace in it.
fn parse_nonempty(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("must not be empty".to_string())
    } else {
        Ok(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn param_parses_key_and_value_with_equals() {
        assert_eq!(
            parse_param("URL=http://x/?a=b").unwrap(),
            ("URL".to_string(), "http://x/?a=b".to_string())
        );
        assert_eq!(
            parse_param("_x1=").unwrap(),
            ("_x1".to_string(), String::new())
        );
    }

    #[test]
    fn param_errors_say_what_is_wrong() {
        assert_eq!(
            parse_param("novalue").unwrap_err(),
            "expected K=V, got `novalue`"
        );
        assert!(
            parse_param("=v")
                .unwrap_err()
                .contains("empty parameter name")
        );
        assert!(
            parse_param("1A=v")
                .unwrap_err()
                .contains("not a valid parameter name")
        );
        assert!(
            parse_param("A-B=v")
                .unwrap_err()
                .contains("not a valid parameter name")
        );
        assert!(
            parse_param("A B=v")
                .unwrap_err()
                .contains("not a valid parameter name")
        );
        assert!(parse_param("A=a\0b").unwrap_err().contains("NUL"));
    }

    #[test]
    fn bad_param_is_a_usage_error() {
        let err =
            Cli::try_parse_from(["cdctl", "run", "start", "web", "--param", "oops"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("expected K=V"), "{err}");
    }

    #[test]
    fn cluster_commands_parse_ids_and_urls() {
        let cli = Cli::try_parse_from(["cdctl", "cluster", "add", "4", "node-4:7400"]).unwrap();
        match cli.command {
            Command::Cluster(ClusterCommand::Add { id, url }) => {
                assert_eq!((id, url.as_str()), (4, "https://node-4:7400"));
            }
            other => panic!("{other:?}"),
        }
        let cli =
            Cli::try_parse_from(["cdctl", "--stale", "cluster", "transfer-leader", "2"]).unwrap();
        assert!(cli.global.stale);
        assert!(matches!(
            cli.command,
            Command::Cluster(ClusterCommand::TransferLeader { id: 2 })
        ));
        for bad in [
            &["cdctl", "cluster", "add", "0", "https://n:1"][..],
            &["cdctl", "cluster", "add", "4", "ftp://n:1"],
            &["cdctl", "cluster", "remove", "x"],
            &["cdctl", "cluster", "add", "4"],
        ] {
            let err = Cli::try_parse_from(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn reads_are_documented_as_linearizable_by_default() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("linearizable by default"), "{help}");
        assert!(help.contains("--stale"));
    }

    #[test]
    fn reject_requires_a_reason() {
        let err = Cli::try_parse_from(["cdctl", "reject", "r1", "deploy"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err =
            Cli::try_parse_from(["cdctl", "reject", "r1", "deploy", "--reason", " "]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn bare_timeout_is_seconds() {
        assert_eq!(parse_timeout("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_timeout("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_timeout("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_timeout("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_timeout("0").is_err());
    }

    #[test]
    fn globals_parse_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "cdctl",
            "run",
            "list",
            "-o",
            "json",
            "--endpoint",
            "https://a:1, https://b:2",
            "--timeout",
            "5",
        ])
        .unwrap();
        assert_eq!(cli.global.output, Output::Json);
        assert_eq!(
            cli.global.endpoint.0,
            vec!["https://a:1".to_string(), "https://b:2".to_string()]
        );
        assert_eq!(cli.global.timeout, Duration::from_secs(5));
    }
}
