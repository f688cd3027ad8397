//! The component interfaces of micro.
//!
//! A micro service is made of seven swappable components — broker, client,
//! codec, registry, selector, server and transport. This crate holds only
//! their traits and the plain data that crosses them, so that it stays small:
//! it is what built-in components, third-party components and plugins all
//! compile against. The implementations live in the `micro` crate.
//!
//! Every trait is object-safe (components are held as `Arc<dyn Trait>`) and
//! async through [`async_trait`](macro@async_trait), and argument and return types are simple
//! owned data, so that a component can later be adapted across the plugin ABI.

pub mod broker;
pub mod catalog;
pub mod client;
pub mod codec;
pub mod error;
pub mod frame;
pub mod headers;
pub mod message;
pub mod registry;
pub mod selector;
pub mod server;
pub mod stream;
pub mod transport;

pub use async_trait::async_trait;
pub use broker::{Broker, BrokerHandler, BrokerOptions, Handled, SubscribeOptions, Subscription};
pub use catalog::{Catalog, Table, UnknownComponent};
pub use client::{CallOptions, Client, ClientOptions, Request, Response};
pub use codec::{Codec, Codecs};
pub use error::Error;
pub use message::Message;
pub use registry::{
    Endpoint, Event, EventKind, Node, RegisterOptions, Registry, RegistryOptions, Service, Value, WatchOptions, Watcher,
};
pub use selector::{Candidates, Choice, SelectOptions, Selector, SelectorOptions, CANDIDATES_FOR};
pub use server::{Handler, HandlerFn, Server, ServerLimits, ServerOptions, Subscriber};
pub use stream::{DroppedFlag, Stream, StreamEnds, StreamHandlerFn, StreamReceiver, StreamSender};
pub use transport::{Listener, Socket, SocketReceiver, SocketSender, TlsOptions, Transport, TransportOptions};

/// The result type used throughout micro's interfaces.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed, sendable future, as returned by handlers.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
