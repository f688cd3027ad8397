//! Publish/subscribe messaging.

use crate::{async_trait, BoxFuture, Message, Registry, Result};
use std::sync::Arc;

/// Handles one delivered message: `(topic, message)`.
pub type BrokerHandler = Arc<dyn Fn(String, Message) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// Options of [`Broker::subscribe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// A queue group: each message goes to one member of the group.
    /// Without one, every subscriber gets every message.
    pub queue: Option<String>,
}

/// What a broker constructor is given.
#[derive(Clone, Default)]
pub struct BrokerOptions {
    /// Addresses of the broker's servers.
    pub addresses: Vec<String>,
    /// The registry, for brokers that find their peers through it.
    pub registry: Option<Arc<dyn Registry>>,
    /// TLS files, for brokers that listen or dial on their own (the `http`
    /// broker): the transport's, so that pub/sub is as protected as calls.
    pub tls: crate::TlsOptions,
    /// For brokers that listen on their own (the `http` broker): the
    /// `host:port` to register for that listener instead of the one derived
    /// from its bound address (behind NAT, or to pick an interface).
    pub advertise: Option<String>,
}

impl std::fmt::Debug for BrokerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerOptions")
            .field("addresses", &self.addresses)
            .field("advertise", &self.advertise)
            .field("registry", &self.registry.as_ref().map(|r| r.name().to_string()))
            .field("tls", &self.tls)
            .finish()
    }
}

/// A message broker.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Connects to the broker's servers.
    async fn connect(&self) -> Result<()>;
    /// Disconnects.
    async fn disconnect(&self) -> Result<()>;
    /// Publishes a message to a topic.
    async fn publish(&self, topic: &str, msg: Message) -> Result<()>;
    /// Subscribes a handler to a topic.
    async fn subscribe(
        &self,
        topic: &str,
        handler: BrokerHandler,
        opts: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>>;
    /// Where the broker is, for messages and metadata.
    fn address(&self) -> String;
    /// The broker's name, e.g. `memory`.
    fn name(&self) -> &str;
}

/// A live subscription.
#[async_trait]
pub trait Subscription: Send + Sync {
    /// The topic.
    fn topic(&self) -> &str;
    /// The queue group, if any.
    fn queue(&self) -> Option<&str>;
    /// Stops delivery to this subscription.
    async fn unsubscribe(&self) -> Result<()>;
}
