//! Point-to-point message transport between client and server.

use crate::{async_trait, frame, Error, Message, Result};
use bytes::Bytes;
use std::time::Duration;

/// What a transport constructor is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportOptions {
    /// Addresses, for transports that need them.
    pub addresses: Vec<String>,
    /// Timeout of a dial.
    pub dial_timeout: Duration,
    /// The largest message a socket accepts, in bytes.
    pub max_message_size: usize,
    /// How long the rest of a message may take to arrive once its first
    /// bytes have (a stalled or slow-loris peer is cut off after this).
    pub read_timeout: Duration,
    /// TLS, when any of its files is set.
    pub tls: TlsOptions,
}

/// TLS files (PEM). A listener needs `cert` and `key`, and with `ca` it
/// requires clients to present a certificate signed by it (mutual TLS). A
/// dialer verifies servers against `ca` and presents `cert`/`key` if given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Certificate chain of this side.
    pub cert: Option<String>,
    /// Private key of this side.
    pub key: Option<String>,
    /// The certificate authority that peers' certificates must chain to.
    pub ca: Option<String>,
}

impl TlsOptions {
    /// Whether TLS is configured at all.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.ca.is_some()
    }
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            addresses: Vec::new(),
            dial_timeout: Duration::from_secs(5),
            max_message_size: 4 * 1024 * 1024,
            read_timeout: Duration::from_secs(10),
            tls: TlsOptions::default(),
        }
    }
}

/// Dials and listens.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Opens a connection to `addr`.
    async fn dial(&self, addr: &str) -> Result<Box<dyn Socket>>;
    /// Listens on `addr` (`host:port`; port 0 picks a free one).
    async fn listen(&self, addr: &str) -> Result<Box<dyn Listener>>;
    /// The transport's name, e.g. `tcp`.
    fn name(&self) -> &str;
}

/// A listening endpoint.
#[async_trait]
pub trait Listener: Send + Sync {
    /// The address actually bound, `host:port`.
    fn addr(&self) -> String;
    /// The next connection.
    async fn accept(&self) -> Result<Box<dyn Socket>>;
}

/// One connection, carrying whole messages both ways.
#[async_trait]
pub trait Socket: Send {
    /// Sends one message.
    async fn send(&mut self, msg: Message) -> Result<()>;
    /// Receives one message; an error when the peer closed or sent garbage.
    async fn recv(&mut self) -> Result<Message>;
    /// Closes the connection.
    async fn close(&mut self) -> Result<()>;
    /// Sends a message given in [`frame`] encoding (without the length
    /// prefix). Sockets that write frames natively override this to skip
    /// decoding; messages from plugins arrive this way.
    async fn send_frame(&mut self, encoded: Bytes) -> Result<()> {
        let msg = frame::decode(encoded).map_err(|e| Error::bad_request("go.micro.transport", e.to_string()))?;
        self.send(msg).await
    }
    /// Receives a message in [`frame`] encoding (without the length prefix).
    async fn recv_frame(&mut self) -> Result<Bytes> {
        let msg = self.recv().await?;
        frame::to_frame(&msg).map_err(|e| Error::internal("go.micro.transport", e.to_string()))
    }
    /// Splits the connection into halves that two tasks can use at once,
    /// which streams need; the socket is unusable afterwards. `None` when
    /// the transport cannot split its connections (then it carries no
    /// streams).
    fn split(&mut self) -> Option<(Box<dyn SocketSender>, Box<dyn SocketReceiver>)> {
        None
    }
    /// The local address.
    fn local_addr(&self) -> String;
    /// The peer's address.
    fn remote_addr(&self) -> String;
}

/// The sending half of a split [`Socket`].
#[async_trait]
pub trait SocketSender: Send {
    /// Sends one message.
    async fn send(&mut self, msg: Message) -> Result<()>;
    /// Shuts the connection's sending direction down.
    async fn close(&mut self) -> Result<()>;
    /// Sends several messages given as frames back to back, each with its
    /// length prefix (as [`frame::encode_parts_prefixed`] writes them).
    /// Sockets that write frames natively send the batch in one write, which
    /// is how a multiplexed connection saves a syscall per message; the
    /// default sends the messages one by one.
    async fn send_frames(&mut self, batch: Bytes) -> Result<()> {
        let bad = |e: frame::FrameError| Error::bad_request("go.micro.transport", e.to_string());
        for f in frame::split_batch(batch) {
            let msg = frame::decode(f.map_err(bad)?).map_err(bad)?;
            self.send(msg).await?;
        }
        Ok(())
    }
    /// The largest message this socket sends, when it has a limit: a
    /// caller checks a message against it before queueing it behind others.
    fn max_message_size(&self) -> Option<usize> {
        None
    }
}

/// The receiving half of a split [`Socket`].
#[async_trait]
pub trait SocketReceiver: Send {
    /// Receives one message.
    async fn recv(&mut self) -> Result<Message>;
    /// Receives a message in [`frame`] encoding (without the length prefix).
    async fn recv_frame(&mut self) -> Result<Bytes> {
        let msg = self.recv().await?;
        frame::to_frame(&msg).map_err(|e| Error::internal("go.micro.transport", e.to_string()))
    }
    /// Receives a batch in the format of [`SocketSender::send_frames`]: one
    /// frame, waited for, then any more that have already arrived whole
    /// (never waiting for them). A receiver whose messages cross a boundary
    /// one call at a time (a plugin's) takes a batch per crossing this way;
    /// the default is a batch of one.
    async fn recv_frames(&mut self) -> Result<Bytes> {
        let f = self.recv_frame().await?;
        let mut batch = bytes::BytesMut::new();
        frame::put_prefixed(&mut batch, &f);
        Ok(batch.freeze())
    }
}
