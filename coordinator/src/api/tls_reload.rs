//! The listener's TLS, with the node's own certificate rotated without a restart: the server
//! asks [`ReloadingCert`] for its certificate on every handshake, and a watcher swaps in the
//! files' new contents on SIGHUP or when their modification time changes. A bad new pair is
//! refused (logged) and the old one kept. Existing connections keep the certificate they
//! were opened with; new ones get the new one.
//!
//! The handshake runs here rather than in tonic (whose TLS config is fixed at start), one task
//! per connection so a slow client does not hold up the accept loop; refusals are logged with
//! their reason as `tls accept error`.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use cd_common::tls::{TlsError, TlsPaths};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::conn_info::IdentifiedStream;
pub use crate::raft::transport::CertGeneration;

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// The node's current certificate, replaceable while the server runs.
#[derive(Debug)]
pub struct ReloadingCert {
    paths: TlsPaths,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<Stamps>,
    generation: CertGeneration,
}

type Stamps = (Option<SystemTime>, Option<SystemTime>);

fn stamps(paths: &TlsPaths) -> Stamps {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(&paths.cert), modified(&paths.key))
}

impl ReloadingCert {
    /// Loads the pair; every later successful reload bumps `generation`.
    pub fn load(paths: &TlsPaths, generation: CertGeneration) -> Result<Arc<Self>, TlsError> {
        let key = cd_common::tls::certified_key(paths)?;
        Ok(Arc::new(ReloadingCert {
            paths: paths.clone(),
            current: RwLock::new(Arc::new(key)),
            stamps: Mutex::new(stamps(paths)),
            generation,
        }))
    }

    /// Reads the files again and swaps them in; the old pair stays on any error.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = cd_common::tls::certified_key(&self.paths)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        self.generation.bump();
        Ok(())
    }

    /// Whether the files changed since the last look.
    fn changed(&self) -> bool {
        let now = stamps(&self.paths);
        let mut last = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *last != now;
        *last = now;
        changed
    }

    /// Reloads on SIGHUP and whenever the files change, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(POLL);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            let why = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hangup => "SIGHUP",
                _ = tick.tick() => {
                    if !self.changed() {
                        continue;
                    }
                    "the files changed"
                }
            };
            match self.reload() {
                Ok(()) => {
                    info!(cert = %self.paths.cert.display(), why, "reloaded this node's certificate")
                }
                Err(e) => {
                    warn!(error = %e, why, "certificate reload failed; keeping the current one")
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// A server config that requires client certificates from the cluster CA and serves the
/// current certificate of `cert`.
pub fn server_config(
    paths: &TlsPaths,
    cert: Arc<ReloadingCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let roots = cd_common::tls::ca_roots(paths)?;
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| TlsError::Invalid {
            what: "CA certificate",
            path: paths.ca.clone(),
            message: e.to_string(),
        })?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepted, handshaken connections from `listener`, each with its caller parsed once,
/// until `shutdown`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<IdentifiedStream, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Small replies (assignments, commit answers, log acks) must not wait for a
            // delayed ACK.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(IdentifiedStream::new(tls))).await;
                    }
                    Ok(Err(e)) => info!(%peer, error = %e, "tls accept error"),
                    Err(_) => info!(%peer, "tls accept error: handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
