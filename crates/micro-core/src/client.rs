//! Making calls to services and publishing messages.

use crate::{async_trait, Broker, Error, Message, Result, Selector, Stream, TlsOptions, Transport};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A request to an endpoint of a service, body already encoded.
/// Servers receive the same type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The service, e.g. `greeter`.
    pub service: String,
    /// The endpoint, e.g. `Greeter.Hello`.
    pub endpoint: String,
    /// The body's content type, which picks the codec.
    pub content_type: String,
    /// The encoded body.
    pub body: Bytes,
    /// Call metadata, sent as headers.
    pub metadata: HashMap<String, String>,
}

/// A response, body still encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The body's content type.
    pub content_type: String,
    /// The encoded body.
    pub body: Bytes,
    /// Response metadata.
    pub metadata: HashMap<String, String>,
}

/// Options of one call, overriding the client's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// The whole call's deadline, retries included.
    pub timeout: Option<Duration>,
    /// How many times to retry after a connection error.
    pub retries: Option<u32>,
    /// Call this address directly instead of asking the selector.
    pub address: Option<String>,
}

/// What a client constructor is given.
#[derive(Clone)]
pub struct ClientOptions {
    /// Picks nodes.
    pub selector: Arc<dyn Selector>,
    /// Carries requests.
    pub transport: Arc<dyn Transport>,
    /// Carries published messages.
    pub broker: Arc<dyn Broker>,
    /// Retries after a connection error (go-micro's default: 1).
    pub retries: u32,
    /// Default deadline of a call.
    pub request_timeout: Duration,
    /// Idle connections kept per address.
    pub pool_size: usize,
    /// How long an idle pooled connection is kept.
    pub pool_ttl: Duration,
    /// TLS files, for clients that dial on their own (the `grpc` client);
    /// the `mucp` client gets TLS from its transport.
    pub tls: TlsOptions,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("selector", &self.selector.name())
            .field("transport", &self.transport.name())
            .field("broker", &self.broker.name())
            .field("retries", &self.retries)
            .field("request_timeout", &self.request_timeout)
            .field("pool_size", &self.pool_size)
            .field("pool_ttl", &self.pool_ttl)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Calls services and publishes messages.
#[async_trait]
pub trait Client: Send + Sync {
    /// Calls an endpoint; errors come back in go-micro's shape.
    async fn call(&self, req: Request, opts: CallOptions) -> Result<Response>;
    /// Opens a stream to a streaming endpoint. `req.body`, when not empty,
    /// is sent as the first message. Only an explicit `opts.timeout` bounds
    /// a stream (streams are often long-lived); dropping the stream cancels
    /// it.
    async fn stream(&self, req: Request, opts: CallOptions) -> Result<Stream> {
        let _ = opts;
        Err(Error::new(
            "go.micro.client",
            format!("client {} cannot open streams (to {}.{})", self.name(), req.service, req.endpoint),
            501,
        ))
    }
    /// Publishes a message (already encoded) to a topic.
    async fn publish(&self, topic: &str, msg: Message) -> Result<()>;
    /// The client's name, e.g. `mucp`.
    fn name(&self) -> &str;
}
