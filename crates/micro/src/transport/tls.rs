//! TLS and mutual TLS for the TCP transport, on rustls (ring provider).
//!
//! A server's handshake runs on the connection's first use, in that
//! connection's own task, so a slow or silent peer holds up no one else,
//! counts against the server's connection limit from accept (not from the
//! end of its handshake), and must finish within the handshake timeout (the
//! read timeout).

use super::tcp::{Conn, Net, TokioNet};
use micro_core::{BoxFuture, Error, Result, TlsOptions};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const ID: &str = "go.micro.transport";

fn bad(what: &str, path: &str, e: impl std::fmt::Display) -> Error {
    Error::bad_request(ID, format!("tls {what} {path}: {e}"))
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad("certificate", path, e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("certificate", path, e))?;
    if certs.is_empty() {
        return Err(bad("certificate", path, "no certificate in the file"));
    }
    Ok(certs)
}

fn key(path: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| bad("key", path, e))
}

fn roots(path: &str) -> Result<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(|e| bad("CA", path, e))?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TCP sockets wrapped in TLS.
pub struct TlsNet {
    tcp: TokioNet,
    acceptor: Option<TlsAcceptor>,
    connector: Option<TlsConnector>,
    handshake_timeout: Duration,
}

impl TlsNet {
    /// Builds the server and client sides from PEM files (see [`TlsOptions`]).
    pub fn new(opts: &TlsOptions, handshake_timeout: Duration) -> Result<Self> {
        Self::with_alpn(opts, handshake_timeout, Vec::new())
    }

    /// Like [`new`](Self::new), offering these ALPN protocols (gRPC needs `h2`).
    pub fn with_alpn(opts: &TlsOptions, handshake_timeout: Duration, alpn: Vec<Vec<u8>>) -> Result<Self> {
        let versions = rustls::DEFAULT_VERSIONS;
        let acceptor = match (&opts.cert, &opts.key) {
            (Some(cert), Some(k)) => {
                let builder = rustls::ServerConfig::builder_with_provider(provider())
                    .with_protocol_versions(versions)
                    .map_err(|e| Error::internal(ID, e.to_string()))?;
                let builder = match &opts.ca {
                    // Mutual TLS: only clients with a certificate from this CA get in.
                    Some(ca) => builder.with_client_cert_verifier(
                        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                            .build()
                            .map_err(|e| bad("CA", ca, e))?,
                    ),
                    None => builder.with_no_client_auth(),
                };
                let mut config =
                    builder.with_single_cert(certs(cert)?, key(k)?).map_err(|e| bad("certificate", cert, e))?;
                config.alpn_protocols = alpn.clone();
                Some(TlsAcceptor::from(Arc::new(config)))
            }
            (None, None) => None,
            _ => return Err(Error::bad_request(ID, "tls: --transport-tls-cert and --transport-tls-key go together")),
        };
        let connector = match &opts.ca {
            Some(ca) => {
                let builder = rustls::ClientConfig::builder_with_provider(provider())
                    .with_protocol_versions(versions)
                    .map_err(|e| Error::internal(ID, e.to_string()))?
                    .with_root_certificates(roots(ca)?);
                let mut config = match (&opts.cert, &opts.key) {
                    (Some(cert), Some(k)) => {
                        builder.with_client_auth_cert(certs(cert)?, key(k)?).map_err(|e| bad("certificate", cert, e))?
                    }
                    _ => builder.with_no_client_auth(),
                };
                config.alpn_protocols = alpn;
                Some(TlsConnector::from(Arc::new(config)))
            }
            None => None,
        };
        Ok(TlsNet { tcp: TokioNet, acceptor, connector, handshake_timeout })
    }
}

/// A TLS listener: accepted TCP connections, each handshaken on first use.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

/// A TLS connection: a client's (handshaken when dialled) or a server's
/// (handshaken on first use, within its deadline).
pub enum TlsConn {
    /// Dialled by this side.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Accepted by this side.
    Server(ServerTls),
}

/// A server-side TLS connection whose handshake runs when it is first read
/// or written.
pub struct ServerTls {
    state: Handshake,
}

enum Handshake {
    Running { accept: Box<tokio_rustls::Accept<TcpStream>>, deadline: Pin<Box<tokio::time::Sleep>>, limit: Duration },
    Done(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Failed,
}

impl ServerTls {
    fn new(accept: tokio_rustls::Accept<TcpStream>, limit: Duration) -> Self {
        ServerTls {
            state: Handshake::Running {
                accept: Box::new(accept),
                deadline: Box::pin(tokio::time::sleep(limit)),
                limit,
            },
        }
    }

    /// Drives the handshake; ready once the stream can carry data.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (accept, deadline, limit) = match &mut self.state {
            Handshake::Done(_) => return Poll::Ready(Ok(())),
            Handshake::Failed => return Poll::Ready(Err(io::Error::other("tls handshake failed"))),
            Handshake::Running { accept, deadline, limit } => (accept, deadline, *limit),
        };
        match Pin::new(&mut **accept).poll(cx) {
            Poll::Ready(Ok(s)) => {
                self.state = Handshake::Done(Box::new(s));
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                self.state = Handshake::Failed;
                Poll::Ready(Err(e))
            }
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.state = Handshake::Failed;
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("tls handshake not done within {limit:?}"),
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn stream(&mut self) -> Option<Pin<&mut tokio_rustls::server::TlsStream<TcpStream>>> {
        match &mut self.state {
            Handshake::Done(s) => Some(Pin::new(&mut **s)),
            _ => None,
        }
    }
}

macro_rules! ready_or_return {
    ($e:expr) => {
        match $e {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    };
}

/// A TLS stream's halves share its session state, so they share a lock.
impl super::Halves for TlsConn {
    type Read = tokio::io::ReadHalf<TlsConn>;
    type Write = tokio::io::WriteHalf<TlsConn>;
    fn halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsConn::Client(s) => Pin::new(&mut **s).poll_read(cx, buf),
            TlsConn::Server(s) => {
                ready_or_return!(s.poll_handshake(cx));
                match s.stream() {
                    Some(st) => st.poll_read(cx, buf),
                    None => Poll::Ready(Err(io::Error::other("tls handshake failed"))),
                }
            }
        }
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TlsConn::Client(s) => Pin::new(&mut **s).poll_write(cx, buf),
            TlsConn::Server(s) => {
                ready_or_return!(s.poll_handshake(cx));
                match s.stream() {
                    Some(st) => st.poll_write(cx, buf),
                    None => Poll::Ready(Err(io::Error::other("tls handshake failed"))),
                }
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsConn::Client(s) => Pin::new(&mut **s).poll_flush(cx),
            TlsConn::Server(s) => match s.stream() {
                Some(st) => st.poll_flush(cx),
                None => Poll::Ready(Ok(())),
            },
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsConn::Client(s) => Pin::new(&mut **s).poll_shutdown(cx),
            // Before (or without) a handshake there is no TLS session to close.
            TlsConn::Server(s) => match s.stream() {
                Some(st) => st.poll_shutdown(cx),
                None => Poll::Ready(Ok(())),
            },
        }
    }
}

fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    }
}

impl Net for TlsNet {
    type Stream = TlsConn;
    type Listener = TlsListener;

    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Conn<Self::Stream>>> {
        Box::pin(async move {
            let connector = self.connector.clone().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "tls: dialing needs --transport-tls-ca to verify servers")
            })?;
            let name = ServerName::try_from(host_of(addr).to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("tls server name of {addr}: {e}")))?;
            let c = self.tcp.connect(addr).await?;
            let tls = tokio::time::timeout(self.handshake_timeout, connector.connect(name, c.stream))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "tls handshake timed out"))??;
            Ok(Conn { stream: TlsConn::Client(Box::new(tls)), local: c.local, peer: c.peer })
        })
    }

    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<(Self::Listener, String)>> {
        Box::pin(async move {
            let acceptor = self.acceptor.clone().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "tls: listening needs --transport-tls-cert and --transport-tls-key",
                )
            })?;
            let l = TcpListener::bind(addr).await?;
            let bound = l.local_addr()?.to_string();
            Ok((TlsListener { tcp: l, acceptor, handshake_timeout: self.handshake_timeout }, bound))
        })
    }

    fn accept<'a>(&'a self, l: &'a Self::Listener) -> BoxFuture<'a, io::Result<Conn<Self::Stream>>> {
        Box::pin(async move {
            let (tcp, peer) = l.tcp.accept().await?;
            let _ = super::tcp::tune(&tcp);
            let local = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
            // The handshake runs when the connection is first used, in its own task.
            let stream = TlsConn::Server(ServerTls::new(l.acceptor.accept(tcp), l.handshake_timeout));
            Ok(Conn { stream, local, peer: peer.to_string() })
        })
    }
}
