//! The caller of a TLS connection, read from its client certificate once per connection
//! rather than on every request: the accept loop wraps each handshaken stream in
//! [`IdentifiedStream`], and tonic copies its [`ConnInfo`] into every request's extensions.
//! What may change during a connection's life (revocation) is still checked per call, by
//! `authz`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use cd_common::certs::Identity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

/// What one connection's client certificate says, parsed once.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    parsed: Arc<Parsed>,
}

#[derive(Debug)]
struct Parsed {
    /// The identity, or why the certificate carries none (refused with UNAUTHENTICATED).
    identity: Result<Identity, String>,
    /// The leaf certificate's serial (colon-separated hex), or empty without one.
    serial: String,
}

impl ConnInfo {
    fn of(tls: &TlsStream<TcpStream>) -> Self {
        let (tcp, session) = tls.get_ref();
        let leaf = session.peer_certificates().and_then(|c| c.first());
        let parsed = match leaf {
            None => Parsed {
                identity: Err("no client certificate was presented".to_string()),
                serial: String::new(),
            },
            Some(der) => Parsed {
                identity: cd_common::certs::identity_from_der(der.as_ref())
                    .map_err(|e| format!("the client certificate is refused: {e}")),
                serial: cd_common::certs::serial_from_der(der.as_ref()).unwrap_or_default(),
            },
        };
        ConnInfo {
            remote: tcp.peer_addr().ok(),
            parsed: Arc::new(parsed),
        }
    }

    /// The caller's identity, or why there is none.
    pub fn identity(&self) -> Result<&Identity, &str> {
        self.parsed.identity.as_ref().map_err(String::as_str)
    }

    /// The client certificate's serial number (empty without a certificate).
    pub fn serial(&self) -> &str {
        &self.parsed.serial
    }
}

/// A handshaken TLS connection together with its parsed caller.
pub struct IdentifiedStream {
    tls: TlsStream<TcpStream>,
    info: ConnInfo,
}

impl IdentifiedStream {
    pub fn new(tls: TlsStream<TcpStream>) -> Self {
        let info = ConnInfo::of(&tls);
        IdentifiedStream { tls, info }
    }
}

impl Connected for IdentifiedStream {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for IdentifiedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for IdentifiedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}
