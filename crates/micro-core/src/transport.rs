//! Point-to-point message transport between client and server.

use crate::{async_trait, Message, Result};
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
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            addresses: Vec::new(),
            dial_timeout: Duration::from_secs(5),
            max_message_size: 4 * 1024 * 1024,
            read_timeout: Duration::from_secs(10),
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
    /// The local address.
    fn local_addr(&self) -> String;
    /// The peer's address.
    fn remote_addr(&self) -> String;
}
