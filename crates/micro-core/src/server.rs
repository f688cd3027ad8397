//! Serving endpoints and topic subscriptions.

use crate::{
    async_trait, BoxFuture, Broker, BrokerHandler, Endpoint, Error, Request, Response, Result, Service,
    StreamHandlerFn, TlsOptions, Transport,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Serves one request, body still encoded.
pub type HandlerFn = Arc<dyn Fn(Request) -> BoxFuture<'static, Result<Response>> + Send + Sync>;

/// A named endpoint and the function that serves it.
#[derive(Clone)]
pub struct Handler {
    /// The endpoint as advertised; its `name` is `Handler.Method`.
    pub endpoint: Endpoint,
    /// Serves a request.
    pub func: HandlerFn,
    /// Serves a stream, for a streaming endpoint (whose `func` answers
    /// plain calls with an error).
    pub stream: Option<StreamHandlerFn>,
}

impl Handler {
    /// A handler of plain calls.
    pub fn unary(endpoint: Endpoint, func: HandlerFn) -> Self {
        Handler { endpoint, func, stream: None }
    }

    /// A handler of streams; the endpoint is marked with `stream: true`
    /// in its metadata, as go-micro marks stream endpoints.
    pub fn streaming(mut endpoint: Endpoint, stream: StreamHandlerFn) -> Self {
        endpoint.metadata.insert("stream".into(), "true".into());
        let name = endpoint.name.clone();
        let func: HandlerFn = Arc::new(move |_| {
            let e =
                Error::bad_request("go.micro.server", format!("{name} is a stream endpoint: open a stream to call it"));
            Box::pin(async move { Err(e) })
        });
        Handler { endpoint, func, stream: Some(stream) }
    }
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler").field("endpoint", &self.endpoint.name).finish()
    }
}

/// A handler subscribed to a topic.
#[derive(Clone)]
pub struct Subscriber {
    /// The topic.
    pub topic: String,
    /// An optional queue group.
    pub queue: Option<String>,
    /// Handles each message.
    pub handler: BrokerHandler,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("topic", &self.topic).field("queue", &self.queue).finish()
    }
}

/// What a server constructor is given.
#[derive(Clone)]
pub struct ServerOptions {
    /// Service name.
    pub name: String,
    /// Service version.
    pub version: String,
    /// Node id; unique per process.
    pub id: String,
    /// Address to listen on; port 0 picks a free one.
    pub address: String,
    /// Address to advertise instead of the bound one.
    pub advertise: Option<String>,
    /// Service metadata.
    pub metadata: HashMap<String, String>,
    /// Carries requests.
    pub transport: Arc<dyn Transport>,
    /// Carries subscriptions.
    pub broker: Arc<dyn Broker>,
    /// How long `stop` waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Bounds on what peers can make the server hold.
    pub limits: ServerLimits,
    /// TLS files, for servers that listen on their own (the `grpc` server);
    /// the `mucp` server gets TLS from its transport.
    pub tls: TlsOptions,
}

/// Bounds on connections and requests, so that no peer can exhaust a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open connections; further ones are closed on accept.
    pub max_connections: usize,
    /// Requests being handled at once; further ones are answered 503 at once.
    pub max_in_flight: usize,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Requests one connection may have in flight; its further ones are
    /// answered 503 at once (on that connection only), so that one peer
    /// cannot take every slot of `max_in_flight`.
    pub max_in_flight_per_connection: usize,
    /// A new connection must send its first request within this long (a
    /// socket that connects and says nothing holds a slot only this long).
    pub first_message_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 10_000,
            max_in_flight: 4096,
            idle_timeout: Duration::from_secs(300),
            max_in_flight_per_connection: 256,
            first_message_timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("id", &self.id)
            .field("address", &self.address)
            .field("advertise", &self.advertise)
            .field("metadata", &self.metadata)
            .field("transport", &self.transport.name())
            .field("broker", &self.broker.name())
            .field("drain_timeout", &self.drain_timeout)
            .field("limits", &self.limits)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Serves handlers and subscribers.
#[async_trait]
pub trait Server: Send + Sync {
    /// Adds a handler; before `start`.
    fn handle(&self, handler: Handler) -> Result<()>;
    /// Adds a subscriber; before `start`.
    fn subscribe(&self, subscriber: Subscriber) -> Result<()>;
    /// Starts listening and subscribes to topics.
    async fn start(&self) -> Result<()>;
    /// Stops accepting, unsubscribes, and waits for in-flight requests to finish.
    async fn stop(&self) -> Result<()>;
    /// The service record this server advertises: its node and endpoints.
    /// Valid after `start`, when the address is known.
    fn service(&self) -> Service;
    /// The server's name, e.g. `mucp`.
    fn name(&self) -> &str;
}
