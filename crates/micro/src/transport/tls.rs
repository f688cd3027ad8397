//! TLS and mutual TLS for the TCP transport, on rustls (ring provider).
//!
//! Handshakes run off the accept loop (a slow or silent peer cannot hold up
//! other connections) and must finish within the read timeout.

use super::tcp::{Conn, Net, TokioNet};
use micro_core::{BoxFuture, Error, Result, TlsOptions};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

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

/// TLS handshakes a listener runs at once; connections beyond are closed
/// at once (each handshake costs a task and buffers for up to the handshake
/// timeout, so silent sockets must not pile them up without bound).
pub const MAX_HANDSHAKES: usize = 256;

/// Accepted connections whose handshake has completed.
pub struct TlsListener {
    rx: Mutex<mpsc::Receiver<io::Result<Conn<TlsStream<TcpStream>>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    }
}

impl Net for TlsNet {
    type Stream = TlsStream<TcpStream>;
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
            Ok(Conn { stream: TlsStream::Client(tls), local: c.local, peer: c.peer })
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
            let (tx, rx) = mpsc::channel(64);
            let limit = self.handshake_timeout;
            let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
            let task = tokio::spawn(async move {
                loop {
                    let (tcp, peer) = match l.accept().await {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "too many tls handshakes in progress; closing");
                        continue;
                    };
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    // Each handshake on its own task, bounded in time and in number.
                    tokio::spawn(async move {
                        let _permit = permit;
                        let _ = tcp.set_nodelay(true);
                        let local = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
                        match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => {
                                let _ = tx
                                    .send(Ok(Conn { stream: TlsStream::Server(s), local, peer: peer.to_string() }))
                                    .await;
                            }
                            Ok(Err(e)) => tracing::warn!(%peer, error = %e, "tls handshake failed"),
                            Err(_) => tracing::warn!(%peer, "tls handshake timed out"),
                        }
                    });
                }
            });
            Ok((TlsListener { rx: Mutex::new(rx), task }, bound))
        })
    }

    fn accept<'a>(&'a self, l: &'a Self::Listener) -> BoxFuture<'a, io::Result<Conn<Self::Stream>>> {
        Box::pin(async move {
            l.rx.lock().await.recv().await.unwrap_or_else(|| Err(io::Error::other("tls listener closed")))
        })
    }
}
