//! The connection to the cluster: endpoint lists, mutual TLS, timeouts and finding the leader.
//!
//! `--endpoint` may name several coordinators; [`Conn::connect`] tries them in order and keeps
//! the first that connects. A follower answers writes (and linearizable reads) with
//! `UNAVAILABLE` and a `cd-leader` metadata entry holding the leader's URL; [`Conn::call`] then
//! connects there and calls again, and keeps using the leader for later calls. `UNAVAILABLE`
//! without a leader (an election) is retried with growing pauses for a while. The same logic
//! serves every service ([`ServiceClient`]): the operator API and cluster administration.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use cd_common::tls::{TlsError, TlsPaths, client_tls};
use cd_proto::v1::cluster_service_client::ClusterServiceClient;
use cd_proto::v1::control_service_client::ControlServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use crate::error::{StatusError, UsageError, one_line};

/// The generated operator-API client over a connected channel.
pub type Client = ControlServiceClient<InterceptedService<Channel, CallMeta>>;
/// The generated cluster-administration client over a connected channel.
pub type ClusterClient = ClusterServiceClient<InterceptedService<Channel, CallMeta>>;

/// Metadata key a follower sets to the leader's URL on `UNAVAILABLE`.
pub const LEADER_METADATA: &str = "cd-leader";
/// Request metadata asking a node for its applied state without the leader check.
pub const STALE_METADATA: &str = "cd-stale";
/// How long a call keeps retrying while no node names a leader.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Coordinator URLs in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointList(pub Vec<String>);

/// Normalises one endpoint: `host:port` becomes `https://host:port`; the scheme must be http
/// or https and a host is required; a trailing `/` is dropped.
pub fn parse_endpoint(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty endpoint".to_string());
    }
    let url = if text.contains("://") {
        text.to_string()
    } else {
        format!("https://{text}")
    };
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("`{text}` is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") | Some("http") => {}
        other => {
            return Err(format!(
                "`{text}` has scheme `{}`; use https:// (or http:// for a cluster without TLS)",
                other.unwrap_or("")
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("`{text}` must not have a path"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Parses `--endpoint`: one URL or a comma-separated list (blanks around commas ignored).
pub fn parse_endpoint_list(text: &str) -> Result<EndpointList, String> {
    let endpoints = text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(parse_endpoint)
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Err("no endpoint given".to_string());
    }
    Ok(EndpointList(endpoints))
}

/// The host part of an endpoint URL, used as the TLS server name (`[::1]` becomes `::1`).
pub fn tls_domain(endpoint: &str) -> Option<String> {
    let uri: Uri = endpoint.parse().ok()?;
    let host = uri.host()?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// Picks the TLS files: each of `--ca`, `--cert`, `--key` if given, else the default name in
/// `--cert-dir` (`ca.pem`, `operator.pem`, `operator-key.pem`). The error names what is missing.
pub fn resolve_tls(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    cert_dir: Option<&Path>,
) -> Result<TlsPaths, String> {
    let pick = |given: Option<&Path>, default: &str| -> Option<PathBuf> {
        given
            .map(Path::to_path_buf)
            .or_else(|| cert_dir.map(|dir| dir.join(default)))
    };
    let ca = pick(ca, "ca.pem");
    let cert = pick(cert, "operator.pem");
    let key = pick(key, "operator-key.pem");
    match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => Ok(TlsPaths { ca, cert, key }),
        (ca, cert, key) => {
            let missing: Vec<&str> = [(ca, "--ca"), (cert, "--cert"), (key, "--key")]
                .into_iter()
                .filter(|(path, _)| path.is_none())
                .map(|(_, flag)| flag)
                .collect();
            Err(format!(
                "no TLS files given: pass {} (or CD_CA, CD_CERT, CD_KEY), or set CD_CERT_DIR",
                missing.join(", ")
            ))
        }
    }
}

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    pub endpoints: Vec<String>,
    /// The TLS files, or why they are not known (an error only for https endpoints).
    pub tls: Result<TlsPaths, String>,
    /// Limit for connecting and for each unary call.
    pub timeout: Duration,
    /// Send `cd-stale: true` with read calls ([`Conn::read`]).
    pub stale: bool,
    /// How long to keep retrying while nodes answer `UNAVAILABLE` without naming a leader.
    pub leader_wait: Duration,
}

/// Why one endpoint could not be used.
pub enum ConnectFailure {
    /// The TLS configuration itself is unusable: the same for every endpoint, so stop.
    Config(anyhow::Error),
    /// This endpoint did not answer or refused the handshake.
    Transport(String),
}

/// Metadata added to every request a client sends (see [`Conn::read`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallMeta {
    /// Ask for the answering node's applied state, without the leader check.
    stale: bool,
    /// A read: safe to send again whatever went wrong the first time.
    read: bool,
}

impl Interceptor for CallMeta {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if self.stale {
            request
                .metadata_mut()
                .insert(STALE_METADATA, MetadataValue::from_static("true"));
        }
        Ok(request)
    }
}

/// A generated gRPC client that [`Conn`] can build over a channel.
pub trait ServiceClient {
    fn build(channel: Channel, meta: CallMeta) -> Self;
}

impl ServiceClient for Client {
    fn build(channel: Channel, meta: CallMeta) -> Self {
        ControlServiceClient::with_interceptor(channel, meta)
    }
}

impl ServiceClient for ClusterClient {
    fn build(channel: Channel, meta: CallMeta) -> Self {
        ClusterServiceClient::with_interceptor(channel, meta)
    }
}

/// A connection to one coordinator, plus what is needed to move to the leader (or to another
/// endpoint) and call again. `C` is the service the calls go to.
pub struct Conn<C = Client> {
    cfg: ConnectConfig,
    endpoint: String,
    channel: Channel,
    client: PhantomData<fn() -> C>,
}

impl<C: ServiceClient> Conn<C> {
    /// Connects to the first endpoint that answers, in list order.
    pub async fn connect(cfg: ConnectConfig) -> anyhow::Result<Conn<C>> {
        let mut failures = Vec::new();
        for endpoint in &cfg.endpoints {
            match connect_one(&cfg, endpoint).await {
                Ok(channel) => return Ok(Conn::over(cfg.clone(), endpoint.clone(), channel)),
                Err(ConnectFailure::Config(err)) => return Err(err),
                Err(ConnectFailure::Transport(why)) => failures.push((endpoint.clone(), why)),
            }
        }
        match failures.as_slice() {
            [(endpoint, why)] => Err(anyhow!("connect to {endpoint}: {why}")),
            _ => Err(anyhow!(
                "cannot connect to any endpoint: {}",
                failures
                    .iter()
                    .map(|(endpoint, why)| format!("{endpoint}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        }
    }

    /// Connects to this one endpoint (for asking every node in turn).
    pub async fn connect_to(
        cfg: &ConnectConfig,
        endpoint: &str,
    ) -> Result<Conn<C>, ConnectFailure> {
        let channel = connect_one(cfg, endpoint).await?;
        Ok(Conn::over(cfg.clone(), endpoint.to_string(), channel))
    }

    fn over(cfg: ConnectConfig, endpoint: String, channel: Channel) -> Conn<C> {
        Conn {
            cfg,
            endpoint,
            channel,
            client: PhantomData,
        }
    }

    /// The endpoint in use (the leader after a redirect).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A write (or any call that must reach the leader): see [`Conn::call_with`].
    pub async fn call<T>(
        &mut self,
        what: &str,
        f: impl AsyncFnMut(C) -> Result<tonic::Response<T>, Status>,
    ) -> anyhow::Result<T> {
        self.call_with(what, CallMeta::default(), f).await
    }

    /// A read: like [`Conn::call`], but with `--stale` it carries `cd-stale: true`, so the
    /// node asked answers from its applied state instead of sending the call to the leader.
    pub async fn read<T>(
        &mut self,
        what: &str,
        f: impl AsyncFnMut(C) -> Result<tonic::Response<T>, Status>,
    ) -> anyhow::Result<T> {
        let meta = CallMeta {
            stale: self.cfg.stale,
            read: true,
        };
        self.call_with(what, meta, f).await
    }

    /// One call to this node only, bounded by the timeout: no redirect, no retry.
    pub async fn call_once<T>(
        &mut self,
        mut f: impl AsyncFnMut(C) -> Result<tonic::Response<T>, Status>,
    ) -> Result<T, Status> {
        self.timed(CallMeta::default(), &mut f).await
    }

    /// Makes a call, each attempt bounded by the timeout (for a stream: until it opens), and
    /// finds the leader when the node asked is not it:
    ///
    /// - `UNAVAILABLE` with a `cd-leader` URL: connect there and call again (at most
    ///   [`MAX_REDIRECTS`] times, so removing the leader, which hands leadership over and then
    ///   names the new leader, still ends at the right node);
    /// - `UNAVAILABLE` naming no leader (an election is going on, or the node lost its
    ///   connection): wait with growing pauses, moving on to the next `--endpoint` when there
    ///   are several, and give up after `leader_wait`.
    ///
    /// Errors read `<what>: <code in words>: <message>`.
    pub async fn call_with<T>(
        &mut self,
        what: &str,
        meta: CallMeta,
        mut f: impl AsyncFnMut(C) -> Result<tonic::Response<T>, Status>,
    ) -> anyhow::Result<T> {
        let mut redirects = 0;
        let mut waiting_since: Option<Instant> = None;
        let mut pauses = 0;
        loop {
            let status = match self.timed(meta, &mut f).await {
                Ok(value) => return Ok(value),
                Err(status) => status,
            };
            if status.code() != Code::Unavailable {
                return Err(status_error(status, what));
            }
            if let Some(leader) = leader_hint(&status).filter(|leader| *leader != self.endpoint) {
                // Each --endpoint may be visited once more than MAX_REDIRECTS allows: a
                // leader named by an address this client cannot reach (a peer URL inside a
                // container network) is then found through the other endpoints.
                if redirects == MAX_REDIRECTS + self.cfg.endpoints.len() {
                    return Err(status_error_why(
                        status,
                        what,
                        format!(
                            "still not at the leader after {redirects} redirects (last at {})",
                            self.endpoint
                        ),
                    ));
                }
                redirects += 1;
                if let Err(err) = self.move_to_leader(&leader, what).await {
                    if self.cfg.endpoints.len() < 2 {
                        return Err(err);
                    }
                    self.next_endpoint().await?;
                }
                continue;
            }
            // A write is sent again only when it surely was not applied: the node said it is
            // not the leader, or the connection never opened. A connection lost mid-call may
            // have delivered it, and `run start` twice would start two runs.
            if !meta.read && !never_applied(&status) {
                return Err(status_error(status, what));
            }
            let since = *waiting_since.get_or_insert_with(Instant::now);
            let pause = backoff(pauses);
            pauses += 1;
            if since.elapsed() + pause > self.cfg.leader_wait {
                return Err(status_error_why(
                    status,
                    what,
                    format!(
                        "no leader within {}: the cluster keeps answering `unavailable` without \
                         naming one (an election in progress, or too few nodes up for a \
                         majority?); last answer from {}",
                        crate::render::duration_text(self.cfg.leader_wait.as_millis() as u64),
                        self.endpoint
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            self.next_endpoint().await?;
        }
    }

    /// Connects to the leader a follower named.
    async fn move_to_leader(&mut self, leader: &str, what: &str) -> anyhow::Result<()> {
        match connect_one(&self.cfg, leader).await {
            Ok(channel) => {
                self.channel = channel;
                self.endpoint = leader.to_string();
                Ok(())
            }
            Err(ConnectFailure::Config(err)) => Err(err.context(what.to_string())),
            Err(ConnectFailure::Transport(why)) => Err(anyhow!(
                "{what}: {} redirected to the leader {leader}, which cannot be reached: {why}",
                self.endpoint
            )),
        }
    }

    /// Moves to the next `--endpoint` after the current one that connects (wrapping around).
    /// With a single endpoint, or when none connects, the current channel stays: it
    /// reconnects by itself on the next call.
    async fn next_endpoint(&mut self) -> anyhow::Result<()> {
        let list = self.cfg.endpoints.clone();
        if list.len() < 2 {
            return Ok(());
        }
        let start = list
            .iter()
            .position(|e| *e == self.endpoint)
            .map_or(0, |i| i + 1);
        for k in 0..list.len() {
            let endpoint = &list[(start + k) % list.len()];
            match connect_one(&self.cfg, endpoint).await {
                Ok(channel) => {
                    self.channel = channel;
                    self.endpoint.clone_from(endpoint);
                    return Ok(());
                }
                Err(ConnectFailure::Config(err)) => return Err(err),
                Err(ConnectFailure::Transport(_)) => {}
            }
        }
        Ok(())
    }

    async fn timed<T>(
        &mut self,
        meta: CallMeta,
        f: &mut impl AsyncFnMut(C) -> Result<tonic::Response<T>, Status>,
    ) -> Result<T, Status> {
        let client = C::build(self.channel.clone(), meta);
        match tokio::time::timeout(self.cfg.timeout, f(client)).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer from {} within {} (see --timeout)",
                self.endpoint,
                crate::render::duration_text(self.cfg.timeout.as_millis() as u64)
            ))),
        }
    }
}

/// Whether an UNAVAILABLE answer proves the call was not applied.
fn never_applied(status: &Status) -> bool {
    let m = status.message();
    m.contains("not the leader")
        || m.contains("error trying to connect")
        || m.contains("tcp connect error")
        || m.contains("Connection refused")
}

/// How many times one call follows a `cd-leader` hint.
pub const MAX_REDIRECTS: usize = 3;

/// The pause before retrying the `n`th time (from 0) while no leader is known: 100ms,
/// doubling, at most 1s.
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << n.min(4)).min(1000))
}
/// Wraps a status as `<what>: <code>: <message>`.
pub fn status_error(status: Status, what: &str) -> anyhow::Error {
    anyhow::Error::new(StatusError::from(status)).context(what.to_string())
}

/// Wraps a status as `<what>: <why>: <code>: <message>`.
fn status_error_why(status: Status, what: &str, why: String) -> anyhow::Error {
    anyhow::Error::new(StatusError::from(status))
        .context(why)
        .context(what.to_string())
}

/// The leader URL a follower named, if the status is `UNAVAILABLE` and carries a valid one.
pub fn leader_hint(status: &Status) -> Option<String> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let value = status.metadata().get(LEADER_METADATA)?.to_str().ok()?;
    parse_endpoint(value).ok()
}

async fn connect_one(cfg: &ConnectConfig, endpoint: &str) -> Result<Channel, ConnectFailure> {
    let mut ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| ConnectFailure::Transport(one_line(&e)))?
        .connect_timeout(cfg.timeout)
        .tcp_nodelay(true);
    if endpoint.starts_with("https://") {
        let paths = cfg.tls.as_ref().map_err(|why| {
            ConnectFailure::Config(UsageError(format!("connect to {endpoint}: {why}")).into())
        })?;
        let domain = tls_domain(endpoint).ok_or_else(|| {
            ConnectFailure::Transport(format!("no host in {endpoint} to check the certificate"))
        })?;
        let tls = client_tls(paths, &domain).map_err(|err| {
            let what = match err {
                TlsError::Read { .. } => "TLS files could not be read",
                TlsError::Invalid { .. } => "TLS files are not valid",
            };
            ConnectFailure::Config(anyhow!("connect to {endpoint}: {what}: {err}"))
        })?;
        ep = ep.tls_config(tls.timeout(cfg.timeout)).map_err(|e| {
            ConnectFailure::Transport(format!("TLS setup failed: {}", one_line(&e)))
        })?;
    }
    match tokio::time::timeout(cfg.timeout, ep.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(ConnectFailure::Transport(one_line(&e))),
        Err(_) => Err(ConnectFailure::Transport(format!(
            "no connection within {} (see --timeout)",
            crate::render::duration_text(cfg.timeout.as_millis() as u64)
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_answers_that_prove_nothing_was_applied_allow_resending_a_write() {
        assert!(super::never_applied(&Status::unavailable(
            "not the leader (leader is node 2 at https://n2:7400); retry"
        )));
        assert!(super::never_applied(&Status::unavailable(
            "error trying to connect: tcp connect error: Connection refused (os error 111)"
        )));
        assert!(!super::never_applied(&Status::unavailable(
            "transport error: connection reset by peer"
        )));
    }

    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn endpoint_list_splits_trims_and_defaults_to_https() {
        let list = parse_endpoint_list(" https://a:7400 ,b:7401,,http://[::1]:7402/ ").unwrap();
        assert_eq!(
            list.0,
            vec![
                "https://a:7400".to_string(),
                "https://b:7401".to_string(),
                "http://[::1]:7402".to_string(),
            ]
        );
    }

    #[test]
    fn endpoint_list_errors() {
        assert_eq!(parse_endpoint_list(" , ").unwrap_err(), "no endpoint given");
        assert!(
            parse_endpoint_list("https://a:1,ftp://b:2")
                .unwrap_err()
                .contains("scheme `ftp`")
        );
        assert!(
            parse_endpoint_list("https://a:1/x")
                .unwrap_err()
                .contains("must not have a path")
        );
        assert!(parse_endpoint_list("https://a b").is_err());
    }

    #[test]
    fn tls_domain_is_the_host() {
        assert_eq!(
            tls_domain("https://127.0.0.1:7400").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(tls_domain("https://[::1]:7400").as_deref(), Some("::1"));
        assert_eq!(
            tls_domain("https://node-2.local").as_deref(),
            Some("node-2.local")
        );
    }

    #[test]
    fn tls_files_default_into_cert_dir() {
        let dir = Path::new("/c");
        let paths = resolve_tls(None, Some(Path::new("/x/me.pem")), None, Some(dir)).unwrap();
        assert_eq!(paths.ca, Path::new("/c/ca.pem"));
        assert_eq!(paths.cert, Path::new("/x/me.pem"));
        assert_eq!(paths.key, Path::new("/c/operator-key.pem"));
        let err = resolve_tls(None, Some(Path::new("/x/me.pem")), None, None).unwrap_err();
        assert!(err.contains("--ca, --key"), "{err}");
        assert!(!err.contains("--cert,"), "{err}");
    }

    /// A connection that never connects: the calls below do not use the client.
    fn lazy_conn(endpoints: &[&str], leader_wait: Duration) -> Conn<Client> {
        let cfg = ConnectConfig {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            tls: Err("no TLS in this test".into()),
            timeout: Duration::from_secs(1),
            stale: false,
            leader_wait,
        };
        let channel = Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        Conn::over(cfg, endpoints[0].to_string(), channel)
    }

    fn no_leader() -> Status {
        Status::unavailable("not the leader (no leader elected yet); retry")
    }

    #[test]
    fn backoff_doubles_up_to_a_second() {
        let ms: Vec<u128> = (0..7).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn unavailable_without_a_leader_is_retried_then_given_up() {
        let mut conn = lazy_conn(&["http://127.0.0.1:9"], Duration::from_millis(350));
        let mut calls = 0;
        let err = conn
            .call("cluster add", async |_c| {
                calls += 1;
                Err::<tonic::Response<()>, _>(no_leader())
            })
            .await
            .unwrap_err();
        // Pauses of 100 and 200 ms fit in 350 ms; the next (400 ms) does not.
        assert_eq!(calls, 3);
        let text = format!("{err:#}");
        assert!(
            text.starts_with("cluster add: no leader within 350ms: "),
            "{text}"
        );
        assert!(
            text.ends_with(
                "last answer from http://127.0.0.1:9: unavailable: not the leader (no leader \
                 elected yet); retry"
            ),
            "{text}"
        );
        assert_eq!(crate::error::exit_code_for(&err), 1);
    }

    #[tokio::test]
    async fn a_leader_elected_while_waiting_answers_and_other_errors_are_final() {
        let mut conn = lazy_conn(&["http://127.0.0.1:9"], Duration::from_secs(10));
        let mut calls = 0;
        let value = conn
            .call("run start", async |_c| {
                calls += 1;
                if calls < 3 {
                    Err(no_leader())
                } else {
                    Ok(tonic::Response::new(7))
                }
            })
            .await
            .unwrap();
        assert_eq!((value, calls), (7, 3));

        calls = 0;
        let err = conn
            .call("run show", async |_c| {
                calls += 1;
                Err::<tonic::Response<()>, _>(Status::not_found("run \"x\" does not exist"))
            })
            .await
            .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(
            format!("{err:#}"),
            "run show: not found: run \"x\" does not exist"
        );
    }

    #[tokio::test]
    async fn a_leader_that_cannot_be_reached_is_an_error() {
        let mut conn = lazy_conn(&["http://127.0.0.1:9"], Duration::from_secs(10));
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
        };
        let err = conn
            .call("approve", async |_c| {
                let mut status = Status::unavailable("not the leader");
                status
                    .metadata_mut()
                    .insert(LEADER_METADATA, dead.parse().unwrap());
                Err::<tonic::Response<()>, _>(status)
            })
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with(&format!(
                "approve: http://127.0.0.1:9 redirected to the leader {dead}, which cannot be \
                 reached: "
            )),
            "{text}"
        );
    }

    #[test]
    fn stale_metadata_only_when_asked() {
        let mut meta = CallMeta {
            stale: true,
            read: true,
        };
        let req = meta.call(tonic::Request::new(())).unwrap();
        assert_eq!(req.metadata().get(STALE_METADATA).unwrap(), "true");
        let req = CallMeta::default().call(tonic::Request::new(())).unwrap();
        assert!(req.metadata().get(STALE_METADATA).is_none());
    }

    #[test]
    fn leader_hint_needs_unavailable_and_a_url() {
        let mut status = Status::unavailable("not the leader");
        assert_eq!(leader_hint(&status), None);
        status.metadata_mut().insert(
            LEADER_METADATA,
            MetadataValue::from_static("https://n2:7400"),
        );
        assert_eq!(leader_hint(&status).as_deref(), Some("https://n2:7400"));

        let mut other = Status::not_found("x");
        other.metadata_mut().insert(
            LEADER_METADATA,
            MetadataValue::from_static("https://n2:7400"),
        );
        assert_eq!(leader_hint(&other), None);

        let mut bad = Status::unavailable("x");
        bad.metadata_mut()
            .insert(LEADER_METADATA, MetadataValue::from_static("ftp://n2"));
        assert_eq!(leader_hint(&bad), None);
    }
}
